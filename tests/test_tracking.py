"""MLflow tracking: one parent run per raal run, one nested run per arm, and no duplicate steps after a resume."""
import math

import pytest

from raal.config import load_config
from raal.tracking import Tracker, tracking_uri

pytest.importorskip("mlflow")


def rows(n, acc0, step=0.1, base=False):
    return [{"round": r, "n_labeled": 20 * (r + 1), "n_new": 20, "accuracy": acc0 + step * r, "t_round": 2.0,
             "t_tr_proxy": 1.0, "t_select": 0.5, "device": "cpu", "refreshed": r == 2 and not base,
             "train_method": "FT" if r == 2 and not base else "LP-FT", "ped_steps": 3, "logme_ped": -1.5 + r,
             "score_diff": float("nan") if r == 0 else 0.3} for r in range(n)]


def history(n):
    return {"asvp_margin": rows(n, 0.5), "svpp_random": rows(n, 0.4, 0.05, base=True)}


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_rounds_are_logged_once_across_a_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = load_config("demo", [f"run_dir={run_dir}"])
    arms = ["asvp_margin", "svpp_random"]
    t = Tracker.open(cfg, run_dir, arms, "svpp_random")
    assert t.uri == tracking_uri(cfg, run_dir) and t.uri.startswith("file://") and "/run/mlruns" in t.uri
    first = t.log_history(history(2))
    assert first > 0 and t.log_history(history(2)) == 0  # nothing new: nothing written
    # the process is killed here; a new one resumes the same run dir and sees round 2 committed
    t2 = Tracker.open(cfg, run_dir, arms, "svpp_random")
    assert t2.parent_id == t.parent_id and t2.arm_ids == t.arm_ids
    assert t2.log_history(history(3)) > 0
    t2.log_summary({"asvp_margin": {"accuracy": 0.8}})
    t2.log_summary({"asvp_margin": {"accuracy": 0.8}})
    t2.finish()
    c = t2.client
    arm = t2.arm_ids["asvp_margin"]
    for key in ("n_labeled", "accuracy", "t_tr_proxy", "cost_usd", "ped_steps", "logme_ped", "refreshed"):
        assert steps(c, arm, key) == [0, 1, 2], key
    assert steps(c, arm, "score_diff") == [1, 2]  # NaN is not a metric value
    assert steps(c, arm, "saving_ratio") == [1, 2]  # one random point (round 0) gives no curve to read N2 off
    assert "saving_ratio" not in c.get_run(t2.arm_ids["svpp_random"]).data.metrics  # the baseline has none
    assert len(c.get_metric_history(arm, "final_accuracy")) == 1
    refreshed = {m.step: m.value for m in c.get_metric_history(arm, "refreshed")}
    assert refreshed == {0: 0.0, 1: 0.0, 2: 1.0}
    cost = [m.value for m in sorted(c.get_metric_history(arm, "cost_usd"), key=lambda m: m.step)]
    assert cost[0] > 20 * 0.12 and all(b > a for a, b in zip(cost, cost[1:]))
    # round 1 of the AL arm: 0.6 at 40 labels; the random curve reaches 0.6 nowhere (0.40, 0.45 at 20, 40):
    # extrapolated, so flagged
    ext = {m.step: m.value for m in c.get_metric_history(arm, "saving_extrapolated")}
    assert ext[1] == 1.0
    parent = c.get_run(t2.parent_id)
    assert parent.data.params["al.pipeline"] == "asvp" and parent.info.status == "FINISHED"
    assert c.get_run(arm).data.tags["mlflow.parentRunId"] == t2.parent_id
    assert math.isclose(c.get_run(arm).data.metrics["accuracy"], 0.7)


def test_track_none_turns_it_off(tmp_path):
    cfg = load_config("demo", ["track=none", f"run_dir={tmp_path}"])
    assert Tracker.open(cfg, str(tmp_path), ["a"], None) is None
    assert not (tmp_path / "mlruns").exists()


def test_credentials_of_a_run_store_uri_never_reach_mlflow(tmp_path):
    run_dir = f"file://{tmp_path}/run?secret_key=TOPSECRET&session_token=TOK"
    cfg = load_config("demo", [f"run_dir={run_dir}"])
    t = Tracker.open(cfg, run_dir, ["a"], None)
    t.log_history({"a": rows(1, 0.5)})
    assert t.uri == (tmp_path / "run" / "mlruns").as_uri()
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "run" / "mlruns").rglob("*") if p.is_file())
    assert "TOPSECRET" not in stored and "TOK" not in stored and "REDACTED" in stored
