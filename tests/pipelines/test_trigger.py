"""The ASVP trigger on synthetic features: the legacy `delta` rule's N/D defect and the `gain` rule.

See docs/asvp_trigger.md for the measurements behind the margins.

Two fixed feature distributions, labels arriving i.i.d. in rounds of 100 (N = 100, 200, ..., 900), D = 512:

* `learning`: 10 classes whose means differ weakly along all 512 dims (N(0, 0.1^2) per dim) in unit noise. A
  linear model keeps learning across the whole range (probe accuracy ~0.2 -> ~0.35): the trigger must not fire.
* `saturating`: 10 well-separated classes in 10 dims (one-hot means x 4, unit noise), 502 near-constant dims
  (std 0.05), 10% of the labels replaced at random. A linear probe reaches its ceiling (~0.9) by a few hundred
  labels: the trigger must fire within a few rounds of that.

Margins in the comments were measured over seeds 0-9 (these tests run seeds 0-2).
"""
import math

import numpy as np
import pytest

from raal.config import ASVPConfig
from raal.pipelines.asvp import decide, gain_signal
from raal.transfer import linear_probe_accuracy, logme_details, logme_ped

pytestmark = pytest.mark.timeout(300)

SCHEDULE = list(range(100, 1000, 100))
SEEDS = (0, 1, 2)


def learning(seed, d=512, classes=10, sep=0.1, n=900):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, d)) * sep
    y = rng.integers(0, classes, n)
    return means[y] + rng.standard_normal((n, d)), y


def saturating(seed, d=512, classes=10, sep=4.0, flip=0.1, noise=0.05, n=900):
    rng = np.random.default_rng(seed)
    means = np.zeros((classes, d))
    means[:, :classes] = np.eye(classes) * sep
    y = rng.integers(0, classes, n)
    e = rng.standard_normal((n, d))
    e[:, classes:] *= noise
    x = means[y] + e
    flipped = rng.random(n) < flip
    y = y.copy()
    y[flipped] = rng.integers(0, classes, int(flipped.sum()))
    return x, y


def run_rounds(x, y, cfg):
    """Drive `decide` over the schedule like the pipeline: the labeled set is the first N rows (PED stubbed at 6
    steps: it takes its maximum on real features; LogME-PED without a reference = the labeled set's own stats)."""
    history = []
    for r, n in enumerate(SCHEDULE, start=1):
        xs, ys = x[:n], y[:n]
        score = (lambda xs=xs, ys=ys: logme_ped(xs, ys, variant=cfg.logme_variant)[0]) if cfg.rule == "delta" \
            else (lambda: 0.0)
        d = decide(history, 6, score, cfg,
                   signal_fn=lambda xs=xs, ys=ys: gain_signal(xs, ys, permutations=cfg.gain_permutations))
        history.append({"round": r, "n": n, "ped_steps": d.ped_steps, "logme_ped": d.score, "score_diff": d.diff,
                        "refreshed": d.refresh, "trigger_signal": d.signal})
    return history


def fired_at(history):
    return [h["n"] for h in history if h["refreshed"]]


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
@pytest.mark.parametrize("seed", SEEDS)
def test_legacy_delta_rule_fires_on_features_that_keep_learning(seed):
    """The defect: with the fast variant, |change| ~ D ln(alpha) (1/N_prev - 1/N) / 2 falls below 1 as N nears D."""
    x, y = learning(seed)
    hist = run_rounds(x, y, ASVPConfig(rule="delta", max_refreshes=1))
    # seeds 0-9: |change| = 11.3-11.5, 3.7-3.8, 1.90-1.94, 1.18-1.20, then 0.09-0.10 at N = 600 (fires there)
    assert fired_at(hist) == [600]
    assert 1.1 < hist[4]["score_diff"] < 1.3 and hist[5]["score_diff"] < 0.2


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
@pytest.mark.parametrize("seed", SEEDS)
def test_gain_rule_does_not_fire_while_the_features_keep_learning(seed):
    x, y = learning(seed)
    cfg = ASVPConfig()
    hist = run_rounds(x, y, cfg)
    assert fired_at(hist) == []
    sig = [h["trigger_signal"] for h in hist]
    assert math.isnan(sig[0])  # N = 100: a quarter of 25 labels < 5 per class, no signal
    # what the rule compares: the larger of two consecutive signals; seeds 0-9: min 0.037 (threshold 0.02)
    pairs = [max(a, b) for a, b in zip(sig[1:], sig[2:])]
    assert min(pairs) > cfg.gain_threshold + 0.01
    # from N = 400 on every single signal is >= 0.043 (seeds 0-9)
    assert min(sig[3:]) > 0.03


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
@pytest.mark.parametrize("seed", SEEDS)
def test_gain_rule_fires_once_the_features_saturate(seed):
    x, y = saturating(seed)
    hist = run_rounds(x, y, ASVPConfig(max_refreshes=1))
    # seeds 0-9 fire at N = 400-800 (signals fall from 0.02-0.11 at N = 200 to <= 0.01 at N = 900); the first
    # signal below 0.02 comes at N = 300-500 and the rule fires 1-3 rounds later
    assert len(fired_at(hist)) == 1 and 300 <= fired_at(hist)[0] <= 800
    first_below = next(h["n"] for h in hist if h["trigger_signal"] < 0.02)
    assert fired_at(hist)[0] - first_below <= 300
    # the probe has indeed saturated: its held-out accuracy barely moves from 400 to 800 training labels
    xt, yt = saturating(100 + seed, n=2000)
    acc = [linear_probe_accuracy(x[:n], y[:n], xt, yt) for n in (400, 800)]
    assert abs(acc[1] - acc[0]) < 0.03 and acc[1] > 0.8


@pytest.mark.slow  # minutes of CPU: left out of `make test-fast`, run by `make test`
def test_gain_signal_does_not_see_dimensions_that_carry_nothing():
    """By construction: padding the features with constant dims changes the fast LogME by (D' - D) ln(alpha) / 2N
    per class, the gain signal not at all (the probe is a ridge on centred features)."""
    x, y = learning(0, n=400)
    padded = np.hstack([x, np.zeros((400, 768))])
    assert gain_signal(padded, y) == pytest.approx(gain_signal(x, y), abs=1e-9)
    fast, fast_padded = logme_details(x, y, "fast"), logme_details(padded, y, "fast")
    assert abs(fast_padded.score - fast.score) > 1.0
    exact, exact_padded = logme_details(x, y, "exact"), logme_details(padded, y, "exact")
    assert exact_padded.score == pytest.approx(exact.score, abs=1e-6)


@pytest.mark.parametrize("n", [60, 300])  # N <= D (kernel form) and N > D (Gram form)
def test_linear_probe_is_logme_posterior_mean(n):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((n, 40)), rng.integers(0, 4, n)
    x[np.arange(n), y] += 2.0
    xt, yt = rng.standard_normal((200, 40)), rng.integers(0, 4, 200)
    xt[np.arange(200), yt] += 2.0
    mu = x.mean(0)
    res = logme_details(x - mu, y, "exact")
    scores = np.stack([(xt - mu) @ np.linalg.solve((x - mu).T @ (x - mu) + t * np.eye(40), (x - mu).T @ (y == c))
                       for c, t in zip(res.classes, res.alpha / res.beta)], axis=1)
    want = float(np.mean(res.classes[scores.argmax(1)] == yt))
    assert linear_probe_accuracy(x, y, xt, yt) == pytest.approx(want, abs=1e-12)
    assert want > 0.5  # chance is 0.25


def test_rounds_table_from_before_trigger_signal_reopens_and_grows(tmp_path):
    """A rounds.parquet written before the trigger_signal column existed reads it as NaN and takes new rows."""
    import pyarrow as pa

    from raal.pipelines.state import ROUND_COLUMNS, ROUND_DEFAULTS, ArmState
    from raal.store import RunStore

    old = {k: v for k, v in ROUND_COLUMNS.items() if k != "trigger_signal"}
    row = {**{k: ROUND_DEFAULTS.get(k) for k in old}, "round": 0, "n_labeled": 20, "n_new": 20}
    RunStore(tmp_path).write_table("rounds.parquet", pa.table({k: [row[k]] for k in old},
                                                              schema=pa.schema(list(old.items()))))
    st = ArmState.open(RunStore(tmp_path))
    assert math.isnan(st.rounds[0]["trigger_signal"])
    st.commit_round({"round": 1, "n_labeled": 40, "n_new": 20, "trigger_signal": 0.05})
    again = ArmState.open(RunStore(tmp_path))
    assert math.isnan(again.rounds[0]["trigger_signal"]) and again.rounds[1]["trigger_signal"] == 0.05


def test_forced_rule_fires_at_the_listed_sizes_only_and_scores_nothing():
    from raal.pipelines.asvp import fixed_decision

    cfg = ASVPConfig(rule="at", refresh_at=[200, 400])
    history = [{"n_labeled": 100, "refreshed": False}]
    assert [fixed_decision(history, n, cfg).refresh for n in (150, 200, 300, 400)] == [False, True, False, True]
    d = fixed_decision(history, 200, cfg)
    assert d.ped_steps == -1 and math.isnan(d.score)
    capped = ASVPConfig(rule="at", refresh_at=[200, 400], max_refreshes=1)
    assert not fixed_decision(history + [{"n_labeled": 200, "refreshed": True}], 400, capped).refresh
    assert not fixed_decision(history, 200, ASVPConfig(rule="never", refresh_at=[200])).refresh
    with pytest.raises(ValueError, match="fixed_decision"):
        decide(history, 5, lambda: 0.0, cfg)


def test_training_switch_values():
    from raal.pipelines.asvp import training_method

    refreshed = [{"refreshed": True}]
    assert training_method([], False) == "LP-FT" and training_method(refreshed, False) == "FT"
    assert training_method(refreshed, False, "lpft") == "LP-FT" and training_method([], False, "ft") == "FT"
    assert training_method(refreshed, False, "holdout") == ""  # decided once, on the final labeled set
