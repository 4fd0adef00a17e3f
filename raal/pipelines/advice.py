"""The per-round stopping signals of an arm, and the advice recorded beside them (rule: `raal.stopping`).

The kappa signal compares consecutive models' predictions on a fixed sample of the pool. The model is the
converged linear probe (`raal.recipe.fit_probe`) on the pre-computed v0 features of the labeled set: one instrument
for every pipeline, deterministic, and ~1 s at a few thousand labels. Each round's sample predictions are kept in
the arm's store (`stopping/round_R.npy`), so round R+1 compares with them without refitting, and a resumed round
recomputes the same values from the same labels.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from raal import layout
from raal.recipe import fit_probe
from raal.stopping import StopRule, advise, cohen_kappa


def stop_sample(n_pool: int, size: int, seed: int) -> np.ndarray:
    """The fixed pool sample the kappa signal predicts on: sorted positions, the same every round of a run."""
    rng = np.random.default_rng([int(seed), 0x570])
    return np.sort(rng.choice(n_pool, size=min(int(size), n_pool), replace=False))


def probe_predictions(features, labeled_pos: np.ndarray, labels: np.ndarray, sample_pos: np.ndarray,
                      num_classes: int) -> np.ndarray:
    """Classes the converged probe fitted on the labeled rows predicts for the sample rows (features may be a
    memmap; rows are gathered in file order)."""
    order = np.argsort(labeled_pos, kind="stable")
    x = torch.from_numpy(np.asarray(features[labeled_pos[order]], dtype=np.float32))
    head = fit_probe(x, torch.as_tensor(np.asarray(labels)[order], dtype=torch.long), num_classes)
    with torch.no_grad():
        s = torch.from_numpy(np.asarray(features[sample_pos], dtype=np.float32))
        return head(s).argmax(1).numpy().astype(np.int16)


def _save(store, rel: str, pred: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, pred)
    store.write_bytes(rel, buf.getvalue())


def _load(store, rel: str) -> np.ndarray | None:
    return np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False) if store.exists(rel) else None


def round_advice(store, r: int, history: list[dict], row: dict, *, predictions: np.ndarray, next_size: int,
                 rule: StopRule) -> dict:
    """The round's stop columns: kappa vs round r-1's sample predictions, the gain, the advice and its reason.
    `history` is the committed rounds before r, `row` the round being committed (n_labeled, accuracy)."""
    _save(store, layout.stopping_predictions(r), predictions)
    prev = _load(store, layout.stopping_predictions(r - 1)) if r else None
    kappa = cohen_kappa(prev, predictions) if prev is not None and prev.shape == predictions.shape else math.nan
    rows = list(history) + [{**row, "kappa": kappa}]
    adv = advise([x["n_labeled"] for x in rows], [x["accuracy"] for x in rows],
                 [x.get("kappa", math.nan) for x in rows], next_size, rule)
    return {"kappa": kappa, "gain_per_100": adv.gain, "stop_advice": adv.label, "stop_reason": adv.reason}
