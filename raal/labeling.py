"""Human labeling round trip (`oracle.kind=files`): export a round's queries, import people's answers.

    python -m raal.run conf=X oracle.kind=files            # runs until a round needs labels, writes the files, stops
    python -m raal.run label run_dir=DIR file=labels.csv   # or a Label Studio export (JSON, JSON-MIN, CSV)
    python -m raal.run run_dir=DIR                         # continues once the round's query is answered

Export (run store, `queries/`): `round_K.csv` (id, path, prediction, score, arms, label — fill in `label`),
`round_K.parquet` (the same plus the image reference given to Label Studio), `round_K.labelstudio.json` (tasks with
raal's prediction as a pre-annotation) and `labelstudio_config.xml` (formats: `raal.labelstudio`). `score` is
higher = ask sooner for every strategy. Images that live inside arrays or a manifest's bytes are written as files
under `queries/images/round_K/` so that annotators can see them.

Import is validated whole before anything is written (one error naming the problem, nothing changed): every id
must be in the open round's query and not labeled yet, every label in the class list, no id twice with different
labels in raal's own CSV (several annotations of one Label Studio task follow `oracle.annotations`), any path
inside the data roots and equal to the exported one. Labels identical to ones already imported are skipped, so
re-running an import after a crash is safe. Accepted labels go to one ledger (`oracle/labels.parquet`, written
atomically) that answers every arm that asked for the id. Nothing here unpickles anything: CSV and JSON only.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa

from raal import faults, layout
from raal import labelstudio as ls
from raal.errors import ConfigError, LabelImportError, StoreError
from raal.store import RunLease, RunStore

LEDGER, PARTIAL, CLASSES = layout.LEDGER, layout.PARTIAL, layout.CLASSES
LEDGER_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("round", pa.int64()), ("file", pa.string()),
                           ("sha256", pa.string())])
EXPORT_COLUMNS = ("id", "path", "prediction", "score", "arms", "label")
MAX_LABEL_FILE_BYTES = 256 << 20


class Ledger:
    """Every label people gave this run: id -> class index, with the round and the file it came in."""

    def __init__(self, store: RunStore):
        self.store = store

    def table(self) -> pa.Table:
        if not self.store.exists(LEDGER):
            return LEDGER_SCHEMA.empty_table()
        table = self.store.read_table(LEDGER)
        if table.schema.remove_metadata() != LEDGER_SCHEMA or table.column("id").null_count:
            raise StoreError(f"{self.store.path(LEDGER)}: the label ledger is corrupt: its columns are "
                             f"{ls.short(str(table.schema).splitlines(), 200)}, not {LEDGER_SCHEMA.names} (int64 ids)")
        ids = np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != len(ids):
            dup = uniq[counts > 1]
            raise StoreError(f"{self.store.path(LEDGER)}: the label ledger is corrupt: id {int(dup[0])} appears "
                             f"{int(counts[counts > 1][0])} times ({len(dup)} duplicated ids); every id is labeled "
                             "once")
        return table

    def load(self) -> dict[int, int]:
        t = self.table()
        return dict(zip(t.column("id").to_pylist(), t.column("label").to_pylist()))

    def append(self, round_: int, ids: list[int], labels: list[int], file: str, digest: str) -> None:
        new = pa.table({"id": ids, "label": labels, "round": [round_] * len(ids), "file": [file] * len(ids),
                        "sha256": [digest] * len(ids)}, schema=LEDGER_SCHEMA)
        self.store.write_table(LEDGER, pa.concat_tables([self.table(), new]))

    def partial_rounds(self) -> set[int]:
        rounds = self.store.read_json(PARTIAL) if self.store.exists(PARTIAL) else []
        if not isinstance(rounds, list) or not all(type(r) is int for r in rounds):
            raise StoreError(f"{self.store.path(PARTIAL)}: corrupt: expected a list of round numbers")
        return set(rounds)

    def mark_partial(self, round_: int) -> None:
        self.store.write_json(PARTIAL, sorted(self.partial_rounds() | {round_}))


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------
def _image_files(ctx, r: int, ids: np.ndarray, positions: np.ndarray) -> list[str]:
    """A path per queried item: its own file, or one written under queries/images/round_r/ for in-memory images."""
    from PIL import Image

    batch = ctx.data.pool.take(positions)
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
        if not ctx.store.exists(rel):
            ctx.store.write_bytes(rel, data)
        out.append(ctx.store.path(rel))
    return out


def export_round(ctx, r: int, waiting: dict) -> dict:
    """Write the files people label for round r; `waiting` maps arm name -> (pipeline, missing ids).

    The whole query of every waiting arm is exported, one row per id (the first arm's score), with the labels
    imported so far already filled in. Returns the status the run stops with.
    """
    names = ctx.data.class_names
    done = Ledger(ctx.store).load()
    info: dict[int, dict] = {}
    for arm_name, (pipe, _missing) in waiting.items():
        cols = pipe.state.saved_query_table(r).to_pydict()
        for k, i in enumerate(cols["id"]):
            pred = cols.get("prediction", [-1] * len(cols["id"]))[k]
            row = info.setdefault(i, {"id": i, "prediction": names[pred] if pred is not None and pred >= 0 else "",
                                      "score": cols["score"][k], "arms": []})
            row["arms"].append(arm_name)
    ids = np.asarray(sorted(info), dtype=np.int64)
    pipe = next(iter(waiting.values()))[0]
    paths = _image_files(ctx, r, ids, pipe.positions(ids))
    rows = []
    for i, path in zip(ids.tolist(), paths):
        row = info[i]
        score = row["score"]
        rows.append({"id": i, "path": path, "prediction": row["prediction"],
                     "score": None if score is None or not np.isfinite(score) else float(score),
                     "arms": ",".join(row["arms"]), "label": names[done[i]] if i in done else ""})
    store = ctx.store
    store.write_json(CLASSES, list(names))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    store.write_text(layout.export(r, "csv"), text.getvalue())
    o = ctx.cfg.oracle
    refs = [ls.image_ref(x["path"], x["id"], mode=o.image_url, document_root=o.document_root,
                         backend_url=o.backend_url) for x in rows]
    store.write_table(layout.export(r, "parquet"), pa.table({
        "id": pa.array([x["id"] for x in rows], pa.int64()), "path": [x["path"] for x in rows], "image": refs,
        "prediction": [x["prediction"] for x in rows], "score": pa.array([x["score"] for x in rows], pa.float64()),
        "arms": [x["arms"] for x in rows]}))
    tasks = [ls.task(x["id"], r, ref, x["prediction"], x["score"]) for x, ref in zip(rows, refs)]
    store.write_text(layout.export(r, "labelstudio.json"), json.dumps(tasks, indent=1))
    store.write_text(layout.LABELSTUDIO_CONFIG, ls.labeling_config(list(names)))
    return {"state": "waiting_for_labels", "round": r, "queried": len(rows),
            "labeled": sum(1 for x in rows if x["label"]),
            "files": [store.path(layout.export(r, ext)) for ext in layout.EXPORT_FORMATS]}


# ---------------------------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------------------------
def _check_path(path: str, exported: str, roots: list[str], where: str) -> None:
    """A path given back must be the exported one and lie inside the data roots; a URL is not checked (the item
    is found by its raal_id, and Label Studio may rewrite the URL)."""
    from raal.data.transforms import confine_path

    if ls.is_url(path):
        return
    try:
        confine_path(path, roots)
    except ValueError:
        raise LabelImportError(f"{where}: path {ls.short(path, 200)} lies outside the data roots {roots}") from None
    if os.path.realpath(path) != os.path.realpath(exported):
        raise LabelImportError(f"{where}: path {ls.short(path, 200)} is not the exported path {exported!r} of this id")


def _check_rows(rows: list[tuple[int, str, str]], *, name: str, round_: int, query: dict[int, str],
                classes: list[str], ledger: dict[int, int], roots: list[str]) -> None:
    """Every row names a queried id, a known class and (where it gives one) the exported path of its id."""
    stray = sorted({i for i, _, _ in rows if i not in query})
    if stray:
        already = [i for i in stray if i in ledger]
        what = f"ids {stray[:10]}" + (f" (of which {already[:10]} are labeled already)" if already else "")
        raise LabelImportError(f"{name}: {what} are not in round {round_}'s open query; only queried, unlabeled "
                               "ids can be labeled")
    unknown = sorted({lab for _, lab, _ in rows if lab not in classes})
    if unknown:
        raise LabelImportError(f"{name}: labels {ls.short(unknown[:10], 200)} are not in the class list {classes[:20]}")
    for i, _, path in rows:
        if path:
            _check_path(path, query[i], roots, f"{name} id {i}")


def _rows(answers: list[ls.Answer] | list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    return [(a.id, a.label, a.path) if isinstance(a, ls.Answer) else a for a in answers]


def validate(rows: list[ls.Answer] | list[tuple[int, str, str]], *, name: str, round_: int, query: dict[int, str],
             classes: list[str], ledger: dict[int, int], roots: list[str],
             given: list[ls.Answer] | None = None) -> tuple[list[int], list[int], int]:
    """Check a whole import; returns (new ids, their class indices, identical ones skipped). Raises on any problem.
    `given` is every answer in the file when an annotation policy chose `rows` among them: the answers it did not
    choose must be well-formed too."""
    rows = _rows(rows)
    _check_rows(_rows(given) if given is not None else rows, name=name, round_=round_, query=query,
                classes=classes, ledger=ledger, roots=roots)
    index = {c: k for k, c in enumerate(classes)}
    seen: dict[int, str] = {}
    for i, lab, _ in rows:
        if seen.setdefault(i, lab) != lab:
            raise LabelImportError(f"{name}: id {i} appears with conflicting labels {ls.short(seen[i])} and "
                                   f"{ls.short(lab)}")
    clash = sorted(i for i, lab in seen.items() if i in ledger and ledger[i] != index[lab])
    if clash:
        i = clash[0]
        raise LabelImportError(f"{name}: id {i} was imported before as {classes[ledger[i]]!r}, now {ls.short(seen[i])} "
                               f"({len(clash)} such conflicts); a label cannot be changed once given")
    new = sorted(i for i in seen if i not in ledger)
    return new, [index[seen[i]] for i in new], len(seen) - len(new)


def import_labels(run_dir: str, file: str, allow_partial: bool = False) -> dict:
    """Validate `file` against the run's open query and add its labels to the ledger; returns a summary.

    Runs under the run dir's lease (`RunLease`): a second import, or a run, on the same run dir is refused."""
    store = RunStore(run_dir, create=False)  # a mistyped run_dir is refused, not created
    if not store.exists(layout.CONFIG):
        raise LabelImportError(f"run_dir={run_dir!r} holds no run")
    if not os.path.isfile(file):
        raise LabelImportError(f"file={file!r} does not exist")
    if os.path.getsize(file) > MAX_LABEL_FILE_BYTES:
        raise LabelImportError(f"file={file!r} is larger than {MAX_LABEL_FILE_BYTES >> 20} MB")
    with open(file, "rb") as f:
        raw = f.read()
    with RunLease(store):  # one writer per run: the whole import (validation included) runs under the lease
        return import_bytes(store, raw, os.path.basename(file), allow_partial)


def _stored(store: RunStore, rel: str, ok: bool, expected: str) -> None:
    if not ok:
        raise StoreError(f"{store.path(rel)}: the run store is damaged: expected {expected}")


def open_round(store: RunStore) -> tuple[int, dict, dict]:
    """(round, status, export columns) of the round the run waits on, every stored file checked for its shape (a
    damaged run dir is a one-line StoreError, never a traceback); LabelImportError when it waits on none."""
    status = store.read_json(layout.STATUS) if store.exists(layout.STATUS) else {}
    _stored(store, layout.STATUS, isinstance(status, dict), "a JSON object")
    if status.get("state") != "waiting_for_labels":
        raise LabelImportError(f"run_dir={store.root!r} is not waiting for labels (state "
                               f"{ls.short(status.get('state', 'unknown'))})")
    r = status.get("round")
    _stored(store, layout.STATUS, type(r) is int and r >= 0, "the waiting round as an integer >= 0")
    rel = layout.export(r, "parquet")
    export = store.read_table(rel)
    _stored(store, rel, {"id", "path"} <= set(export.column_names) and pa.types.is_integer(export.schema.field(
        "id").type) and pa.types.is_string(export.schema.field("path").type), "columns id (integers) and path")
    return r, status, export.to_pydict()


def import_bytes(store: RunStore, raw: bytes, name: str, allow_partial: bool) -> dict:
    """The one import path (CLI and live backend alike); the caller holds the run's lease. The file is parsed whole
    and every stored file read and checked before the ledger is touched."""
    from raal.config import from_yaml
    from raal.data.sources import effective_roots

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelImportError(f"{name} is not UTF-8 text (CSV or a Label Studio export)") from None
    parsed = ls.parse(text, name)
    cfg = from_yaml(store.read_text(layout.CONFIG))
    if cfg.oracle.kind != "files":
        raise LabelImportError(f"run_dir={store.root!r} uses oracle.kind={cfg.oracle.kind!r}; labels are "
                               "imported only into runs with oracle.kind=files")
    r, status, export = open_round(store)
    query = dict(zip(export["id"], export["path"]))
    classes = store.read_json(CLASSES)
    _stored(store, CLASSES, isinstance(classes, list) and len(classes) >= 2 and len(set(map(str, classes))) == len(
        classes) and all(isinstance(c, str) for c in classes), "a list of at least two distinct class names")
    answers, unsettled = ls.resolve(parsed, cfg.oracle.annotations)
    ledger = Ledger(store)
    known = ledger.load()
    partial = ledger.partial_rounds()  # read (and checked) before anything is written
    roots = list(effective_roots(cfg.data)) + [store.path(layout.EXPORT_IMAGES)]
    new, labels, skipped = validate(answers, name=name, round_=r, query=query, classes=classes, ledger=known,
                                    roots=roots, given=parsed)
    if new:
        ledger.append(r, new, labels, name, hashlib.sha256(raw).hexdigest())
    faults.reach("label_import")
    if allow_partial:
        ledger.mark_partial(r)
    labeled = set(known) | set(new)
    answered = sum(1 for i in query if i in labeled)
    status.update({"labeled": answered, "partial": bool(allow_partial or r in partial)})
    store.write_json(layout.STATUS, status)
    return {"round": r, "new": len(new), "skipped_identical": skipped, "answered": answered, "queried": len(query),
            "partial": status["partial"], "policy": cfg.oracle.annotations,
            **{k: [i for i in v if i not in labeled] for k, v in unsettled.items()}}


def summary_lines(res: dict) -> list[str]:
    """What an import did, in words: counts, then the items the annotation policy left unanswered."""
    waiting = res["queried"] - res["answered"]
    lines = [f"round {res['round']}: {res['new']} new labels imported"
             + (f" ({res['skipped_identical']} identical ones were imported before)" if res["skipped_identical"]
                else "")
             + f"; {res['answered']} of {res['queried']} queried items labeled"
             + (f", {waiting} still waiting" if waiting else "")]
    if res.get("ties"):
        lines.append(f"{len(res['ties'])} items left unanswered: annotators tied (oracle.annotations="
                     f"{res['policy']}): raal_ids {res['ties'][:20]}")
    if res.get("disagreements"):
        how = ("left unanswered" if res["policy"] == "unanimous" else
               "taken from the earliest annotation" if res["policy"] == "first" else "decided by majority or tied")
        lines.append(f"{len(res['disagreements'])} items with disagreeing annotators ({how}, oracle.annotations="
                     f"{res['policy']}): raal_ids {res['disagreements'][:20]}")
    return lines


def main(argv: list[str]) -> int:
    """`python -m raal.run label run_dir=DIR file=F [allow_partial=true]`; errors exit 2 with one line."""
    args: dict[str, str] = {}
    try:
        for a in argv:
            key, eq, value = a.partition("=")
            if not eq or key not in ("run_dir", "file", "allow_partial"):
                raise ConfigError(f"{a!r}: expected run_dir=DIR file=F [allow_partial=true]")
            args[key] = value
        missing = [k for k in ("run_dir", "file") if not args.get(k)]
        if missing:
            raise ConfigError(f"label needs {' and '.join(k + '=' for k in missing)}")
        partial = args.get("allow_partial", "false").lower()
        if partial not in ("true", "false"):
            raise ConfigError(f"allow_partial={args['allow_partial']!r}: expected true or false")
        res = import_labels(args["run_dir"], args["file"], allow_partial=partial == "true")
    except Exception as err:  # noqa: BLE001 - the error contract: one line; exit 2 (input) or 1 + log (bug)
        from raal.cli_errors import report

        return report(err, args.get("run_dir") if args.get("run_dir") and os.path.isdir(args["run_dir"]) else None,
                      prog="raal label")
    waiting = res["queried"] - res["answered"]
    go = waiting == 0 or (res["partial"] and res["answered"] > 0)
    for line in summary_lines(res):
        print(f"raal label: {line}")
    if go:
        print(f"raal label: continue with: python -m raal.run run_dir={args['run_dir']}")
    return 0
