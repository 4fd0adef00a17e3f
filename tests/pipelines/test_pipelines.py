"""Every pipeline end to end on a few hundred real images with a local Ray, run by the driver actor."""
import math

import numpy as np
import pytest

from raal.config import load_config
from raal.pipelines.experiment import start_driver
from raal.store import RunStore

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray]

TINY = ["eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0",  # evaluator/extension/step budget off: these
        # tests check other things and keep their old cost
        "data.pool_size=200", "data.test_size=100", "data.image_size=32", "al.initial=20", "al.schedule=[20]*2",
        "embed.batch_size=50", "train.epochs=1", "train.lp_epochs=1", "train.milestones=[1]", "train.batch_size=32",
        "report=false"]


def run_experiment(overrides, run_dir, conf="demo", features_from=None):
    """Run all rounds through the driver actor. `features_from`: reuse another run's v0 features (same data and
    backbone), so a test pays for one embedding pass."""
    import shutil

    import ray

    if features_from is not None:
        shutil.copytree(features_from / "features", run_dir / "features")

    cfg = load_config(conf, TINY + overrides + [f"run_dir={run_dir}"])
    driver = start_driver(cfg)
    ray.get(driver.prepare.remote())
    n = ray.get(driver.num_rounds.remote())
    for r in range(n):
        ray.get(driver.run_round.remote(r))
    finals = ray.get(driver.finalize.remote())
    history = ray.get(driver.history.remote())
    ray.kill(driver)
    return history, finals


def test_asvp_standard_activeft_together(ray_local, tmp_path):
    history, finals = run_experiment(
        ["al.pipeline=asvp", "al.strategy=margin", "al.compare=[standard/margin,activeft/activeft]",
         "asvp.rule=delta", "asvp.threshold=1e9", "asvp.ped_max_steps_for_skip=-1", "eval.final=ft",
         "al.baseline=false"],
        tmp_path / "x")
    asvp, std, aft = history["asvp_margin"], history["standard_margin"], history["activeft_activeft"]
    assert [r["n_labeled"] for r in asvp] == [20, 40, 60] == [r["n_labeled"] for r in std]
    # ASVP: round 1 sets the previous score, round 2 refreshes (threshold forced huge), LP-FT -> FT
    assert [r["refreshed"] for r in asvp] == [False, False, True]
    assert [r["features_version"] for r in asvp] == [0, 0, 1]
    assert [r["train_method"] for r in asvp] == ["LP-FT", "LP-FT", "FT"]
    assert asvp[1]["ped_steps"] >= 0 and math.isfinite(asvp[1]["logme_ped"])
    assert math.isfinite(asvp[2]["score_diff"])
    assert asvp[2]["t_tr_full"] > 0 and asvp[2]["t_pre"] > 0  # the refresh's fine-tune and re-embedding
    store = RunStore(tmp_path / "x")
    assert store.exists("arms/asvp_margin/features/v1/pool/manifest.json") or \
        store.listdir("arms/asvp_margin/features/v1")
    # standard AL fine-tunes every round and scores the pool with the fine-tuned backbone
    assert all(r["t_tr_full"] > 0 for r in std) and all(r["t_f_full"] > 0 for r in std[1:])
    assert all(r["eval_method"] == "LP-FT" for r in std)  # the demo's train.method
    assert all(0 <= r["accuracy"] <= 1 for r in std)
    # ActiveFT: the whole budget in one shot
    assert len(aft) == 1 and aft[0]["n_labeled"] == 60 and not aft[0]["random_only"]
    # final models: FT for svpp-like arms, ASVP's own alignment (FT after its refresh), none for standard
    assert finals["asvp_margin"]["method"] == "FT" and finals["activeft_activeft"]["method"] == "FT"
    assert "standard_margin" not in finals
    # the arms share round 0's random batch, except ActiveFT, which chooses its own
    labels = {a: store.read_table(f"arms/{a}/labels.parquet").to_pylist() for a in history}
    r0 = {a: {x["id"] for x in rows if x["round"] == 0} for a, rows in labels.items()}
    assert r0["asvp_margin"] == r0["standard_margin"] != r0["activeft_activeft"]
    # phase times are recorded and positive where the phase ran
    assert all(r["t_tr_proxy"] > 0 for r in asvp)
    assert all(r["t_round"] > 0 for rows in history.values() for r in rows)


def test_peal_with_featdist(ray_local, tmp_path):
    history, _ = run_experiment(["al.compare=[]", "al.baseline=false", "lora.epochs=1", "data.image_size=64"],
                                tmp_path / "p", conf="demo_peal")
    rows = history["peal_featdist"]
    assert [r["n_labeled"] for r in rows] == [20, 40, 60]
    assert all(r["eval_method"] == "LoRA" and r["t_tr_full"] > 0 for r in rows)
    assert all(r["t_f_full"] > 0 for r in rows[1:])  # the pool re-embedded with the LoRA-merged ViT each round
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def test_same_seed_same_labeled_set(ray_local, tmp_path):
    svpp = ["al.pipeline=svpp", "al.strategy=coreset", "al.compare=[]", "al.baseline=false"]
    a, _ = run_experiment(svpp, tmp_path / "a")
    b, _ = run_experiment(svpp, tmp_path / "b", features_from=tmp_path / "a")
    ids = [sorted(x["id"] for x in RunStore(tmp_path / d).read_table("arms/svpp_coreset/labels.parquet").to_pylist())
           for d in ("a", "b")]
    assert ids[0] == ids[1] and len(ids[0]) == 60
    assert [r["accuracy"] for r in a["svpp_coreset"]] == [r["accuracy"] for r in b["svpp_coreset"]]
    c, _ = run_experiment(svpp + ["al.seed=1"], tmp_path / "c",
                          features_from=tmp_path / "a")
    other = sorted(x["id"] for x in RunStore(tmp_path / "c").read_table("arms/svpp_coreset/labels.parquet").to_pylist())
    assert other != ids[0]
    assert np.isfinite([r["accuracy"] for r in c["svpp_coreset"]]).all()


def test_one_evaluator_scores_every_arm_and_the_baseline_is_extended(ray_local, tmp_path):
    """eval.every_round=evaluator: every arm is scored by the same partial fine-tune with seeds paired by labeled-set
    size; the proxy's and standard AL's own accuracies are diagnostics; the random arm runs past the schedule until
    it passes every arm's best or reaches its cap; standard AL fine-tunes partially from the evaluator's cache."""
    import ray

    cfg = load_config("demo", TINY + ["eval.every_round=evaluator", "al.baseline_cap=-1", "eval.steps=20",
                                      "al.pipeline=asvp", "al.strategy=margin", "al.compare=[standard/margin]",
                                      "asvp.rule=delta", "asvp.threshold=1e9",  # a refresh at round 2
                                      "train.freeze_blocks=-1", "train.method=ft", f"run_dir={tmp_path / 'ev'}"])
    driver = start_driver(cfg)
    ray.get(driver.prepare.remote())
    r = 0
    while True:
        if r >= ray.get(driver.num_rounds.remote()):
            if not ray.get(driver.extend_baseline.remote()):
                break
            continue
        ray.get(driver.run_round.remote(r))
        r += 1
    history = ray.get(driver.history.remote())
    ray.kill(driver)
    svpp, std, rnd = history["asvp_margin"], history["standard_margin"], history["svpp_random"]
    assert len(svpp) == len(std) == 3 and len(rnd) >= 3
    # round 0 is the same random batch in every arm, scored with the same seed: the same accuracy
    assert svpp[0]["accuracy"] == std[0]["accuracy"] == rnd[0]["accuracy"]
    assert all(row["eval_method"] == "evaluator:lpft" for rows in history.values() for row in rows)
    assert all(row["model_eval"] == "proxy" for row in svpp + rnd)
    assert all(row["model_eval"] == "partial FT" for row in std)
    assert all(0 <= row["accuracy"] <= 1 and row["t_eval"] > 0 for rows in history.values() for row in rows)
    assert all(row["t_tr_full"] > 0 for row in std) and all(row["t_f_full"] > 0 for row in std[1:])
    # ASVP's refresh by partial fine-tuning: the trainable blocks' features of pool and test become version 1
    assert [row["refreshed"] for row in svpp] == [False, False, True] and svpp[2]["features_version"] == 1
    assert svpp[2]["t_tr_full"] > 0
    manifest = RunStore(tmp_path / "ev").read_json("arms/asvp_margin/features/v1/pool/manifest.json")
    assert manifest["complete"] and str(manifest["weights_id"]).startswith("evaluator:17:")
    best_other = max(row["accuracy"] for row in svpp + std)
    extended = rnd[3:]
    assert all(row["n_labeled"] == 60 + 20 * (i + 1) for i, row in enumerate(extended))
    # the extension stopped for one of its two reasons: the random curve passed every arm, or the cap (3 x 60)
    assert max(row["accuracy"] for row in rnd) > best_other or rnd[-1]["n_labeled"] + 20 > 180
    if extended:  # it only continued while it had not passed them yet
        assert max(row["accuracy"] for row in rnd[:-1]) <= best_other


def test_svpp_runs_the_proxy_and_cover_strategies(ray_local, tmp_path):
    """DropQuery gets the round's proxy as a callable over the pool features; ProbCover its class count."""
    history, _ = run_experiment(["al.pipeline=svpp", "al.strategy=dropquery", "al.compare=[svpp/probcover]",
                                 "al.baseline=false"], tmp_path / "d")
    for arm in ("svpp_dropquery", "svpp_probcover"):
        assert [r["n_labeled"] for r in history[arm]] == [20, 40, 60]
        assert all(0 <= r["accuracy"] <= 1 for r in history[arm])


def test_svpp_on_seals_candidates_with_cluster_margin(ray_local, tmp_path):
    """al.candidates=seals in a real run: the AL arms' rounds after the first choose from SEALS' candidates (at most
    k per label, fewer than the unlabeled pool) and record how many; cluster_margin runs on the proxy and the
    features; the random baseline stays on the whole pool."""
    history, _ = run_experiment(["al.pipeline=svpp", "al.strategy=cluster_margin", "al.compare=[svpp/margin]",
                                 "al.candidates=seals", "al.candidates_k=5"], tmp_path / "s")
    for arm in ("svpp_cluster_margin", "svpp_margin"):
        rows = history[arm]
        assert [r["n_labeled"] for r in rows] == [20, 40, 60]
        assert rows[0]["rows_scored"] == 200  # round 0: the shared random batch
        for before, r in zip((20, 40), rows[1:]):
            assert 20 <= r["rows_scored"] <= 5 * before and r["rows_scored"] < 200 - before, arm
    assert [r["rows_scored"] for r in history["svpp_random"][:3]] == [200, 180, 160]


def test_selection_on_workers_picks_what_the_driver_picks(ray_local, tmp_path):
    """al.select_workers=2 in real runs, the driver actor submitting the tasks: svpp/margin queries exactly the
    in-process run's ids in every round, coreset beside it runs composable k-center on the workers; asvp selects
    on the workers from the refreshed features in its own store after a forced refresh at 20 labels. The rounds
    table records who chose each round and the bytes that came back."""
    from raal import layout

    def queries(run, arm):
        store = RunStore(tmp_path / run / "arms" / arm)
        return [store.read_table(layout.selection(r)).column("id").to_pylist() for r in (1, 2)]

    base = ["al.pipeline=svpp", "al.strategy=margin", "al.compare=[svpp/coreset]", "al.baseline=false",
            "embed.shard_rows=64"]  # 4 shards of the 200-row pool: 2 per worker
    a, _ = run_experiment(base, tmp_path / "a")
    b, _ = run_experiment(base + ["al.select_workers=2"], tmp_path / "b", features_from=tmp_path / "a")
    assert queries("b", "svpp_margin") == queries("a", "svpp_margin")  # ids in pick order, rounds 1 and 2
    assert [r["select_workers"] for r in a["svpp_margin"]] == [0, 0, 0]
    assert [r["select_workers"] for r in b["svpp_margin"]] == [0, 2, 2] == [r["select_workers"]
                                                                           for r in b["svpp_coreset"]]
    assert [r["select_bytes"] for r in b["svpp_margin"]] == [0, 2 * 20 * 24, 2 * 20 * 24]  # 20 best per worker
    assert [r["n_labeled"] for r in b["svpp_coreset"]] == [20, 40, 60]
    assert all(r["select_bytes"] > 2 * 20 * 8 for r in b["svpp_coreset"][1:])  # positions and embeddings
    c, _ = run_experiment(["al.pipeline=asvp", "al.strategy=entropy", "al.compare=[]", "al.baseline=false",
                           "asvp.rule=at", "asvp.refresh_at=[20]", "al.select_workers=2", "embed.shard_rows=64"],
                          tmp_path / "c", features_from=tmp_path / "a")
    rows = c["asvp_entropy"]
    assert [r["features_version"] for r in rows] == [1, 1, 1] and [r["n_labeled"] for r in rows] == [20, 40, 60]
    assert [r["select_workers"] for r in rows] == [0, 2, 2]


def test_full_finetune_evaluator_refresh_at_a_forced_size_and_memoised_fits(ray_local, tmp_path):
    """eval.freeze_blocks=0: every arm scored by a full fine-tune; standard AL's model each round and ASVP's refresh
    are the evaluator's own fit of that labeled set (one fit each, memoised), charged to the method at its measured
    cost; asvp.rule=at refreshes after the round that reaches the listed size, nowhere else."""
    history, _ = run_experiment(["eval.every_round=evaluator", "eval.freeze_blocks=0", "eval.method=ft",
                                 "eval.steps=3", "al.pipeline=asvp", "al.strategy=margin",
                                 "al.compare=[svpp/margin,standard/margin]", "al.baseline=false", "asvp.rule=at",
                                 "asvp.refresh_at=[40]", "train.freeze_blocks=-1", "train.method=ft"],
                                tmp_path / "full")
    asvp, svpp, std = history["asvp_margin"], history["svpp_margin"], history["standard_margin"]
    assert all(row["eval_method"] == "evaluator:ft" for rows in history.values() for row in rows)
    assert [row["refreshed"] for row in asvp] == [False, True, False]
    assert [row["features_version"] for row in asvp] == [0, 1, 1] and all(r["ped_steps"] == -1 for r in asvp[1:])
    # ASVP runs first: its refresh at 40 labels trained the fit its own evaluation, SVPp's (same set) and
    # nobody else's then reuse; round 0 (the same batch everywhere) is trained once
    assert [row["eval_memo"] for row in asvp] == [False, True, False]
    assert asvp[1]["t_tr_full"] >= asvp[1]["eval_fit_s"] > 0
    assert [row["eval_memo"] for row in svpp[:2]] == [True, True]
    assert [row["accuracy"] for row in svpp[:2]] == [row["accuracy"] for row in asvp[:2]]
    # standard AL's model is the evaluator's fit: its evaluation is always a memo hit, and its fine-tune is charged
    # the fit's measured seconds even in round 0, where ASVP's evaluation had trained it
    assert all(row["eval_memo"] for row in std)
    assert all(row["t_tr_full"] >= row["eval_fit_s"] > 0 for row in std)
    manifest = RunStore(tmp_path / "full").read_json("arms/asvp_margin/features/v1/pool/manifest.json")
    assert manifest["complete"] and str(manifest["weights_id"]).startswith("evaluator:0:")
