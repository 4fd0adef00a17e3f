"""Pipelines: small policies (standard, svpp, asvp, activeft, peal) over shared AL steps, and the experiment driver."""
