"""The ASVP refresh/switch state machine with stubbed scores (docs/algorithms.md §3.2: T-A4, T-A5)."""
import math

import pytest

from raal.config import ASVPConfig
from raal.pipelines.asvp import decide, previous_score, training_method

pytestmark = pytest.mark.timeout(30)


def legacy(**kw):
    """The paper's rule as these tests pin it: |LogME-PED change| < threshold, PED skip at <= 1 step."""
    return ASVPConfig(**{"rule": "delta", "ped_max_steps_for_skip": 1, **kw})


def run_machine(steps, scores, cfg):
    """Drive `decide` through rounds 1..R like the pipeline does; count LogME calls and feature replacements."""
    history, calls, replaced = [], [], 0
    for r, (n, s) in enumerate(zip(steps, scores), start=1):
        d = decide(history, n, lambda s=s, r=r: calls.append(r) or s, cfg)
        replaced += d.refresh
        history.append({"round": r, "ped_steps": d.ped_steps, "logme_ped": d.score, "score_diff": d.diff,
                        "refreshed": d.refresh, "trigger_signal": d.signal,
                        "train_method": training_method(history, d.refresh)})
    return history, calls, replaced


def test_t_a4_one_update_at_round_4():
    hist, calls, replaced = run_machine([0, 6, 6, 6, 6], [None, 5.0, 3.5, 3.2, 3.0], legacy(threshold=1.0))
    assert calls == [2, 3, 4, 5]  # round 1 skipped LogME (PED converged at once)
    assert [h["refreshed"] for h in hist] == [False, False, False, True, False]
    assert replaced == 1
    assert math.isnan(hist[0]["logme_ped"]) and hist[1]["logme_ped"] == 5.0
    assert math.isnan(hist[1]["score_diff"])  # round 2 only sets prev
    assert hist[2]["score_diff"] == pytest.approx(1.5)
    assert hist[3]["score_diff"] == pytest.approx(0.3)
    assert math.isnan(hist[4]["score_diff"])  # prev reset after the update: no predecessor in round 5
    assert [h["train_method"] for h in hist] == ["LP-FT", "LP-FT", "LP-FT", "FT", "FT"]


def test_t_a5_no_overlap_never_scores_or_updates():
    hist, calls, replaced = run_machine([0] * 6, [7.0] * 6, legacy())
    assert calls == [] and replaced == 0
    assert all(h["train_method"] == "LP-FT" for h in hist)


def test_prev_survives_skipped_rounds_and_max_refreshes():
    cfg = legacy(threshold=1.0, max_refreshes=1)
    hist, calls, replaced = run_machine([6, 0, 6, 6, 6, 6], [4.0, None, 4.5, 9.0, 9.2, 9.3], cfg)
    assert [h["refreshed"] for h in hist] == [False, False, True, False, False, False]
    assert hist[2]["score_diff"] == pytest.approx(0.5)  # compared with round 1 across the skipped round 2
    assert replaced == 1  # round 5 would trigger (|9.2-9.0| < 1) but max_refreshes=1
    assert previous_score(hist) == 9.3


def test_threshold_is_strict_and_n_equal_to_skip_limit_skips():
    cfg = legacy(threshold=1.0, ped_max_steps_for_skip=1)
    hist, calls, _ = run_machine([6, 1, 6], [2.0, 99.0, 3.0], cfg)
    assert calls == [1, 3]
    assert hist[2]["refreshed"] is False  # |3.0 - 2.0| == 1.0 is not < 1.0


def run_gain(signals, cfg, steps=None):
    """Drive `decide` with the gain rule and stubbed signals (LogME-PED stubbed at 0)."""
    history = []
    for r, sig in enumerate(signals, start=1):
        n = 6 if steps is None else steps[r - 1]
        d = decide(history, n, lambda: 0.0, cfg, signal_fn=lambda sig=sig: sig)
        history.append({"round": r, "ped_steps": d.ped_steps, "logme_ped": d.score, "score_diff": d.diff,
                        "refreshed": d.refresh, "trigger_signal": d.signal})
    return history


def test_gain_rule_needs_consecutive_rounds_below_threshold():
    cfg = ASVPConfig(gain_threshold=0.02, gain_rounds=2)
    assert cfg.rule == "gain" and cfg.ped_max_steps_for_skip == -1  # the defaults
    hist = run_gain([0.10, 0.01, 0.05, 0.01, float("nan"), 0.015, 0.0], cfg)
    # one round below (2) is not enough; round 4 then 6 (the NaN round 5 neither counts nor breaks the run)
    assert [h["refreshed"] for h in hist] == [False, False, False, False, False, True, False]
    assert hist[5]["trigger_signal"] == 0.015 and math.isnan(hist[4]["trigger_signal"])
    # after the refresh the run restarts: round 7 alone (0.0) does not fire
    assert previous_signals_after(hist) == [0.0]


def previous_signals_after(hist):
    from raal.pipelines.asvp import previous_signals
    return previous_signals(hist)


def test_gain_rule_max_refreshes_and_ped_skip():
    hist = run_gain([0.0] * 6, ASVPConfig(max_refreshes=1))
    assert [h["refreshed"] for h in hist] == [False, True, False, False, False, False]
    hist = run_gain([0.0] * 3, ASVPConfig(ped_max_steps_for_skip=1), steps=[1, 1, 1])
    assert not any(h["refreshed"] for h in hist) and all(math.isnan(h["trigger_signal"]) for h in hist)
    hist = run_gain([0.0] * 2, ASVPConfig(gain_rounds=1))
    assert [h["refreshed"] for h in hist] == [True, True]
