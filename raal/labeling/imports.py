"""Import of people's labels into a run waiting for them (`python -m raal.run label`, or the live backend).

Import is validated whole before anything is written (one error naming the problem, nothing changed): every id
must be in the open round's query and not labeled yet, every label in the class list, no id twice with different
labels in raal's own CSV (several annotations of one Label Studio task follow `oracle.annotations`), any path
inside the data roots and equal to the exported one. Labels identical to ones already imported are skipped, so
re-running an import after a crash is safe. Accepted labels go to one ledger (`raal.labeling.ledger`, written
atomically) that answers every arm that asked for the id. Nothing here unpickles anything: CSV and JSON only.
"""
from __future__ import annotations

import hashlib
import os
from typing import cast

import pyarrow as pa

from raal import faults, layout
from raal.config import from_yaml
from raal.data.sources import effective_roots
from raal.data.transforms import confine_path
from raal.errors import LabelImportError, StoreError
from raal.labeling import labelstudio as ls
from raal.labeling.ledger import CLASSES, Ledger
from raal.store import RunLease, RunStore

MAX_LABEL_FILE_BYTES = 256 << 20


def _check_path(path: str, exported: str, roots: list[str], where: str) -> None:
    """A path given back must be the exported one and lie inside the data roots; a URL is not checked (the item
    is found by its raal_id, and Label Studio may rewrite the URL)."""

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
    r = cast(int, status.get("round"))  # checked on the next line
    _stored(store, layout.STATUS, type(r) is int and r >= 0, "the waiting round as an integer >= 0")
    rel = layout.export(r, "parquet")
    export = store.read_table(rel)
    _stored(store, rel, {"id", "path"} <= set(export.column_names) and pa.types.is_integer(export.schema.field(
        "id").type) and pa.types.is_string(export.schema.field("path").type), "columns id (integers) and path")
    return cast(int, r), status, export.to_pydict()  # r: an int, checked above


def import_bytes(store: RunStore, raw: bytes, name: str, allow_partial: bool) -> dict:
    """The one import path (CLI and live backend alike); the caller holds the run's lease. The file is parsed whole
    and every stored file read and checked before the ledger is touched."""

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
