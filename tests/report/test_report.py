"""The HTML run report over generated run directories: images decode and are not blank; broken runs are described."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raal.report import NotARunError, load_run, main, write_report

pytestmark = pytest.mark.timeout(60)


def _rounds(n_rounds: int, acc_fn, *, step: int = 100, asvp: bool = False, device: str = "cpu",
            skip: tuple[int, ...] = ()) -> pa.Table:
    """A rounds.parquet table in the run-store contract; asvp=True adds PED/LogME-PED decisions and one refresh."""
    r = np.array([i for i in range(n_rounds) if i not in skip], dtype=np.int64)
    k = r.size
    n_lab = (r + 1) * step
    refreshed = (r == 3) if asvp else np.zeros(k, bool)
    ped = np.where(r == 0, -1, np.where(r == 1, 0, 6)) if asvp else np.full(k, -1)
    logme = np.where(ped > 1, -1.0 + 0.3 * r, np.nan) if asvp else np.full(k, np.nan)
    diff = np.where(r >= 3, 0.3, np.where(r == 2, np.nan, np.nan)) if asvp else np.full(k, np.nan)
    method = np.where(r >= 3, "FT", "LP-FT") if asvp else np.full(k, "LP-FT")
    zeros = np.zeros(k)
    t_pre = np.where((r == 0) | refreshed, 20.0, 0.0)
    cols = {
        "round": r, "n_labeled": n_lab.astype(np.int64), "n_new": np.full(k, step, np.int64),
        "accuracy": acc_fn(n_lab.astype(float)), "eval_method": np.full(k, "proxy"), "random_only": r == 0,
        "features_version": np.cumsum(refreshed).astype(np.int64), "ped_steps": ped.astype(np.int64),
        "logme_ped": logme, "score_diff": diff, "refreshed": refreshed, "train_method": method,
        "t_pre": t_pre, "t_tr_proxy": np.where(r > 0, 1.0, 0.0), "t_f_proxy": np.where(r > 0, 0.5, 0.0),
        "t_tr_full": np.where(refreshed, 100.0, 0.0), "t_f_full": zeros, "t_select": np.full(k, 0.2),
        "t_eval": np.full(k, 3.0), "device": np.full(k, device),
    }
    phases = sum(cols[c] for c in ("t_pre", "t_tr_proxy", "t_f_proxy", "t_tr_full", "t_f_full", "t_select",
                                   "t_eval"))
    cols["t_round"] = phases + 0.1
    return pa.table({c: pa.array(v.tolist() if v.dtype.kind == "U" else v) for c, v in cols.items()})


def _random_acc(n):
    return 0.5 + 0.4 * (1 - np.exp(-n / 600))


def _al_acc(n):
    return 0.5 + 0.4 * (1 - np.exp(-n / 350))


def make_run(root: Path, name: str, *, baseline: bool = True, skip: tuple[int, ...] = (),
             config: str = "cost:\n  label_price: 0.12\n  gpu_hour_price: 3.06\nmetrics:\n"
                           "  exclude_random_rounds: true\n") -> Path:
    run = root / name
    arms = [("random", "svpp", "random", True, _random_acc, False), ("svpp_margin", "svpp", "margin", False,
                                                                      _al_acc, False),
            ("asvp_margin", "asvp", "margin", False, lambda n: _al_acc(n) + 0.01, True)]
    for arm, pipe, strat, base, fn, asvp in arms:
        if base and not baseline:
            continue
        d = run / "arms" / arm
        d.mkdir(parents=True)
        (d / "arm.json").write_text(json.dumps({"name": arm, "pipeline": pipe, "strategy": strat,
                                                "baseline": base, "seed": 0}))
        pq.write_table(_rounds(8, fn, asvp=asvp, skip=skip if not base else ()), d / "rounds.parquet")
        pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "label": pa.array([0, 1], pa.int64()),
                                 "round": pa.array([0, 0], pa.int64()), "source": ["random", "random"]}),
                       d / "labels.parquet")
    (run / "config.yaml").write_text(config)
    return run


def _images(html_text: str):
    from PIL import Image

    blobs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_text)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in blobs]


def test_report_of_two_runs_embeds_decodable_nonblank_images(tmp_path, capsys):
    runs = [make_run(tmp_path, "exp_a"), make_run(tmp_path, "exp_b")]
    out = tmp_path / "rep"
    assert main([str(r) for r in runs] + ["--out", str(out)]) == 0
    html_path = out / "report.html"
    text = html_path.read_text()
    imgs = _images(text)
    assert len(imgs) == 6                                   # accuracy, saving, tradeoff, asvp, time, cost
    for im in imgs:
        assert im.shape[0] > 100 and im.shape[1] > 100 and im.std() > 0
    for name in ("accuracy", "saving", "tradeoff", "asvp", "time", "cost"):
        assert (out / f"{name}.png").stat().st_size > 1000
    for key in ("exp_a/svpp_margin", "exp_b/asvp_margin", "exp_a/random"):
        assert key in text
    stdout = capsys.readouterr().out
    head = stdout.splitlines()[0]
    for col in ("arm", "final labels", "final accuracy", "mean saving ratio", "compute time", "cost"):
        assert col in head
    row = next(line for line in stdout.splitlines() if line.startswith("exp_a/svpp_margin"))
    assert row.split()[1] == "800"                          # final labels
    assert "NOTES" not in stdout                            # a clean run has nothing to complain about
    # the AL arm beats random everywhere after round 0 -> positive mean saving ratio
    ratio = float(re.search(r"([-+]?\d+\.\d)% \((\d+) interp", row).group(1))
    assert ratio > 0


def test_report_numbers_match_metrics(tmp_path):
    from raal.metrics import Prices, sample_saving_ratio
    from raal.report._write import _build

    run = make_run(tmp_path, "exp")
    runs, stats = _build([run])
    base = next(s for s in stats if s.arm.baseline).arm.rounds
    al = next(s for s in stats if s.key == "svpp_margin")
    r = al.arm.rounds
    ratios, mean = sample_saving_ratio(np.c_[base["n_labeled"], base["accuracy"]],
                                       np.c_[r["n_labeled"], r["accuracy"]], exclude=r["round"] == 0)
    np.testing.assert_allclose(al.saving.ratios, ratios)
    assert al.saving.mean == pytest.approx(mean)
    # cost: 800 labels at 0.12 plus CPU hours at 0.10 of the summed round times
    p = Prices()
    assert al.total_cost == pytest.approx(800 * p.label_price + r["t_round"].sum() / 3600 * p.cpu_hour_price)


def test_missing_rounds_and_missing_baseline_are_reported_not_fatal(tmp_path, capsys):
    gappy = make_run(tmp_path, "gappy", skip=(3, 4))
    nobase = make_run(tmp_path, "nobase", baseline=False)
    out = tmp_path / "rep"
    path = write_report([gappy, nobase], out, echo=True)
    text = path.read_text()
    stdout = capsys.readouterr().out
    for where in (text, stdout):
        assert "missing round(s) 3-4 of 0..7" in where
        assert "no random baseline arm" in where
        assert "sample saving ratios cannot be computed" in where
    assert "Problems found in the runs" in text
    # the arms of the run without a baseline have no ratio, but still a row
    row = next(line for line in stdout.splitlines() if line.startswith("nobase/svpp_margin"))
    assert " n/a " in row
    assert all(im.std() > 0 for im in _images(text))


def test_run_with_no_rounds_yet_and_no_config(tmp_path, capsys):
    run = tmp_path / "fresh"
    (run / "arms" / "asvp_margin").mkdir(parents=True)
    (run / "arms" / "asvp_margin" / "arm.json").write_text(json.dumps({"name": "asvp_margin", "baseline": False}))
    path = write_report(run, tmp_path / "rep", echo=True)
    text = path.read_text()
    assert "config.yaml is missing" in text
    assert "rounds.parquet is missing: no completed round recorded" in text
    assert "no random baseline arm" in capsys.readouterr().out


def test_not_a_run_is_one_clear_error_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "is not a raal run" in err
    assert main([str(tmp_path / "nope")]) == 2
    with pytest.raises(NotARunError, match="not a directory"):
        load_run(tmp_path / "nope")


def test_config_options_are_read_with_defaults(tmp_path):
    run = make_run(tmp_path, "cfg", config="cost:\n  label_price: 1.5\nmetrics:\n  exclude_random_rounds: false\n"
                                            "asvp:\n  threshold: 0.5\n")
    r = load_run(run)
    assert r.prices.label_price == 1.5 and r.prices.gpu_hour_price == 3.06
    assert r.exclude_random_rounds is False and r.threshold == 0.5
    bad = make_run(tmp_path, "bad", config="cost: [unclosed\n")
    rb = load_run(bad)
    assert rb.prices.label_price == 0.12 and any("config.yaml could not be read" in n for n in rb.notes)


def test_a_failing_plot_is_reported_and_the_rest_is_written(tmp_path, monkeypatch):
    import raal.report._write as rep  # where write_report looks plot_time up

    def boom(*_a, **_k):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(rep, "plot_time", boom)
    path = write_report(make_run(tmp_path, "exp"), tmp_path / "rep")
    text = path.read_text()
    assert "the time plot could not be drawn (RuntimeError: synthetic failure)" in text
    assert len(_images(text)) == 5 and not (tmp_path / "rep" / "time.png").exists()
