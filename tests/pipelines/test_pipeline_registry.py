"""Which strategy an arm's pipeline can run is a set comparison: the pipeline's declared supplies against the
strategy's `requires`. The config owns the pipeline and strategy names (validation reads them, without importing
pipelines or strategies); the registries must hold exactly those."""
import pytest

from raal import config, strategies
from raal.errors import ConfigError
from raal.pipelines import registry
from raal.pipelines.base import ArmSpec, Pipeline
from raal.pipelines.experiment import validate_arms


def test_config_pipelines_are_the_registry():
    assert config.PIPELINES == registry.NAMES
    assert "svpp" in config.PIPELINES and len(set(config.PIPELINES)) == len(config.PIPELINES)
    for name, cls in registry.classes().items():
        assert issubclass(cls, Pipeline) and cls.name == name
        assert cls.supplies and cls.supplies_at_start <= {"embeddings", "probs", "proxy"}
    with pytest.raises(ValueError, match="unknown pipeline"):
        registry.get("nope")


def test_config_strategies_are_the_registry():
    assert config.STRATEGIES == tuple(strategies.names())
    assert config.BALANCED_STRATEGIES == tuple(strategies.accepting("balanced"))
    assert set(config.INITIAL_STRATEGIES) <= set(config.STRATEGIES)


def test_a_registry_that_differs_from_the_config_says_so(monkeypatch):
    monkeypatch.setattr(registry, "NAMES", registry.NAMES + ("extra",))
    with pytest.raises(RuntimeError, match="raal.config.PIPELINES"):
        registry.check_names()
    monkeypatch.setattr(strategies, "STRATEGIES", config.STRATEGIES[1:])
    with pytest.raises(RuntimeError, match="change both places"):
        strategies.check_names()


def test_strategies_that_choose_their_first_batch_need_only_what_round_0_has():
    for name in strategies.names():
        s = strategies.get(name)
        if s.chooses_first_batch:
            assert s.requires <= Pipeline.supplies_at_start, name


def test_runnable_strategies_are_a_set_comparison():
    every = strategies.names()
    for p in ("standard", "svpp", "asvp"):
        assert registry.runnable(registry.get(p)) == every
    model_free = [n for n in every if strategies.get(n).requires <= {"embeddings"}]
    assert registry.runnable(registry.get("activeft")) == model_free
    assert "margin" not in model_free and {"activeft", "coreset", "featdist", "random"} <= set(model_free)
    assert registry.runnable(registry.get("peal")) == ["entropy", "featdist", "random"]


@pytest.mark.parametrize("arm,message", [
    (ArmSpec("activeft", "margin"), "needs probs, which the activeft pipeline does not supply"),
    (ArmSpec("activeft", "dropquery"), "needs proxy, which the activeft pipeline"),
    (ArmSpec("peal", "margin"), "is not a PEAL strategy; it runs entropy, featdist, random"),
    (ArmSpec("nope", "random"), "is not available in this build"),
])
def test_incompatible_arms_are_refused_in_one_line(arm, message):
    with pytest.raises(ConfigError, match=message):
        validate_arms([arm])


def test_compatible_arms_pass():
    validate_arms([ArmSpec("svpp", "dropquery"), ArmSpec("standard", "activeft_al"), ArmSpec("activeft", "coreset"),
                   ArmSpec("peal", "featdist"), ArmSpec("asvp", "badge")])
