"""Generated bad input at every door of raal (issue #16): config overrides, Parquet manifests, label files for
`python -m raal.run label`, and the stored state files a resume or an import reads.

Every case must end the same way: exit code 2, exactly one line on stderr, and a run dir whose files are
byte-identical to before. The CLI entry points run in-process (fast); a few representative cases run as real
subprocesses. Hypothesis is derandomized (a fixed seed per test, no example database), so CI sees the same examples
every time; an input that once broke a door is kept as an explicit @example.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import raal.run
from raal import strategies
from raal.config import (
    DATA_SOURCES,
    DEVICES,
    EVAL_MODES,
    NUMERIC_RANGES,
    ORACLES,
    PIPELINES,
    TRAIN_METHODS,
    RunConfig,
    load_config,
    to_yaml,
)

pytestmark = [pytest.mark.timeout(300)]


def fuzz(max_examples: int) -> settings:
    """Deterministic (fixed seed, no example database), no per-example deadline (a loaded CI machine)."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.differing_executors])


SMALL = ["eval.every_round=proxy", "al.baseline_cap=0", "al.pipeline=svpp", "al.compare=[]", "data.image_size=32",
         "report=false"]


# -- the contract ---------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under root, by relative path."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


class Accepted(BaseException):
    """A bad input got past every check and a run would have started. A BaseException, so that the CLI's error
    contract (which turns every Exception from the run into one line) lets it through to the test."""


@contextlib.contextmanager
def no_run():
    """raal.run.main with the run itself replaced: a bad input that passes the checks fails the test, no Ray."""
    real = raal.run.run

    def refuse(cfg):
        raise Accepted("the input was accepted and the run would have started")

    raal.run.run = refuse
    try:
        yield
    finally:
        raal.run.run = real


def cli(argv: list[str]) -> tuple[int, str]:
    """`python -m raal.run ARGV` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with no_run(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = raal.run.main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def assert_refused(argv: list[str], run_dir: Path, expect: str = "") -> str:
    before = snapshot(run_dir)
    code, err = cli(argv)
    assert code == 2, (code, err[-2000:])
    assert err.endswith("\n") and err.count("\n") == 1, err[-2000:]
    assert expect in err, err
    assert snapshot(run_dir) == before, "the run dir changed"
    return err


def subprocess_cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "raal.run", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


# -- configs ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored_run(tmp_path_factory) -> Path:
    """A run dir holding a run's config and some state (what a resume would find)."""
    run_dir = tmp_path_factory.mktemp("cfg") / "run"
    cfg = load_config("demo", SMALL + [f"run_dir={run_dir}"])
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "status.json").write_text('{"state": "running", "round": 1}\n')
    return run_dir


def _schema_leaves(prefix: str = "", node=None) -> dict[str, object]:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.structured(RunConfig)) if node is None else node
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_schema_leaves(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = v
    return out


LEAVES = _schema_leaves()
INT_KEYS = sorted(k for k, v in LEAVES.items() if type(v) is int)
FLOAT_KEYS = sorted(k for k, v in LEAVES.items() if type(v) is float)
BOOL_KEYS = sorted(k for k, v in LEAVES.items() if type(v) is bool)
SECTIONS = sorted({k.split(".")[0] for k in LEAVES if "." in k})
CHOICE_KEYS = ["data.source", "al.pipeline", "al.strategy", "train.method", "embed.device", "proxy.device",
               "eval.every_round", "eval.final", "eval.method", "oracle.kind", "train.optimizer", "train.schedule",
               "train.bn", "train.lp_solver", "asvp.rule", "asvp.logme_variant"]
KNOWN_CHOICES = frozenset(DATA_SOURCES + PIPELINES + TRAIN_METHODS + DEVICES + ORACLES + EVAL_MODES
                          + tuple(strategies.names()) + ("none", "lp", "adamw", "sgd", "cosine", "multistep",
                                                         "frozen", "train", "lbfgs", "gain", "delta", "fast", "exact"))
_BAD_FOR_RULE = {
    ">=1": st.integers(-10**6, 0), ">=0": st.integers(-10**6, -1), ">=-1": st.integers(-10**6, -2),
    ">0": st.one_of(st.floats(-1e6, 0.0), st.sampled_from(["nan", "-inf", ".nan"])),
    "[0,1)": st.one_of(st.floats(1.0, 1e6), st.floats(-1e6, -1e-9), st.just(".inf")),
}
#: keys checked in validate() outside NUMERIC_RANGES, with values they refuse
_OTHER_RANGES = {"data.image_size": st.integers(-100, 15), "data.pool_size": st.integers(-10**6, -1),
                 "data.test_size": st.integers(-10**6, -1), "al.initial": st.integers(-10**6, -1),
                 "eval.steps": st.integers(-10**6, 0), "eval.batch_size": st.integers(-10**6, 0),
                 "asvp.threshold": st.floats(-1e6, -1e-9), "asvp.gain_rounds": st.integers(-100, 0),
                 "cost.label_price": st.floats(-1e6, -1e-9), "train.warmup_frac": st.floats(1.0, 1e3),
                 "train.crop_scale_min": st.floats(-10, 0.0)}


def _ident() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A[a-z_][a-z0-9_]{0,14}\Z")


@st.composite
def unknown_key(draw) -> str:
    if draw(st.booleans()):
        key = draw(_ident().filter(lambda k: k not in LEAVES and k not in SECTIONS))
    else:
        section = draw(st.sampled_from(SECTIONS))
        key = draw(_ident().map(lambda k, s=section: f"{s}.{k}").filter(lambda k: k not in LEAVES))
    return f"{key}={draw(st.sampled_from(['1', 'x', '[1]', '0.5', 'true']))}"


@st.composite
def out_of_range(draw) -> str:
    if draw(st.booleans()):
        section, key, rule = draw(st.sampled_from(NUMERIC_RANGES))
        key = f"{section}.{key}"
        value = draw(_BAD_FOR_RULE[rule])
        if type(LEAVES.get(key)) is float and not isinstance(value, str):
            value = float(value)  # an integer is a fine value of a float key; only its range is wrong
    else:
        key = draw(st.sampled_from(sorted(_OTHER_RANGES)))
        value = draw(_OTHER_RANGES[key])
    if key == "train.milestones":
        value = f"[{value}]"
    return f"{key}={value}"


_NOT_A_NUMBER = st.sampled_from(["abc", "[1, 2]", "{a: 1}", "1x", "--", "0x", "one", "[]", "{}"])


@st.composite
def wrong_type(draw) -> str:
    kind = draw(st.sampled_from(["int", "float", "bool", "choice", "list"]))
    if kind == "int":
        key = draw(st.sampled_from(INT_KEYS))
        value = draw(st.one_of(_NOT_A_NUMBER, st.floats(0.01, 1e6).filter(lambda v: not float(v).is_integer())
                               .map(repr)))
    elif kind == "float":
        key, value = draw(st.sampled_from(FLOAT_KEYS)), draw(_NOT_A_NUMBER)
    elif kind == "bool":
        key = draw(st.sampled_from(BOOL_KEYS))
        value = draw(st.sampled_from(["maybe", "2", "[true]", "{x: 1}", "truee", "-1"]))
    elif kind == "choice":
        key = draw(st.sampled_from(CHOICE_KEYS))
        value = draw(_ident().filter(lambda v: v not in KNOWN_CHOICES))
    else:
        key = draw(st.sampled_from(["data.mean", "data.std", "train.milestones", "al.compare"]))
        value = draw(st.sampled_from(["abc", "{a: 1}", "[a, b, c]", "[[1]]", "[1, 2]"]))
    return f"{key}={value}"


BAD_OVERRIDE = st.one_of(unknown_key(), out_of_range(), wrong_type())


@fuzz(40)
@given(bad=BAD_OVERRIDE, resume=st.booleans())
@example(bad="train.batch_size=0", resume=False)  # issue #16, item 4: silently clamped to 2 per rank
@example(bad="train.batch_size=abc", resume=True)  # the resume form: was a traceback (no validation)
@example(bad="model.colour=red", resume=True)  # the same: a traceback
@example(bad="al.baseline=2", resume=False)  # OmegaConf took any integer as a boolean
@example(bad="data.mean={a: 1}", resume=False)  # a TypeError from OmegaConf's merge
@example(bad="data={a: 1}", resume=True)
def test_bad_config_override(stored_run, bad, resume):
    argv = ([f"run_dir={stored_run}", bad] if resume else ["conf=demo", *SMALL, bad, f"run_dir={stored_run}"])
    err = assert_refused(argv, stored_run)
    assert "holds a run with a different config" not in err, err  # refused for the value itself, naming the key


def test_a_good_resume_override_still_applies(stored_run):
    cfg = raal.run.resolve_config([f"run_dir={stored_run}", "ray.num_cpus=1", "al.baseline=false"])
    assert cfg.ray.num_cpus == 1 and cfg.al.baseline is False and cfg.run_dir == str(stored_run)


# -- manifests --------------------------------------------------------------------------------------------------------
N_ROWS = 30
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    """Real PNGs under one folder; a manifest written there refers to them by relative path."""
    from PIL import Image

    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    for i in range(N_ROWS):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "run").mkdir()
    (root / "run" / "notes.txt").write_text("a run dir that holds no run yet\n")
    return root


def good_manifest() -> dict[str, list]:
    """Rows that load (ids shuffled on purpose: a manifest need not be sorted)."""
    ids = [int(i) for i in np.random.default_rng(1).permutation(N_ROWS) * 3 + 5]
    return {"id": ids, "path": [f"img{k}.png" for k in range(N_ROWS)],
            "label": [CLASSES[k % 3] for k in range(N_ROWS)]}


def manifest_argv(root: Path, name: str = "m.parquet") -> list[str]:
    return ["conf=demo", *SMALL, "data.source=parquet", f"data.root={root / name}", "data.test_size=6",
            "al.initial=2", "al.schedule=[2]", f"run_dir={root / 'run'}"]


def parquet_bytes(cols: dict[str, list], types: dict | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({k: pa.array(v, type=(types or {}).get(k)) for k, v in cols.items()}), buf)
    return buf.getvalue()


def _with(**changes) -> dict[str, list]:
    cols = good_manifest()
    for name, (row, value) in changes.items():
        cols[name][row] = value
    return cols


_BAD_LABELS = [None, float("nan"), -1, 1.5, True, "", "   ", float("inf")]


@st.composite
def broken_manifest(draw) -> bytes:
    """Parquet bytes (or not) of a manifest with one thing wrong."""
    cols = good_manifest()
    n = N_ROWS
    j = draw(st.integers(0, n - 1))
    k = (j + draw(st.integers(1, n - 1))) % n
    fault = draw(st.sampled_from(["dup_id", "null_id", "str_id", "float_id", "label", "image_type",
                                  "int_labels_neg", "no_id", "no_image", "path", "bytes"]))
    types = {"id": pa.int64(), "path": pa.string(), "label": None}
    if fault == "dup_id":
        cols["id"][j] = cols["id"][k]
    elif fault == "null_id":
        cols["id"][j] = None
    elif fault == "str_id":
        cols["id"] = [str(v) if draw(st.booleans()) or r == j else v for r, v in enumerate(cols["id"])]
        cols["id"][j] = draw(st.sampled_from(["a", "", "7", " 7", "1e3"]))
        cols["id"] = [str(v) for v in cols["id"]]
        types["id"] = pa.string()
    elif fault == "float_id":
        cols["id"] = [float(v) for v in cols["id"]]
        cols["id"][j] = draw(st.sampled_from([0.5, float("nan"), float("inf"), 2.0**70, 7.0]))
        types["id"] = pa.float64()
    elif fault == "label":
        cols["label"][j] = draw(st.sampled_from(_BAD_LABELS))
        if not isinstance(cols["label"][j], (str, type(None))):
            cols["label"] = [cols["label"][j] if r == j else CLASSES.index(v) for r, v in enumerate(cols["label"])]
            types["label"] = pa.float64() if isinstance(cols["label"][j], float) else None
            if isinstance(cols["label"][j], bool):
                cols["label"] = [bool(v) for v in cols["label"]]
    elif fault == "int_labels_neg":
        cols["label"] = [CLASSES.index(v) for v in cols["label"]]
        cols["label"][j] = draw(st.integers(-(2**62), -1))
    elif fault == "image_type":  # image bytes stored as text, or paths stored as numbers
        if draw(st.booleans()):
            cols["image"] = cols.pop("path")
        else:
            cols["path"], types["path"] = list(range(n)), None
    elif fault == "no_id":
        cols[draw(st.sampled_from(["ID", "ids", "index"]))] = cols.pop("id")
    elif fault == "no_image":
        cols[draw(st.sampled_from(["file", "paths", "img"]))] = cols.pop("path")
    elif fault == "path":
        cols["path"][j] = draw(st.sampled_from([None, "", "../outside.png", "/etc/passwd", "sub/../../x.png"]))
    else:
        good = parquet_bytes(good_manifest())
        return draw(st.one_of(st.binary(max_size=2000), st.integers(0, len(good) - 1).map(lambda m: good[:m]),
                              st.just(b"id,path,label\n1,img0.png,cat\n"), st.just(b"PAR1" + b"\0" * 64 + b"PAR1"),
                              st.binary(min_size=1, max_size=64).map(lambda b: good[:-40] + b + good[-8:])))
    return parquet_bytes(cols, types)


def test_the_good_manifest_would_run(manifest_dir):
    """The fuzz below breaks one thing in this manifest; unbroken, it passes every check (so the fuzz can fail)."""
    pq.write_table(pa.table(good_manifest()), manifest_dir / "m.parquet")
    with no_run(), contextlib.redirect_stdout(io.StringIO()), pytest.raises(Accepted):
        raal.run.main(manifest_argv(manifest_dir))


@fuzz(60)
@given(data=broken_manifest())
# each of these was loaded (or crashed with a traceback) before issue #16's fuzzing:
@example(data=parquet_bytes(_with(id=(3, None))))  # a null id became a float NaN id
@example(data=parquet_bytes({**good_manifest(), "id": [str(i) for i in good_manifest()["id"]]}))  # string ids
@example(data=parquet_bytes({**good_manifest(), "id": [i + 0.5 for i in good_manifest()["id"]]}))  # 5.5 -> 5
@example(data=parquet_bytes({"id": good_manifest()["id"], "image": good_manifest()["path"]}))  # text as image bytes
@example(data=b"id,path,label\n1,img0.png,cat\n")  # not Parquet: ArrowInvalid traceback
@example(data=b"PAR1" + b"\0" * 64 + b"PAR1")  # OSError: Couldn't deserialize thrift
def test_broken_manifest(manifest_dir, data):
    (manifest_dir / "m.parquet").write_bytes(data)
    assert_refused(manifest_argv(manifest_dir), manifest_dir / "run")


# -- label files ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def waiting(ray_local, tmp_path_factory) -> dict:
    """A real run (files oracle) stopped at round 0, waiting for 10 labels: the smallest one test_labeling makes."""
    from test_labeling import experiment

    run_dir = tmp_path_factory.mktemp("label") / "run"
    exp = experiment(run_dir, "data.pool_size=60", "data.test_size=30", "al.initial=10", "al.schedule=[10]")
    assert exp.run_round(0) == {}
    query = pq.read_table(run_dir / "queries" / "round_0.parquet").to_pydict()
    classes = json.loads((run_dir / "oracle" / "classes.json").read_text())
    return {"run_dir": run_dir, "ids": query["id"], "paths": dict(zip(query["id"], query["path"])),
            "classes": classes, "files": run_dir.parent}


def label_argv(w: dict, name: str) -> list[str]:
    return ["label", f"run_dir={w['run_dir']}", f"file={w['files'] / name}"]


def good_rows(w: dict, n: int) -> list[tuple[int, str, str]]:
    return [(i, w["classes"][k % len(w["classes"])], w["paths"][i]) for k, i in enumerate(w["ids"][:n])]


_HUGE = st.sampled_from([200_000, 1 << 20]).map(lambda n: "x" * n)
_TEXT = st.one_of(st.text(max_size=30), _HUGE, st.just("9" * 5000))


@st.composite
def poison_row(draw, w: dict) -> tuple[object, object, object]:
    """(id, label, path) that no import may accept."""
    i = draw(st.sampled_from(w["ids"]))
    kind = draw(st.sampled_from(["stray_id", "bad_id", "bad_label", "bad_path"]))
    if kind == "stray_id":
        return draw(st.integers(-(2**70), 2**70).filter(lambda v: v not in w["paths"])), w["classes"][0], ""
    if kind == "bad_id":
        bad = draw(st.one_of(_TEXT.filter(lambda t: not t.strip().lstrip("-").isdigit()), st.floats(),
                             st.just("1.0"), st.just(" ")))
        return bad, w["classes"][0], ""
    if kind == "bad_label":
        return i, draw(_TEXT.filter(lambda t: t.strip() and t.strip() not in w["classes"])), ""
    return i, w["classes"][0], draw(st.sampled_from(["/etc/passwd", "../../x.png", w["paths"][w["ids"][-1]]
                                                     if i != w["ids"][-1] else "/etc/hosts"]))


def encode(draw, text: str) -> bytes:
    how = draw(st.sampled_from(["utf-8", "utf-8-sig", "bom-twice", "utf-16", "latin-1-junk", "nul"]))
    if how == "bom-twice":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode()
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "latin-1-junk":
        return text.encode("utf-8") + b"\xff\xfe\xe9"
    if how == "nul":
        return text.encode().replace(b",", b",\x00", 1)
    return text.encode(how)


@st.composite
def bad_csv(draw, w: dict) -> bytes:
    rows = good_rows(w, draw(st.integers(0, 5))) + [draw(poison_row(w))]
    rows = draw(st.permutations(rows))
    header = ["id", "label", "path"]
    if draw(st.integers(0, 4)) == 0:  # a header that lacks a needed column instead of a poison row
        header = draw(st.sampled_from([["ID", "label", "path"], ["id", "class", "path"], ["idx"], []]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return encode(draw, out.getvalue())


def _task(i, label, path="") -> dict:
    return {"data": {"raal_id": i, "image": path}, "annotations": [{"result": [{"value": {"choices": [label]}}]}]}


@st.composite
def bad_json(draw, w: dict) -> bytes:
    tasks = [_task(*r) for r in good_rows(w, draw(st.integers(0, 5)))]
    kind = draw(st.sampled_from(["row", "shape", "nesting", "top", "bigint"]))
    if kind == "row":
        tasks.append(_task(*draw(poison_row(w))))
    elif kind == "shape":  # a task whose structure is not Label Studio's
        i = draw(st.sampled_from(w["ids"]))
        junk = draw(st.sampled_from([5, "abc", {"a": 1}, [1], None, True, 1.5]))
        where = draw(st.sampled_from(["task", "data", "raal_id", "annotations", "annotation", "result", "value",
                                      "choices", "choice", "several"]))
        task = _task(i, w["classes"][0])
        if where == "task":
            task = junk if junk is not None else []
        elif where == "data":
            task["data"] = junk
        elif where == "raal_id":
            task["data"]["raal_id"] = junk if junk != "abc" else None
        elif where == "annotations":
            task["annotations"] = junk if junk not in (None, [1]) else 5
        elif where == "annotation":
            task["annotations"] = [junk]
        elif where == "result":
            task["annotations"][0]["result"] = junk if junk is not None else 5
        elif where == "value":
            task["annotations"][0]["result"] = [{"value": junk if junk is not None else 5}]
        elif where == "choices":
            task["annotations"][0]["result"][0]["value"]["choices"] = junk if junk is not None else 5
        elif where == "choice":
            task["annotations"][0]["result"][0]["value"]["choices"] = [junk if junk is not None else 5]
        else:
            task["annotations"][0]["result"][0]["value"]["choices"] = w["classes"][:2]
        tasks.append(task)
    elif kind == "nesting":
        depth = draw(st.sampled_from([1_000, 100_000]))
        return encode(draw, "[" * depth + "]" * depth if draw(st.booleans()) else '{"a":' * depth + "1" + "}" * depth)
    elif kind == "top":
        return encode(draw, json.dumps(draw(st.sampled_from([{"tasks": tasks}, 5, "x", None, {}]))))
    else:
        task = json.dumps(_task(0, w["classes"][0])).replace('"raal_id": 0', '"raal_id": ' + "9" * draw(
            st.sampled_from([30, 5000])))
        return encode(draw, f"[{task}]")
    return encode(draw, json.dumps(draw(st.permutations(tasks))))


@pytest.mark.ray
def test_a_good_label_file_is_accepted(waiting, tmp_path):
    """The fuzz adds one poison to files like this one; without it, the import goes through (then is undone)."""
    pristine = tmp_path / "pristine"
    shutil.copytree(waiting["run_dir"], pristine)
    for name, body in [("good.csv", "id,label\n" + "".join(f"{i},{c}\n" for i, c, _ in good_rows(waiting, 3))),
                       ("good.json", json.dumps([_task(*r) for r in good_rows(waiting, 3)]))]:
        (waiting["files"] / name).write_text(body)
        code, err = cli(label_argv(waiting, name))
        assert code == 0, err
        assert pq.read_table(waiting["run_dir"] / "oracle" / "labels.parquet").num_rows == 3
        shutil.rmtree(waiting["run_dir"])
        shutil.copytree(pristine, waiting["run_dir"])


#: files that crashed the importer with a traceback before issue #16's fuzzing (ids of the query are filled in)
FOUND = {
    "huge_field.csv": lambda w: f"id,label\n{w['ids'][0]},{'x' * 200_000}\n",  # csv.Error: field larger than limit
    "nul.csv": lambda w: f"id,label\n{w['ids'][0]},c\x00at\n",  # csv.Error: line contains NUL
    "deep.json": lambda w: "[" * 100_000 + "]" * 100_000,  # RecursionError
    "digits.json": lambda w: '[{"data": {"raal_id": ' + "9" * 5000 + "}}]",  # ValueError: int digits limit
    "annotations.json": lambda w: json.dumps([{"data": {"raal_id": w["ids"][0]}, "annotations": 5}]),  # TypeError
    "choices.json": lambda w: json.dumps([{"data": {"raal_id": w["ids"][0]}, "annotations": [
        {"result": [{"value": {"choices": {"a": 1}}}]}]}]),  # KeyError: 0
}


@pytest.mark.ray
@fuzz(150)
@given(data=st.data(), fmt=st.sampled_from(["csv", "json"]))
def test_bad_label_file(waiting, data, fmt):
    body = data.draw(bad_csv(waiting) if fmt == "csv" else bad_json(waiting))
    name = f"labels.{fmt}" if data.draw(st.booleans()) else "labels.txt"
    (waiting["files"] / name).write_bytes(body)
    assert_refused(label_argv(waiting, name), waiting["run_dir"])


@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(FOUND))
def test_label_file_found_by_the_fuzzer(waiting, name):
    (waiting["files"] / name).write_text(FOUND[name](waiting))
    assert_refused(label_argv(waiting, name), waiting["run_dir"])


# -- stored state -----------------------------------------------------------------------------------------------------
STATE_FILES = ["config.yaml", "status.json", "queries/round_0.parquet", "oracle/classes.json",
               "oracle/labels.parquet", "oracle/partial.json"]


@st.composite
def damaged(draw, w: dict) -> tuple[str, bytes]:
    """(stored file, bytes it is replaced with): truncated, garbage, or well-formed with the wrong shape."""
    rel = draw(st.sampled_from(STATE_FILES))
    path = w["run_dir"] / rel
    old = path.read_bytes() if path.exists() else b"[0]\n"
    shapes = {".json": ['{"state": "waiting_for_labels", "round": "0"}', '{"state": "waiting_for_labels"}',
                        '[1, 2]', '"x"', '{"a": 1}', '[null]', '["cat"]', '["cat", "cat"]', '[1.5]', "null"],
              ".yaml": ["- a\n- b\n", "data: 5\n", "al: {initial: abc}\n", "{{{\n", "oracle: {kind: [1]}\n"],
              ".parquet": [parquet_bytes({"id": ["a"], "path": ["x"]}), parquet_bytes({"x": [1]}),
                           parquet_bytes({"id": [1, None], "label": [0, 1]})]}[Path(rel).suffix]
    garbage = st.one_of(st.integers(0, 999).map(lambda k: old[:len(old) * k // 1000]), st.binary(max_size=300),
                        st.sampled_from(shapes).map(lambda v: v if isinstance(v, bytes) else v.encode()))
    return rel, draw(garbage)


@pytest.mark.ray
@fuzz(60)
@given(data=st.data())
def test_damaged_run_dir_refuses_a_good_import(waiting, data):
    """Each stored file the importer reads, damaged: a good label file is then refused, and nothing is written."""
    rel, body = data.draw(damaged(waiting))
    target = waiting["run_dir"] / rel
    saved = target.read_bytes() if target.exists() else None
    (waiting["files"] / "ok.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c, _ in
                                                                   good_rows(waiting, 2)))
    target.write_bytes(body)
    try:
        if rel == "oracle/labels.parquet" and body[:4] == b"PAR1" and body[-4:] == b"PAR1":
            try:  # a truncation that still reads is a shorter, valid ledger: importing into it is fine
                pq.read_table(io.BytesIO(body))
                return
            except Exception:
                pass
        assert_refused(label_argv(waiting, "ok.csv"), waiting["run_dir"])
    finally:
        if saved is None:
            target.unlink()
        else:
            target.write_bytes(saved)


# -- the same contract across a process boundary --------------------------------------------------------------------
@pytest.mark.ray
def test_representative_cases_as_real_processes(waiting, manifest_dir, stored_run):
    (waiting["files"] / "deep.json").write_text(FOUND["deep.json"](waiting))
    (manifest_dir / "m.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    cases = [(label_argv(waiting, "deep.json"), waiting["run_dir"]),
             (manifest_argv(manifest_dir), manifest_dir / "run"),
             ([f"run_dir={stored_run}", "train.batch_size=abc"], stored_run)]
    for argv, run_dir in cases:
        before = snapshot(run_dir)
        proc = subprocess_cli(argv)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("raal"), proc.stderr[-2000:]
        assert snapshot(run_dir) == before
