"""Label Studio's side of the labeling round trip: what raal writes for it and how its exports are read back.

Written: the labeling config (one `Image`, one single-choice `Choices` named `label`), and one task per queried
item whose `data` holds `image` (a reference Label Studio can show, `oracle.image_url`), `raal_id` (how an answer
finds its item: never the path, never Label Studio's own task id) and `raal_round`, with raal's prediction as a
pre-annotation. Every score raal writes means the same: higher = ask sooner (`SCORE_MEANING`).

Read: Label Studio's three tabular exports, as its own converter writes them: JSON (tasks with their annotations),
JSON-MIN and CSV (one flat row per annotation, `id` = Label Studio's task id, `raal_id` = raal's). Each becomes a
list of `Answer`s; `resolve` turns several annotations of one item into one label by `oracle.annotations`
(majority | unanimous | first) and reports the ties and disagreements it did not settle.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

from raal.data.sources import effective_roots
from raal.errors import ConfigError, LabelImportError, short

FROM_NAME, TO_NAME = "label", "image"
SCORE_MEANING = ("score: higher = ask sooner; the k-th of a round's n picks scores 1 - k/n, for every strategy "
                 "(uncertainty sorts and set-based picks alike)")
LOCAL_FILES = "/data/local-files/?d="
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# ---------------------------------------------------------------------------------------------------------------
# what raal writes
# ---------------------------------------------------------------------------------------------------------------
def labeling_config(classes: list[str]) -> str:
    """The project's labeling config; the XML comment states what raal's prediction scores mean."""
    choices = "\n".join(f"    <Choice value={quoteattr(n)}/>" for n in classes)
    return (f"<View>\n  <!-- raal {SCORE_MEANING} -->\n  <Image name={quoteattr(TO_NAME)} value=\"$image\"/>\n"
            f"  <Choices name={quoteattr(FROM_NAME)} toName={quoteattr(TO_NAME)} choice=\"single\" "
            f"showInLine=\"true\">\n{choices}\n  </Choices>\n</View>\n")


def is_url(value: str) -> bool:
    """A task's image given as a URL (scheme://, or Label Studio's own /data/… routes) rather than a file path."""
    return bool(_URL.match(value)) or value.startswith(("/data/local-files/", "/data/upload/"))


def image_ref(path: str, raal_id: int, *, mode: str, document_root: str = "", backend_url: str = "") -> str:
    """How a task references its image: the path itself, Label Studio's local-files URL, an http(s) prefix plus the
    path under `document_root`, or raal's backend (`GET /image/<raal_id>`, which serves exported items only)."""
    if mode == "path":
        return path
    if mode == "backend":
        return f"{backend_url.rstrip('/')}/image/{int(raal_id)}"
    root = os.path.realpath(document_root)
    real = os.path.realpath(path)
    if not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
        raise LabelImportError(f"image {path!r} lies outside oracle.document_root={document_root!r}; Label Studio "
                               "can only serve files under it")
    rel = os.path.relpath(real, root).replace(os.sep, "/")
    if mode == "local-files":
        return LOCAL_FILES + quote(rel, safe="/")
    return f"{mode.rstrip('/')}/{quote(rel, safe='/')}"


def check_document_root(cfg, run_dir: str) -> None:
    """Before a run starts: with local-files or http(s) image URLs, every image raal exports must lie under
    `oracle.document_root` (the data roots, or the run dir where in-memory images are written)."""

    o = cfg.oracle
    if o.kind != "files" or o.image_url in ("path", "backend"):
        return
    root = os.path.realpath(o.document_root).rstrip(os.sep) + os.sep
    for folder in effective_roots(cfg.data) or (run_dir,):
        if not (os.path.realpath(folder) + os.sep).startswith(root):
            raise ConfigError(f"oracle.document_root={o.document_root!r} does not contain {folder!r}, where images "
                              f"for oracle.image_url={o.image_url} live; Label Studio could not serve them")


def local_files_path(ref: str, document_root: str) -> str:
    """The file behind a local-files URL (the inverse of `image_ref` for that mode)."""
    return os.path.join(document_root, unquote(ref[len(LOCAL_FILES):]))


def task(raal_id: int, round_: int, image: str, prediction: str, score: float | None) -> dict:
    """One Label Studio task; with a prediction, raal's pre-annotation and its ask-sooner score."""
    out: dict = {"data": {"image": image, "raal_id": int(raal_id), "raal_round": int(round_)}}
    if prediction:
        out["predictions"] = [prediction_of(prediction, score, round_)]
    return out


def prediction_of(label: str, score: float | None, round_: int) -> dict:
    return {"model_version": f"raal-round-{round_}", "score": score, "result": [
        {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]}


# ---------------------------------------------------------------------------------------------------------------
# what Label Studio (or a person) gives back
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One annotation of one item. `annotation` is None for a row of raal's own CSV (no annotator behind it)."""

    id: int
    label: str
    path: str = ""
    annotation: tuple | None = None  # (created_at, annotation id): the order `first` goes by


def _list_of_dicts(value, what: str) -> list[dict]:
    """A Label Studio list field (missing or null = empty); anything else is not an export of Label Studio."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise LabelImportError(f"{what} must be a list of objects, not {short(value)}")
    return value


def int_id(value, where: str) -> int:
    """An id as an int; CSV gives text and Label Studio's CSV writes numbers as 12 or 12.0."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        text = str(value).strip()
        if text.endswith(".0"):
            text = text[:-2]
        if not text.lstrip("-").isdigit() or len(text) > 30:  # no id has 30 digits; int() refuses 4300+
            raise ValueError
        return int(text)
    except (ValueError, OverflowError):
        raise LabelImportError(f"{where}: id {short(value)} is not an integer") from None


def _one_choice(choices, where: str) -> str:
    """The single class a `choices` value names; anything else is a one-line error."""
    if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], str) and choices[0]:
        return choices[0]
    if isinstance(choices, list) and len(choices) > 1:
        raise LabelImportError(f"{where}: several choices {short(choices[:5])}; raal's config is single-choice")
    raise LabelImportError(f"{where}: malformed choices {json.dumps(choices)[:80]} (expected a list with one "
                           "class name)")


def parse(text: str, name: str) -> list[Answer]:
    """Every answer in a label file: raal's CSV, or Label Studio's JSON, JSON-MIN or CSV export (told apart by
    their shape)."""
    if text.lstrip()[:1] in ("[", "{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelImportError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from None
        except (ValueError, RecursionError) as err:  # a 5000-digit number, nesting deeper than Python's stack
            what = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
            raise LabelImportError(f"{name}: not valid JSON ({what})") from None
        if not isinstance(doc, list):
            raise LabelImportError(f"{name}: a Label Studio export is a JSON list (JSON or JSON-MIN format)")
        if all(isinstance(t, dict) and "data" in t for t in doc):
            return parse_json(doc, name)
        return parse_json_min(doc, name)
    return parse_csv(text, name)


def parse_json(tasks: list, name: str) -> list[Answer]:
    """Label Studio's JSON export: tasks with `data.raal_id` and their annotations (cancelled ones skipped)."""
    out = []
    for k, t in enumerate(tasks):
        data = t.get("data") if isinstance(t, dict) else None
        if not isinstance(data, dict) or "raal_id" not in data:
            raise LabelImportError(f"{name}: task {k} has no data.raal_id (was it exported by raal?)")
        i = int_id(data["raal_id"], f"{name} task {k}")
        anns = t.get("annotations") if "annotations" in t else t.get("completions")
        for a in _list_of_dicts(anns, f"{name}: task {k} (raal_id {i}): annotations"):
            if a.get("was_cancelled") or a.get("skipped"):
                continue
            found = _list_of_dicts(a.get("result"), f"{name}: task {k} (raal_id {i}): an annotation's result")
            results = [r for r in found if r.get("from_name", FROM_NAME)
                       == FROM_NAME and (r.get("type") or "choices").lower() == "choices"]
            if not results:
                continue
            if len(results) > 1:
                raise LabelImportError(f"{name}: task {k} (raal_id {i}): one annotation has {len(results)} "
                                       "choice results")
            value = results[0].get("value")
            where = f"{name}: task {k} (raal_id {i})"
            if not isinstance(value, dict) or "choices" not in value:
                raise LabelImportError(f"{where}: a choices result without value.choices")
            out.append(Answer(i, _one_choice(value["choices"], where), _image(data.get("image")),
                              (str(a.get("created_at") or ""), str(a.get("id") or ""))))
    return out


def parse_json_min(rows: list, name: str) -> list[Answer]:
    """Label Studio's JSON-MIN export: one flat object per annotation (task data + `label`); a task without
    annotations appears once without `label`."""
    out = []
    for k, rec in enumerate(rows):
        if not isinstance(rec, dict) or "raal_id" not in rec:
            raise LabelImportError(f"{name}: item {k} has no raal_id (a JSON-MIN export of a raal project has "
                                   "one per row)")
        i = int_id(rec["raal_id"], f"{name} item {k}")
        if rec.get(FROM_NAME) in (None, ""):
            continue
        out.append(Answer(i, _min_label(rec[FROM_NAME], f"{name}: item {k} (raal_id {i})"),
                          _image(rec.get("image")), (str(rec.get("created_at") or ""),
                                                     str(rec.get("annotation_id") or ""))))
    return out


def _min_label(value, where: str) -> str:
    """A JSON-MIN/CSV `label` cell: the class name; the converter writes several choices as an object."""
    if isinstance(value, str) and value and value[0] not in "[{":
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise LabelImportError(f"{where}: malformed label {short(value)}") from None
        except (ValueError, RecursionError):
            raise LabelImportError(f"{where}: malformed label {short(value)}") from None
    if isinstance(value, dict) and "choices" in value:
        return _one_choice(value["choices"], where)
    if isinstance(value, list):
        return _one_choice(value, where)
    raise LabelImportError(f"{where}: malformed label {json.dumps(value)[:80]} (expected a class name)")


def parse_csv(text: str, name: str) -> list[Answer]:
    """raal's own CSV (`id`, `label`, optional `path`), or Label Studio's CSV export (`raal_id`, `label`, one row
    per annotation; its `id` is Label Studio's task id and is ignored). Empty labels are unanswered."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _csv_rows(reader, name)
    except csv.Error as err:  # a field over the csv module's limit, a NUL byte, ...
        raise LabelImportError(f"{name}: not a readable CSV file (line {reader.line_num}: {err})") from None


def _csv_rows(reader: csv.DictReader, name: str) -> list[Answer]:
    fields = set(reader.fieldnames or [])
    studio = "raal_id" in fields
    if not ({"raal_id"} if studio else {"id", "label"}) <= fields:
        raise LabelImportError(f"{name}: a label CSV needs the columns id and label (raal's CSV) or raal_id "
                               f"(Label Studio's CSV export); it has {short(sorted(fields)[:12], 200)}")
    out = []
    for line, rec in enumerate(reader, start=2):
        where = f"{name} line {line}"
        raw = (rec.get(FROM_NAME) or "").strip()
        if not raw:
            continue
        if studio:
            out.append(Answer(int_id(rec["raal_id"], where), _min_label(raw, where), _image(rec.get("image")),
                              (rec.get("created_at") or "", rec.get("annotation_id") or "")))
        else:
            out.append(Answer(int_id(rec.get("id"), where), raw, (rec.get("path") or "").strip()))
    return out


def _image(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def resolve(answers: list[Answer], policy: str) -> tuple[list[Answer], dict[str, list[int]]]:
    """One answer per annotated item by `policy`; rows of raal's own CSV pass through unchanged (validation
    refuses their conflicts). Returns (answers, {"ties": ids, "disagreements": ids}): under `majority` a tie at
    the top and under `unanimous` any disagreement leave the item unanswered; under `first` the earliest
    annotation is taken and the items whose annotators disagreed are still reported."""
    plain = [a for a in answers if a.annotation is None]
    groups: dict[int, list[Answer]] = {}
    for a in answers:
        if a.annotation is not None:
            groups.setdefault(a.id, []).append(a)
    chosen, ties, disagree = [], [], []
    for i, group in groups.items():
        counts = Counter(a.label for a in group).most_common()
        if len(counts) > 1:
            disagree.append(i)
        if policy == "first":
            chosen.append(min(group, key=lambda a: a.annotation or ()))  # never None in a group
        elif policy == "unanimous":
            if len(counts) == 1:
                chosen.append(group[0])
        elif len(counts) > 1 and counts[0][1] == counts[1][1]:
            ties.append(i)
        else:
            chosen.append(next(a for a in group if a.label == counts[0][0]))
    return plain + chosen, {"ties": sorted(ties), "disagreements": sorted(disagree)}
