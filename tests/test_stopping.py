"""The stopping advice (raal/stopping.py) on synthetic curves, Cohen's kappa, and the config keys around it."""
import math

import numpy as np
import pytest

from raal.config import load_config
from raal.errors import ConfigError
from raal.stopping import StopRule, advise, cohen_kappa, first_stop, gain_per_100, plateau_round, replay

N = [100, 200, 400, 700, 1100, 1500, 1900]


def test_kappa_matches_the_definition():
    a = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    b = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    po = 6 / 8
    pa, pb = np.bincount(a, minlength=3) / 8, np.bincount(b, minlength=3) / 8
    pe = float(pa @ pb)
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(np.zeros(5, int), np.zeros(5, int)) == 1.0  # one constant class: full agreement
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, 20000), rng.integers(0, 10, 20000)
    assert abs(cohen_kappa(x, y)) < 0.02  # independent predictions: chance agreement only
    with pytest.raises(ValueError):
        cohen_kappa(a, b[:-1])


def test_plateau_stops_and_steady_gain_goes():
    plateau = [0.70, 0.80, 0.86, 0.880, 0.885, 0.888, 0.889]  # flat (< 0.5 pt/100 labels) from 700 labels on
    steady = [0.50 + 0.00015 * n for n in N]  # 1.5 points per 100 labels throughout
    adv = replay(N, plateau)
    assert [a.label for a in adv] == ["go", "go", "go", "go", "stop", "stop", "stop"]
    assert adv[4].reason.startswith("plateau") and adv[4].gain == pytest.approx(0.125)
    assert plateau_round(N, plateau) == 3 and first_stop(adv) == 4  # one round after the point, as measured
    assert not any(a.stop for a in replay(N, steady))
    assert plateau_round(N, steady) is None
    assert all(a.gain == pytest.approx(1.5) for a in replay(N, steady)[1:])


def test_gain_over_several_rounds_smooths_a_noisy_dip():
    acc = [0.70, 0.80, 0.86, 0.855, 0.90, 0.93, 0.96]  # one noisy dip, then steady gain
    assert replay(N, acc)[3].stop  # over one round the dip reads as a plateau ...
    assert not any(a.stop for a in replay(N, acc, rule=StopRule(gain_rounds=2))[:5])  # ... over two it does not


def test_stable_predictions_stop_even_while_the_curve_still_rises():
    acc = [0.50 + 0.0002 * n for n in N]
    kappas = [math.nan, 0.9, 0.995, 0.992, 0.999, 0.999, 0.999]
    adv = replay(N, acc, kappas, StopRule(kappa=0.99, kappa_rounds=3))
    assert first_stop(adv) == 4 and adv[4].reason.startswith("stable")
    assert first_stop(replay(N, acc, kappas, StopRule(kappa=0.99, kappa_rounds=0))) is None  # kappa signal off


def test_cost_stops_when_the_next_batch_is_worth_less_than_its_labels():
    curve = ([100, 200], [0.80, 0.81])  # 1 point per 100 labels
    rule = StopRule(min_gain=0.5, point_value=10.0, label_price=0.12)  # 100 labels: 12.0 cost, worth 10.0
    a = advise(*curve, [math.nan] * 2, 100, rule)
    assert a.stop and a.reason.startswith("cost")
    assert not advise(*curve, [math.nan] * 2, 100, StopRule(point_value=20.0, label_price=0.12)).stop
    assert not advise(*curve, [math.nan] * 2, 100, StopRule()).stop  # point_value 0: cost signal off


def test_nothing_to_measure_yet_means_go():
    a = advise([100], [0.7], [math.nan], 100, StopRule())
    assert not a.stop and math.isnan(a.gain)
    assert math.isnan(gain_per_100([100, 200], [0.7, float("nan")]))


@pytest.mark.parametrize("override, key", [
    ("al.initial_strategy=badge", "al.initial_strategy"),  # needs probabilities: not a cold-start strategy
    ("al.initial_strategy=magic", "al.initial_strategy"),
    ("al.stop=never", "al.stop"),
    ("stopping.kappa=1.5", "stopping"),
    ("stopping.gain_rounds=0", "stopping"),
])
def test_bad_cold_start_and_stop_keys(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_defaults_keep_the_old_behaviour():
    cfg = load_config("demo")
    assert cfg.al.initial_strategy == "random" and cfg.al.stop == "schedule"
    assert load_config("demo", ["al.initial_strategy=activeft", "al.stop=advice"]).al.stop == "advice"


def test_report_shows_where_the_advice_fell(tmp_path):
    """The summary's `stop advised at` column and the marker on the learning curve (read from the optional
    stop_advice column; a run without it shows '-')."""
    import sys
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from raal.report import load_run, write_report
    from raal.report._plots import plot_accuracy
    from raal.report._stats import _collect
    from raal.report._stop import first_stop, stop_cell

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import make_run

    run = make_run(tmp_path, "r")
    path = run / "arms" / "svpp_margin" / "rounds.parquet"
    t = pq.read_table(path)
    t = t.append_column("stop_advice", pa.array(["go"] * 5 + ["stop"] * 3))
    t = t.append_column("stop_reason", pa.array(["go: x"] * 5 + ["plateau: +0.20 pt/100 labels < 0.5"] * 3))
    pq.write_table(t, path)
    arms = {a.name: a for a in load_run(run).arms}
    assert first_stop(arms["svpp_margin"].rounds) == 5 and stop_cell(arms["svpp_margin"].rounds) == "600 (plateau)"
    assert stop_cell(arms["asvp_margin"].rounds) == "-"  # an older run without the column
    stats = _collect([load_run(run)])
    html_path = write_report([run], tmp_path / "rep")
    summary = (tmp_path / "rep" / "summary.txt").read_text()
    assert "stop advised at" in summary and "600 (plateau)" in summary
    assert "stop advised at" in html_path.read_text() and "plot could not be drawn" not in summary
    fig = plot_accuracy(stats, {"r": 0}, 100.0, "accuracy (%)")
    marked = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o" and ln.get_fillstyle() == "none"]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [600]  # one marker, where svpp_margin's advice fell
