"""`python -m raal.tune conf=NAME [key=value …] [tune.key=value …]` (see raal.tune)."""
import sys

from raal.tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
