"""Every expression in a config is bounded before it is evaluated (issue #26): a schedule, a YAML value with aliases
or a `${...}` interpolation that would expand past its limit is one ConfigError line (exit 2 from the CLI), found
from the text and the parsed terms without building anything big, never a MemoryError or a hang.

The allocation claim is checked for real: the parser runs in a child process whose address space is capped
(RLIMIT_AS), where expanding any of these cases would fail with a MemoryError instead of the ConfigError.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raal.config import (
    MAX_NUMBER_DIGITS,
    MAX_ROUNDS,
    MAX_SCHEDULE_CHARS,
    MAX_YAML_NODES,
    ConfigError,
    load_config,
    parse_overrides,
    parse_schedule,
    schedule_labels,
    validate_against_pool,
)

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]

ALIAS_BOMB = "[" + ", ".join(["&a [1,1,1,1,1,1,1,1,1,1]"] + [
    f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]) + "]"  # 10**9 ones
#: schedule text -> the precise refusal
HUGE = {
    "[200]*99999999999": rf"asks for more than {MAX_ROUNDS} query rounds \(at least 99999999999\)",
    "[1]*10**12": r"cannot parse '\[1\]\*10\*\*12'",  # no exponent in the grammar, so no 10**12 either
    "[1,2,3]*3334": rf"more than {MAX_ROUNDS} query rounds \(at least 10002\)",  # a literal repeated
    "[7]*5000+[7]*5000+[7]": rf"more than {MAX_ROUNDS} query rounds \(at least 10001\)",  # terms add up
    "[1]*" + "9" * 5000: rf"has 5000 digits; at most {MAX_NUMBER_DIGITS}",  # int() would raise ValueError
    "[" + "9" * 16 + "]": rf"has 16 digits; at most {MAX_NUMBER_DIGITS}",
    "[" + ",".join(["1"] * 6000) + "]": rf"\(12001 characters\) is longer than {MAX_SCHEDULE_CHARS} characters",
    "[[100]*10]*10": r"cannot parse",  # nested repetition is not in the grammar
    "[-5]*2": r"cannot parse '\[-5\]\*2'",
}


@pytest.mark.parametrize("text", list(HUGE), ids=[t[:24] for t in HUGE])
def test_huge_schedules_are_refused_before_expansion(text):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^al\.schedule: .*" + HUGE[text]) as err:
        parse_schedule(text)
    assert time.perf_counter() - t0 < 0.5 and "\n" not in str(err.value) and len(str(err.value)) < 400


def test_the_bounds_are_inclusive_and_cover_the_papers_schedules():
    """Exactly MAX_ROUNDS rounds parse; labels are counted from the terms (what validate_against_pool compares)."""
    assert len(parse_schedule(f"[1]*{MAX_ROUNDS - 1}+[2]")) == MAX_ROUNDS
    assert parse_schedule("[10000]*9+[50000]*6") == [10000] * 9 + [50000] * 6
    assert schedule_labels("[200]*99+[5,7]*3") == 200 * 99 + 36
    assert schedule_labels("[" + "9" * MAX_NUMBER_DIGITS + "]*1000") == int("9" * MAX_NUMBER_DIGITS) * 1000


@pytest.mark.parametrize("overrides, match", [
    (["al.schedule=[0]*3"], r"al.schedule='\[0\]\*3' is not allowed; every query size must be > 0"),
    (["al.schedule=[-1]"], r"al.schedule: cannot parse"),
    (["al.initial=1", "al.schedule=[3]*0"], None),  # a zero repeat is no round (allowed: the initial batch asks)
])
def test_sizes_and_the_pool(overrides, match):
    if match is None:
        load_config("demo", overrides)
        return
    with pytest.raises(ConfigError, match=match):
        load_config("demo", overrides)


@pytest.mark.parametrize("override, match", [
    (f"train.milestones={ALIAS_BOMB}", rf"train.milestones: expands to more than {MAX_YAML_NODES} values"),
    ("train.milestones=&a [1, *a]", rf"expands to more than {MAX_YAML_NODES} values"),  # a list holding itself
    ("train.milestones=" + "[" * 5000 + "]" * 5000, r"train.milestones: nested too deeply \(more than 32 levels"),
    ("name=${run_dir}${run_dir}", r"name: interpolations \(\$\{\.\.\.\}\) are not supported"),
])
def test_yaml_expressions_in_overrides_are_bounded(override, match):
    """YAML anchors/aliases and OmegaConf interpolations are expansions too: refused before YAML or OmegaConf
    builds them (the alias case is 10**9 values; the interpolation chain grows with every key it passes through)."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=match):
        parse_overrides([override])
    assert time.perf_counter() - t0 < 2


def test_budget_past_the_pool_is_counted_not_expanded():
    """Once the pool's size is known (before any work) the labels are compared with it, summed from the terms."""
    cfg = load_config("demo", ["al.initial=100", f"al.schedule=[{'9' * MAX_NUMBER_DIGITS}]*{MAX_ROUNDS}"])
    budget = 100 + int("9" * MAX_NUMBER_DIGITS) * MAX_ROUNDS
    with pytest.raises(ConfigError, match=rf"budget \(al.initial=100 \+ schedule .* = {budget}\) is larger than the "
                                          r"pool \(500 items\)"):
        validate_against_pool(cfg, 500)
    validate_against_pool(load_config("demo", ["al.initial=100", "al.schedule=[100]*4"]), 500)


def test_stored_and_named_configs_are_bounded(tmp_path, monkeypatch):
    from raal.config import from_yaml

    with pytest.raises(ConfigError, match="the stored config: expands to more than"):
        from_yaml(f"name: demo\nx: {ALIAS_BOMB}\n")
    (tmp_path / "bomb.yaml").write_text("al:\n  schedule: ${name}${name}\n")
    monkeypatch.setenv("RAAL_CONF_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"conf=bomb: .*bomb.yaml: interpolations"):
        load_config("bomb")


_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
from raal.config import ConfigError, parse_overrides, parse_schedule
out = []
for kind, text in json.loads(sys.stdin.read()):
    try:
        if kind == "unbounded":  # what the parser did before the bounds: expand, then look
            sizes = [200] * int(text)
        else:
            parse_schedule(text) if kind == "schedule" else parse_overrides([text])
        out.append("accepted")
    except ConfigError:
        out.append("ConfigError")
    except MemoryError:
        out.append("MemoryError")
print(json.dumps(out))
"""


def test_no_large_allocation_under_a_memory_cap():
    """Under a 256 MiB address-space cap (the child peaks at ~25 MiB: raal.config imports neither numpy nor torch)
    every case is a ConfigError: none of them allocates what its expansion would (the first schedule's is 800 GB)."""
    limit = 256 << 20
    probe = subprocess.run([sys.executable, "-c", _CHILD.replace("CAP_BYTES", str(limit))],
                           input=json.dumps([["unbounded", "99999999999"]]), capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert probe.stdout.strip() == '["MemoryError"]', probe.stderr[-2000:]  # the cap does bite an expansion
    cases = [["schedule", t] for t in HUGE] + [["override", f"train.milestones={ALIAS_BOMB}"]]
    proc = subprocess.run([sys.executable, "-c", _CHILD.replace("CAP_BYTES", str(limit))], input=json.dumps(cases),
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ["ConfigError"] * len(cases)


def test_cli_refuses_a_huge_schedule_in_one_line(tmp_path):
    """`python -m raal.run conf=demo al.schedule=[200]*99999999999`: one line on stderr, exit 2, no run dir (the
    config is refused before Ray or any file)."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "raal.run", "conf=demo", "al.schedule=[200]*99999999999",
                           f"run_dir={run_dir}"], capture_output=True, text=True, env=env, timeout=100)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("raal: error: al.schedule:"), proc.stderr
    assert f"more than {MAX_ROUNDS} query rounds" in proc.stderr
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []
