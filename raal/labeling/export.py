"""Export of a round's queries for people to label: `queries/round_K.csv` (id, path, prediction, score, arms,
label — fill in `label`), `round_K.parquet` (the same plus the image reference given to Label Studio),
`round_K.labelstudio.json` (tasks with raal's prediction as a pre-annotation) and `labelstudio_config.xml`
(formats: `labelstudio`). `score` is higher = ask sooner for every strategy. Images that live inside arrays or
a manifest's bytes are written as files under `queries/images/round_K/` so that annotators can see them.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa

from raal import layout
from raal.config import OracleConfig
from raal.data.positions import IdIndex
from raal.data.sources import ImageSet
from raal.labeling import labelstudio as ls
from raal.labeling.ledger import CLASSES, Ledger
from raal.store import RunStore

EXPORT_COLUMNS = ("id", "path", "prediction", "score", "arms", "label")


def _image_files(store: RunStore, r: int, ids: np.ndarray, batch: dict) -> list[str]:
    """A path per queried item: its own file, or one written under queries/images/round_r/ for in-memory images."""
    from PIL import Image

    if "path" in batch:
        return [str(p) for p in batch["path"]]
    out = []
    for i, item in zip(ids.tolist(), batch["image"] if "image" in batch else batch["bytes"]):
        if "image" in batch:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(item, dtype=np.uint8)).save(buf, format="PNG")
            data, ext = buf.getvalue(), "png"
        else:
            data = bytes(item)
            ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        rel = layout.export_image(r, i, ext)
        if not store.exists(rel):
            store.write_bytes(rel, data)
        out.append(store.path(rel))
    return out


def export_round(store: RunStore, r: int, queries: dict[str, pa.Table], pool: ImageSet, class_names: list[str], *,
                 oracle_cfg: OracleConfig) -> dict:
    """Write the files people label for round r into the run's `store`; `queries` maps each waiting arm to its
    saved selection (`arms/<arm>/selections/round_K.parquet`: id, score, prediction).

    The whole query of every waiting arm is exported, one row per id (the first arm's score), with the labels
    imported so far already filled in. Returns the status the run stops with.
    """
    done = Ledger(store).load()
    info: dict[int, dict] = {}
    for arm_name, table in queries.items():
        cols = table.to_pydict()
        for k, i in enumerate(cols["id"]):
            pred = cols.get("prediction", [-1] * len(cols["id"]))[k]
            row = info.setdefault(i, {"id": i, "prediction": class_names[pred] if pred is not None and pred >= 0 else "",
                                      "score": cols["score"][k], "arms": []})
            row["arms"].append(arm_name)
    ids = np.asarray(sorted(info), dtype=np.int64)
    paths = _image_files(store, r, ids, pool.take(IdIndex(pool.ids).positions(ids)))
    rows = []
    for i, path in zip(ids.tolist(), paths):
        row = info[i]
        score = row["score"]
        rows.append({"id": i, "path": path, "prediction": row["prediction"],
                     "score": None if score is None or not np.isfinite(score) else float(score),
                     "arms": ",".join(row["arms"]), "label": class_names[done[i]] if i in done else ""})
    store.write_json(CLASSES, list(class_names))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    store.write_text(layout.export(r, "csv"), text.getvalue())
    o = oracle_cfg
    refs = [ls.image_ref(x["path"], x["id"], mode=o.image_url, document_root=o.document_root,
                         backend_url=o.backend_url) for x in rows]
    store.write_table(layout.export(r, "parquet"), pa.table({
        "id": pa.array([x["id"] for x in rows], pa.int64()), "path": [x["path"] for x in rows], "image": refs,
        "prediction": [x["prediction"] for x in rows], "score": pa.array([x["score"] for x in rows], pa.float64()),
        "arms": [x["arms"] for x in rows]}))
    tasks = [ls.task(x["id"], r, ref, x["prediction"], x["score"]) for x, ref in zip(rows, refs)]
    store.write_text(layout.export(r, "labelstudio.json"), json.dumps(tasks, indent=1))
    store.write_text(layout.LABELSTUDIO_CONFIG, ls.labeling_config(list(class_names)))
    return {"state": "waiting_for_labels", "round": r, "queried": len(rows),
            "labeled": sum(1 for x in rows if x["label"]),
            "files": [store.path(layout.export(r, ext)) for ext in layout.EXPORT_FORMATS]}
