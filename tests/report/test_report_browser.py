"""The report as a reader gets it: read through RunStore URIs, seeds banded, and rendered by a real browser."""
import os

import pytest
from test_report import make_run

from raal.report import write_report
from raal.report._plots import seed_groups
from raal.report._write import _build

pytestmark = pytest.mark.timeout(120)


def seed_runs(tmp_path, n=2):
    return [make_run(tmp_path, f"seed{i}", config=f"name: demo\nrun_dir: runs/seed{i}\nal:\n  seed: {i}\n"
                                                  "cost:\n  label_price: 0.12\n") for i in range(n)]


def test_a_file_uri_run_store_gets_the_same_report(tmp_path):
    run = make_run(tmp_path, "r")
    a = write_report([run], tmp_path / "plain")
    b = write_report([f"file://{run}"], tmp_path / "uri")
    assert (a.parent / "summary.txt").read_text() == (b.parent / "summary.txt").read_text()
    assert sorted(p.name for p in a.parent.iterdir()) == sorted(p.name for p in b.parent.iterdir())


def test_seeds_of_one_config_form_one_band_per_arm(tmp_path):
    runs = seed_runs(tmp_path)
    other = make_run(tmp_path, "other", config="al:\n  seed: 0\n  initial: 7\n")
    _, stats = _build([*runs, other])
    groups = seed_groups(stats)
    assert sorted(g[0].arm.name for g in groups) == ["asvp_margin", "random", "svpp_margin"]
    assert all(len(g) == 2 and {s.arm.run_label for s in g} == {"seed0", "seed1"} for g in groups)


def test_extrapolated_points_are_marked_in_the_summary(tmp_path):
    run = make_run(tmp_path, "r")
    path = write_report([run], tmp_path / "out")
    text = (path.parent / "summary.txt").read_text()
    # the AL curves end above the random curve's last accuracy: their final N2 is extrapolated
    assert "(extrap.)" in text.split("\n\n")[0]
    assert "(extrap.)" in path.read_text()


def test_report_renders_in_headless_chromium(tmp_path):
    from cdp import check_page, find_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    runs = seed_runs(tmp_path)
    path = write_report(runs, tmp_path / "out")
    page = check_page(path, screenshot=True)
    assert page["errors"] == []
    assert len(page["imgs"]) == 6  # accuracy, saving, tradeoff, asvp, time, cost
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in page["imgs"]), page["imgs"]
    assert page["summary_rows"] == 6  # 3 arms x 2 seeds
    assert "Summary" in page["heads"]
    assert page["screenshot"][:8] == b"\x89PNG\r\n\x1a\n"
