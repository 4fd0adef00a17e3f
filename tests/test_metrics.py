"""Sample saving ratio (T-M1, T-M2), monotone curve, extrapolation, cost arithmetic and the §3.8 time model (T-A1)."""
from __future__ import annotations

import numpy as np
import pytest

from raal.metrics import (
    PhaseTimes,
    Prices,
    compute_cost,
    equivalent_labels,
    measured_phase_times,
    modelled_totals,
    monotone_curve,
    overall_cost,
    phase_totals,
    round_seconds,
    sample_saving_ratio,
    saving_curve,
)

pytestmark = pytest.mark.timeout(30)

RANDOM = [(100, 0.50), (200, 0.60), (300, 0.70)]


def test_t_m1_numbers():
    ratios, mean = sample_saving_ratio(RANDOM, [(100, 0.60), (200, 0.65)])
    np.testing.assert_allclose(ratios, [0.5, 0.2])
    assert mean == pytest.approx(0.35)
    res = saving_curve(RANDOM, [(100, 0.60), (200, 0.65)])
    np.testing.assert_allclose(res.equivalent_labels, [200, 250])
    assert not res.extrapolated.any()


def test_t_m2_identical_curve_saves_nothing():
    curve = [(100, 0.42), (250, 0.55), (400, 0.61), (800, 0.74)]
    ratios, mean = sample_saving_ratio(curve, curve)
    np.testing.assert_allclose(ratios, 0.0, atol=1e-12)
    assert mean == 0.0


def test_monotone_running_max_and_sorting():
    n, a = monotone_curve([(300, 0.55), (100, 0.50), (200, 0.60), (400, 0.70)])
    np.testing.assert_array_equal(n, [100, 200, 300, 400])
    np.testing.assert_allclose(a, [0.50, 0.60, 0.60, 0.70])
    # the dip at 300 is ignored: 0.65 lies on the segment (300, 0.60)-(400, 0.70) of the monotone curve
    n2, ext = equivalent_labels([(100, 0.50), (200, 0.60), (300, 0.55), (400, 0.70)], [0.55, 0.60, 0.65])
    np.testing.assert_allclose(n2, [150, 200, 350])
    assert not ext.any()


def test_flat_segment_maps_to_smallest_labels_without_division_by_zero():
    flat = [(100, 0.5), (200, 0.6), (300, 0.6), (400, 0.6), (500, 0.8)]
    with np.errstate(all="raise"):
        n2, ext = equivalent_labels(flat, [0.6, 0.7, 0.5, 0.8])
    np.testing.assert_allclose(n2, [200, 450, 100, 500])
    assert not ext.any()


def test_extrapolated_points_are_flagged_and_follow_end_segments():
    res = saving_curve(RANDOM, [(100, 0.45), (100, 0.50), (200, 0.80), (300, float("nan"))])
    np.testing.assert_array_equal(res.extrapolated, [True, False, True, False])
    # below: slope of the first segment, 1000 labels per unit accuracy; above: of the last one
    np.testing.assert_allclose(res.equivalent_labels[:3], [50, 100, 400])
    np.testing.assert_allclose(res.ratios[:3], [-1.0, 0.0, 0.5])
    assert np.isnan(res.ratios[3]) and not res.used[3]
    # the headline mean uses interpolated points only; the extrapolated ones are counted, not averaged
    np.testing.assert_array_equal(res.used, [False, True, False, False])
    assert res.mean == pytest.approx(0.0) and res.n_extrapolated == 2 and res.n_used == 1
    # a curve ending flat extrapolates from its last point with the last rising slope
    n2, ext = equivalent_labels([(100, 0.5), (200, 0.6), (300, 0.6)], [0.65])
    assert ext[0] and n2[0] == pytest.approx(350)


def test_undefined_extrapolation_gives_nan_not_inf():
    # far below the curve: N2 would be negative -> clipped to labels 0 and a ratio of -1 (counted, never dropped);
    # it is extrapolated, so it is not in the headline mean
    res = saving_curve(RANDOM, [(100, 0.30)])
    assert res.equivalent_labels[0] == 0 and res.ratios[0] == -1.0 and np.isnan(res.mean)
    assert res.n_extrapolated == 1
    # a flat random curve has no slope to extrapolate along
    res = saving_curve([(100, 0.5), (200, 0.5)], [(100, 0.5), (200, 0.7)])
    np.testing.assert_allclose(res.equivalent_labels[0], 100)
    assert np.isnan(res.equivalent_labels[1]) and res.extrapolated[1]
    assert res.mean == pytest.approx(0.0)


def test_exclude_leaves_rounds_out_of_the_mean_only():
    al = [(100, 0.50), (200, 0.65), (300, 0.70)]
    ratios, mean = sample_saving_ratio(RANDOM, al, exclude=[True, False, False])
    np.testing.assert_allclose(ratios, [0.0, 1 - 200 / 250, 0.0])
    assert mean == pytest.approx((0.2 + 0.0) / 2)
    _, mean_all = sample_saving_ratio(RANDOM, al)
    assert mean_all == pytest.approx(0.2 / 3)


@pytest.mark.parametrize("bad, msg", [
    ([(100, 0.5, 1)], "pairs"), ([(-1, 0.5)], "negative"), ([(100, float("inf"))], "infinite"),
    ([("a", 0.5)], "number pairs"),
])
def test_bad_curves_raise_value_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        sample_saving_ratio(RANDOM, bad)
    with pytest.raises(ValueError, match="no point with a finite accuracy"):
        sample_saving_ratio([(100, float("nan"))], [(100, 0.5)])
    with pytest.raises(ValueError, match="exclude has 1 entries"):
        sample_saving_ratio(RANDOM, [(100, 0.5), (200, 0.6)], exclude=[True])


def test_cost_arithmetic():
    p = Prices()  # 0.12 / label, 3.06 / GPU hour, 0.10 / CPU hour
    assert overall_cost(1000, 7200, devices="cuda", prices=p) == pytest.approx(120 + 6.12)
    assert overall_cost(1000, 7200, devices="cpu", prices=p) == pytest.approx(120 + 0.20)
    np.testing.assert_allclose(compute_cost([3600, 1800, np.nan], ["cuda", "cpu", "cuda"], p), [3.06, 0.05, 0.0])
    custom = Prices.from_config({"label_price": 1, "gpu_hour_price": 2.0})
    assert (custom.label_price, custom.gpu_hour_price, custom.cpu_hour_price) == (1.0, 2.0, 0.10)
    assert overall_cost(10, [1800, 1800], devices=["cuda", "cuda"], prices=custom) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="cost.label_price"):
        Prices.from_config({"label_price": "cheap"})
    with pytest.raises(ValueError, match="cost.gpu_hour_price"):
        Prices(gpu_hour_price=-1)


def test_t_a1_time_model():
    t = PhaseTimes(t_pre=20, t_tr_proxy=1, t_f_proxy=0.5, t_tr_full=100, t_f_full=10, n_al=10, n_pre=2)
    tot = modelled_totals(t)
    assert tot["asvp"] == pytest.approx(155)
    assert tot["svpp"] == pytest.approx(35)
    assert tot["standard"] == pytest.approx(10 * 110)


def test_measured_phase_times_average_over_rounds_that_ran():
    svpp = {"round": np.arange(4), "t_pre": np.array([20.0, 0, 0, 0]), "t_tr_proxy": np.array([0, 1.0, 1.0, 1.0]),
            "t_f_proxy": np.array([0, 0.5, 0.5, 0.5]), "t_tr_full": np.zeros(4), "t_f_full": np.zeros(4),
            "refreshed": np.zeros(4, bool), "t_round": np.array([25.0, 2.0, 2.0, np.nan])}
    asvp = dict(svpp, t_pre=np.array([20.0, 0, 20.0, 0]), t_tr_full=np.array([0, 0, 100.0, 0]),
                refreshed=np.array([False, False, True, False]))
    t = measured_phase_times([svpp, asvp])
    assert (t.t_pre, t.t_tr_proxy, t.t_f_proxy, t.t_tr_full, t.n_al, t.n_pre) == (20, 1, 0.5, 100, 3, 2)
    assert np.isnan(t.t_f_full)          # never ran: the standard total is unknown, not 0
    assert np.isnan(modelled_totals(t)["standard"])
    tot = phase_totals(svpp)
    assert tot["t_pre"] == 20 and tot["t_tr_proxy"] == 3 and tot["other"] == pytest.approx(5 + 0.5 + 0.5)
    np.testing.assert_allclose(round_seconds(svpp), [25, 2, 2, 1.5])


def test_mean_ci_is_a_t_interval():
    from raal.metrics import mean_ci

    m, lo, hi = mean_ci([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - 4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert hi - m == pytest.approx(m - lo)
    assert np.isnan(mean_ci([0.5])[1]) and np.isnan(mean_ci([])[0])


def test_selection_seconds_charges_choosing_not_evaluating():
    from raal.metrics import selection_seconds

    rounds = {"round": np.arange(3), "t_pre": np.array([50.0, 0.0, 7.0]), "t_tr_proxy": np.array([1.0, 1.0, 1.0]),
              "t_f_proxy": np.array([0.5, 0.5, 0.5]), "t_tr_full": np.array([0.0, 200.0, 0.0]),
              "t_f_full": np.array([0.0, 20.0, 0.0]), "t_select": np.array([0.1, 0.1, 0.1]),
              "t_eval": np.array([300.0, 300.0, 300.0])}
    # round 0's t_pre (the shared pre-computed features) and every t_eval are left out, and so is the last
    # round's fine-tune and re-embed (they choose nothing); round 1's fine-tune selects round 2: it is in
    assert selection_seconds(rounds) == pytest.approx(3 * 1.6 + 200 + 20)
    assert selection_seconds(rounds, 2) == pytest.approx(2 * 1.6 + 20)  # round 1 is the last: its fine-tune is out
    rounds["t_pre"][1] = 9.0  # a refresh re-embed after round 1 selects round 2
    assert selection_seconds(rounds) == pytest.approx(3 * 1.6 + 200 + 20 + 9)
    assert selection_seconds({"round": np.arange(2)}) == 0.0  # no phase columns: nothing measured
