"""Config errors stop before any work: exit code 2 and one line naming the key."""
import subprocess
import sys

import pytest

from raal.config import ConfigError, load_config, parse_schedule, validate_against_pool

pytestmark = pytest.mark.timeout(120)


def test_schedule_parses_paper_notation():
    assert parse_schedule("[200]*10+[500]*8") == [200] * 10 + [500] * 8
    assert parse_schedule("[100, 50]+[7]") == [100, 50, 7]
    assert parse_schedule("") == []


@pytest.mark.parametrize("text", ["[200]*x", "__import__('os')", "[1]*2*3", "200*10"])
def test_schedule_rejects_anything_else(text):
    with pytest.raises(ConfigError, match="al.schedule"):
        parse_schedule(text)


def test_demo_loads_with_overrides():
    cfg = load_config("demo", ["al.seed=3", "proxy.lr=0.1", "data.pool_size=500"])
    assert cfg.al.seed == 3 and cfg.proxy.lr == 0.1 and cfg.data.pool_size == 500
    assert cfg.al.strategy == "margin"


@pytest.mark.parametrize("override, key", [
    (["al.stratgy=margin"], "al.stratgy"),           # unknown key
    (["al.seed=abc"], "al.seed"),                    # wrong type
    (["al.strategy=magic"], "al.strategy"),          # unknown strategy
    (["al.schedule=[-5]*2"], "al.schedule"),         # negative query size
    (["al.initial=-1"], "al.initial"),
    (["data.source=ftp"], "data.source"),
    (["train.method=sgd"], "train.method"),
    (["al.candidates=knn"], "al.candidates"),        # neither all nor seals
    (["al.candidates_k=0"], "al.candidates_k"),      # no neighbours
    (["al.select_workers=-1"], "al.select_workers"),  # negative worker count
    (["al.select_workers=2", "al.strategy=badge"], "al.select_workers"),  # no merge for BADGE
    (["al.select_workers=2", "al.pipeline=standard"], "al.select_workers"),  # no proxy over stored features
    (["al.select_workers=2", "al.candidates=seals"], "al.select_workers"),  # SEALS scores in the driver
    (["al.coreset_dim=-1", "al.strategy=coreset"], "al.coreset_dim"),  # negative width
    (["al.coreset_dim=128"], "al.coreset_dim"),      # no coreset arm would use it
    (["justaword"], "justaword"),                    # malformed override
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("demo", override)
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_select_workers_takes_the_strategies_with_a_merge():
    from raal.config import SHARDED_STRATEGIES

    assert load_config("demo").al.select_workers == 0  # in process unless asked
    for pipeline in ("svpp", "asvp"):
        for strategy in SHARDED_STRATEGIES:
            cfg = load_config("demo", ["al.select_workers=3", f"al.pipeline={pipeline}", f"al.strategy={strategy}"])
            assert cfg.al.select_workers == 3


def test_coreset_dim_reaches_the_coreset_arms():
    """al.coreset_dim is taken with a coreset arm, main or compared, and the pipelines hand it to CoreSet as its
    project_dim (strategies.for_run, as raal.pipelines.base does); strategies without the option ignore it."""
    from raal import strategies

    assert load_config("demo").al.coreset_dim == 0  # exact unless asked
    for extra in (["al.strategy=coreset"], ["al.compare=[svpp/coreset]"]):
        cfg = load_config("demo", ["al.coreset_dim=128", *extra])
        assert cfg.al.coreset_dim == 128
    assert strategies.for_run("coreset", balanced=False, project_dim=128).project_dim == 128
    assert strategies.for_run("coreset", project_dim=0) is strategies.get("coreset")  # 0: the default instance
    assert not hasattr(strategies.for_run("margin", project_dim=128), "project_dim")


def test_missing_config_lists_the_available_ones():
    with pytest.raises(ConfigError, match="conf=nope.*demo"):
        load_config("nope")


def test_budget_larger_than_pool():
    cfg = load_config("demo", ["al.initial=100", "al.schedule=[500]*3"])
    validate_against_pool(cfg, 1600)
    with pytest.raises(ConfigError, match="budget.*1600.*larger than the pool \\(1000"):
        validate_against_pool(cfg, 1000)


@pytest.mark.parametrize("args, key", [
    (["conf=demo", "al.stratgy=margin"], "al.stratgy"),
    (["conf=nope"], "conf=nope"),
    (["conf=demo", "data.pool_size=300", "al.schedule=[1000]*2"], "budget"),
    (["conf=demo", "al.strategy=magic"], "al.strategy"),
    (["conf=demo", "al.select_workers=2", "al.strategy=typiclust"], "al.select_workers"),
])
def test_cli_exits_2_with_one_line(args, key, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raal.run", *args, f"run_dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not (tmp_path / "r" / "arms").exists()  # no work done


def test_cli_help_lists_configs_and_keys():
    proc = subprocess.run([sys.executable, "-m", "raal.run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "al.strategy" in proc.stdout and "al.schedule" in proc.stdout


def test_sweep_files_are_not_run_configs():
    from raal.config import available_configs

    assert "tune_demo" in available_configs(sweeps=True) and "tune_demo" not in available_configs()
    with pytest.raises(ConfigError, match="python -m raal.tune conf=tune_demo"):
        load_config("tune_demo")


@pytest.mark.parametrize("override", [
    "train.batch_size=0", "train.eval_batch_size=0", "train.epochs=-1", "train.lp_epochs=-1", "train.lp_lr=0",
    "train.head_lr=-0.1", "train.backbone_lr=0", "train.weight_decay=-1e-4", "train.momentum=1.5",
    "train.lpft_head_lr=0", "train.lpft_weight_decay=-1", "train.milestones=[3,-1]", "train.gamma=0",
    "train.cpus_per_worker=0", "train.max_failures=-2", "train.lp_lr=nan",
    "lora.rank=0", "lora.alpha=0", "lora.lr=0", "lora.epochs=-1", "lora.batch_size=0",
    "proxy.batch_size=0", "proxy.lr=-1", "proxy.weight_decay=-1", "proxy.momentum=-0.1", "proxy.score_batch_size=0",
    "embed.batch_size=0", "embed.shard_rows=0", "embed.num_actors=-1",
])
def test_numeric_ranges_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and "\n" not in msg


def test_numeric_ranges_accept_the_edges():
    cfg = load_config("demo", ["train.epochs=0", "train.weight_decay=0", "train.momentum=0", "train.batch_size=1",
                               "lora.epochs=0", "embed.shard_rows=1", "train.max_failures=-1",
                               "train.lpft_head_lr=0.5"])
    assert cfg.train.batch_size == 1 and cfg.train.lpft_head_lr == 0.5


@pytest.mark.parametrize("override", ["train.batch_size=0", "proxy.lr=0", "embed.shard_rows=0"])
def test_cli_refuses_out_of_range_numbers(override, tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "raal.run", "conf=demo", override, f"run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and override.split("=")[0] in lines[0], proc.stderr
    assert not run_dir.exists()


def test_every_config_path_ends_in_validate():
    """A new run (load_config), a resume with overrides and a Tune trial (apply_overrides, text or typed values)
    all end in the same validate: the same key, the same one-line refusal."""
    from raal.config import apply_overrides

    base = load_config("demo")
    for make in (lambda: load_config("demo", ["embed.autocast=fp8"]),
                 lambda: apply_overrides(base, ["embed.autocast=fp8"]),
                 lambda: apply_overrides(base, {"embed.autocast": "fp8"}, where="tune.params.")):
        with pytest.raises(ConfigError, match=r"^embed.autocast='fp8' is not allowed; allowed: bf16, fp16, none$"):
            make()
    typed = apply_overrides(base, {"train.milestones": [3, 5], "asvp.threshold": 2, "al.schedule": "[50]*2"})
    assert (typed.train.milestones, typed.asvp.threshold, typed.al.schedule) == ([3, 5], 2.0, "[50]*2")
    assert load_config("demo", ["train.milestones=[3,5]", "asvp.threshold=2", "al.schedule=[50]*2"]) == typed
    assert base == load_config("demo")  # the input config is left as it was
    with pytest.raises(ConfigError, match=r"^tune.params.asvp.nope: no such config key$"):
        apply_overrides(base, {"asvp.nope": 1}, where="tune.params.")


def test_load_config_keeps_the_configs_own_name_unless_overridden():
    assert load_config("demo").name == "demo"
    assert load_config("demo", ["name=other"]).name == "other"


def test_asvp_forced_rule_and_switch_are_checked():
    assert load_config("demo", ["asvp.rule=at", "asvp.refresh_at=[400,800]"]).asvp.refresh_at == [400, 800]
    with pytest.raises(ConfigError, match="asvp.refresh_at"):
        load_config("demo", ["asvp.rule=at"])
    with pytest.raises(ConfigError, match="asvp.switch.*allowed"):
        load_config("demo", ["asvp.switch=best"])
    with pytest.raises(ConfigError, match="eval.every_round=evaluator"):
        load_config("demo", ["asvp.switch=holdout", "eval.every_round=proxy"])
    assert load_config("demo", ["eval.freeze_blocks=0"]).eval.freeze_blocks == 0
    with pytest.raises(ConfigError, match="eval.freeze_blocks"):
        load_config("demo", ["eval.freeze_blocks=-2"])
