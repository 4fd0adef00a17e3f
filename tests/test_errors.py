"""The error contract (issue #16): bad input is one line on stderr and exit 2 with nothing written, also when it is
found inside a Ray actor or worker; any other error is one line, exit 1, and the path of a full log; a dead CLI
leaves no process of its run behind; image-folder ids do not move when files come and go."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raal.config import DataConfig
from raal.data.sources import load_data
from raal.errors import ConfigError

pytestmark = [pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "al.pipeline=svpp", "al.compare=[]",
        "report=false"]


def run_cli(args, timeout=600, env=None):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING", **(env or {}))
    return subprocess.run([sys.executable, "-m", "raal.run", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def error_line(proc) -> str:
    """Once Ray runs, its own progress and log lines share stderr: raal's error must still be exactly one line, the
    last, and no traceback may reach the user."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len([ln for ln in lines if ln.startswith("raal")]) == 1, proc.stderr
    assert lines[-1].startswith("raal"), proc.stderr[-3000:]
    return lines[-1]


def make_folder(root: Path, classes=("cat", "dog"), per_class=14, corrupt: str | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            arr[..., ci % 3] += 150  # one colour per class
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    return root


def folder_args(root: Path) -> list[str]:
    return ["conf=demo", *TINY, "data.source=image_folder", f"data.root={root}", "data.test_size=8",
            "data.image_size=16", "al.initial=4", "al.schedule=[4]", "embed.batch_size=8", "proxy.epochs=5"]


# -- validation at the door: each one line, exit 2, nothing written (not even the run dir) -----------------------------
def _bad_weights(tmp: Path) -> str:
    import torch

    torch.save({"features.0.weight": torch.zeros(3), "not_a_layer.bias": torch.zeros(2)}, tmp / "w.pt")
    return f"model.weights={tmp / 'w.pt'}"


CASES = {  # name: (extra args given tmp, expected text in the line)
    "unknown arch": (lambda t: ["model.arch=nosuchnet"], "model.arch='nosuchnet'"),
    "weights keys": (lambda t: [_bad_weights(t)], "does not match mobilenet_v2"),
    "one class": (lambda t: folder_args(make_folder(t / "data", classes=("cat",)))[1:], "at least 2"),
    "initial 0": (lambda t: ["al.initial=0"], "al.initial=0"),
    "no test split": (lambda t: ["data.test_size=0"], "data.test_size=0"),
    "corrupt image in the sample": (lambda t: folder_args(make_folder(t / "data", corrupt="dog/009.png"))[1:]
                                    + ["data.check_images=64"], "dog/009.png"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_at_the_door(tmp_path, case):
    extra, expect = CASES[case]
    run_dir = tmp_path / "run"
    proc = run_cli(["conf=demo", *TINY, *extra(tmp_path), f"run_dir={run_dir}"], timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc)
    assert line.startswith("raal: error: ") and expect in line, line
    assert not run_dir.exists()  # a failed preflight leaves no run dir behind


def test_run_dir_alone_needs_a_run_to_resume(tmp_path):
    proc = run_cli([f"run_dir={tmp_path / 'nothing'}"], timeout=120)
    assert proc.returncode == 2 and "nothing to resume" in one_line(proc)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    proc = run_cli([f"run_dir={tmp_path / 'empty'}"], timeout=120)
    assert proc.returncode == 2 and "holds no run" in one_line(proc)
    assert os.listdir(tmp_path / "empty") == []


# -- errors that come back through Ray --------------------------------------------------------------------------------
@pytest.mark.ray
def test_raal_errors_are_unwrapped_from_actors_tasks_and_train_workers(ray_local, capsys):
    import ray
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raal.cli_errors import report, root_cause
    from raal.errors import ImageDecodeError

    @ray.remote
    def decode():
        raise ImageDecodeError("cannot read the image of id 7 (/data/x.png): broken")

    @ray.remote
    class Outer:
        def go(self):
            return ray.get(decode.remote())

    @ray.remote
    class BadInit:
        def __init__(self):
            raise ConfigError("model.arch='nosuchnet' is not a torchvision classification model")

        def ping(self):
            return 1

    with pytest.raises(Exception) as nested:
        ray.get(Outer.remote().go.remote())  # task inside an actor: two RayTaskError layers
    with pytest.raises(Exception) as died:
        ray.get(BadInit.remote().ping.remote())  # constructor raised: ActorDiedError, the cause only as text
    workers = WorkerGroupError("Training failed", {1: ConfigError("train.lr=-1 is not allowed")})
    for err, cls, msg in ((nested.value, ImageDecodeError, "cannot read the image of id 7 (/data/x.png): broken"),
                          (died.value, ConfigError, "model.arch='nosuchnet' is not a torchvision"),
                          (workers, ConfigError, "train.lr=-1 is not allowed")):
        assert len(str(err).splitlines()) > 1 or err is workers  # what used to reach the user
        cause = root_cause(err)
        assert type(cause) is cls and str(cause).startswith(msg), (type(cause), str(cause))
        assert report(err, None) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and line == f"raal: error: {cause}"


@pytest.mark.ray
def test_errors_inside_the_run_then_skip_and_resume(tmp_path):
    """A corrupt image met by the embedding actors (past the decode sample) is one line, exit 2, and the run dir is
    left as found; the same run dir then takes another config (skip_undecodable); an internal error in the driver
    actor is one line + a log, exit 1; the run then resumes from the stored config to the end."""
    data = make_folder(tmp_path / "data", corrupt="dog/009.png")
    bad_path = str(data / "dog" / "009.png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # an existing, empty run dir must stay empty
    args = folder_args(data) + [f"run_dir={run_dir}"]
    proc = run_cli(args + ["data.check_images=0"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert line.startswith("raal: error: cannot read the image of id ") and bad_path in line, line
    assert os.listdir(run_dir) == []

    marker = tmp_path / "fired"
    proc = run_cli(args + ["data.skip_undecodable=true"], env={"RAAL_FAULT": f"select:raise:{marker}"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc)
    assert line.startswith("raal: internal error: InjectedFault: fault injected at select") and marker.exists()
    log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert log.parent == run_dir / "logs" and "Traceback" in log.read_text() and "InjectedFault" in log.read_text()

    proc = run_cli([f"run_dir={run_dir}"])  # resume with the stored config
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stdout and "skipped (data.skip_undecodable=true): cannot read the image of id" in \
        proc.stdout
    import json

    listed = json.loads((run_dir / "data" / "undecodable.json").read_text())
    assert len(listed) == 1 and bad_path in listed[0]["error"]
    from raal.data.sources import path_ids

    assert listed[0]["id"] == int(path_ids(["dog/009.png"])[0])


# -- image-folder ids -----------------------------------------------------------------------------------------------
def test_image_folder_ids_do_not_move_when_files_come_and_go(tmp_path):
    root = make_folder(tmp_path / "data", per_class=30)
    cfg = DataConfig(source="image_folder", root=str(root), test_size=10)

    def ids_by_path(d):
        out = {}
        for split in (d.pool, d.test):
            batch = split.take(np.arange(len(split)))
            out.update({os.path.relpath(p, root): (int(i), split.name) for i, p in zip(batch["id"], batch["path"])})
        return out

    before = ids_by_path(load_data(cfg))
    removed = next(p for p, (_, s) in before.items() if s == "pool")
    (root / removed).unlink()
    make_folder(tmp_path / "extra", per_class=1)
    os.replace(tmp_path / "extra" / "cat" / "000.png", root / "cat" / "zzz_new.png")
    after = ids_by_path(load_data(cfg))
    assert set(after) == set(before) - {removed} | {"cat/zzz_new.png"}
    moved = [p for p in after if p in before and after[p][0] != before[p][0]]
    assert moved == []  # no id changed
    # removing a pool file moves nothing between the splits; the new file may push at most one test item out
    switched = [p for p in after if p in before and after[p][1] != before[p][1]]
    assert len(switched) <= 1, switched


def test_image_folder_id_collisions_are_refused_by_name(monkeypatch):
    import hashlib

    from raal.data import sources

    class Same:
        def __init__(self, *a, **k):
            pass

        def digest(self):
            return b"\x00" * 7 + b"\x01"

    monkeypatch.setattr(sources, "hashlib", type("H", (), {"blake2b": Same}))
    with pytest.raises(ConfigError, match=r"'cat/a.png' and 'dog/b.png' hash to the same id"):
        sources.path_ids(["cat/a.png", "dog/b.png"], "root")
    monkeypatch.setattr(sources, "hashlib", hashlib)
    assert len(set(sources.path_ids(["cat/a.png", "dog/b.png"]).tolist())) == 2


# -- `raal.run label` with a bad file: exit 2 every time (issue #16 item 7 saw SIGABRT, 134, 1-3 times in 20) -----------
def test_label_import_of_a_bad_file_exits_2_every_time(tmp_path):
    import pyarrow as pa

    from raal import labeling
    from raal.config import load_config, to_yaml
    from raal.store import RunStore

    store = RunStore(str(tmp_path / "run"))
    store.write_text("config.yaml", to_yaml(load_config("demo", ["oracle.kind=files"])))
    store.write_json("status.json", {"state": "waiting_for_labels", "round": 0, "queried": 2})
    store.write_table("queries/round_0.parquet", pa.table({"id": [1, 2], "path": ["a.png", "b.png"]}))
    store.write_json(labeling.CLASSES, ["cat", "dog"])
    store.write_table(labeling.LEDGER, pa.table({"id": [5], "label": [0], "round": [0], "file": ["a.csv"],
                                                 "sha256": ["x"]}, schema=labeling.LEDGER_SCHEMA))
    bad = tmp_path / "bad.json"
    bad.write_text("[" * 100_000 + "]" * 100_000)  # nesting deeper than the JSON parser's recursion limit
    codes, lines = [], set()
    for _ in range(20):
        proc = subprocess.run([sys.executable, "-m", "raal.run", "label", f"run_dir={store.root}", f"file={bad}"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        codes.append(proc.returncode)
        lines.add(proc.stderr.strip())
    assert codes == [2] * 20, codes
    assert lines == {"raal label: error: bad.json: not valid JSON (nested too deeply)"}


# -- kill the CLI, stop the run -------------------------------------------------------------------------------------
@pytest.mark.ray
def test_killing_the_cli_stops_its_ray_and_the_run_resumes(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import kill_cli

    res = kill_cli.kill_the_cli(tmp_path / "run", timeout=600)
    assert res["processes_before"] >= 3, res  # the raylet, the GCS, the driver actor, embedding workers, ...
    assert res["survivors"] == 0, res  # none of them is alive 30 s after the CLI died
    assert res["resume_rc"] == 0 and res["resumed"], res["resume_stderr"]


# -- one root ---------------------------------------------------------------------------------------------------------
def test_every_raal_exception_derives_from_raal_error_and_keeps_its_exit_code(tmp_path, capsys):
    """`except RaalError` catches all of raal's own failures; the root changes no exit code (USER_ERRORS decides)."""
    import ast
    import importlib

    from raal.cli_errors import USER_ERRORS, report
    from raal.errors import RaalError

    found = []
    for path in sorted((ROOT / "raal").rglob("*.py")):  # the modules that define an exception class, not all of raal
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)
                 and any(isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception", "Fault")) for b in n.bases)]
        if names:
            mod = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n), type)
                      and issubclass(getattr(mod, n), BaseException)]
    assert len(found) >= 10, found
    assert all(issubclass(c, RaalError) for c in found), [c for c in found if not issubclass(c, RaalError)]
    assert not issubclass(RaalError, USER_ERRORS)
    from raal.faults import InjectedFault
    from raal.labeling.oracle import WaitingForLabels
    from raal.store import RunDirInUse

    for err, code in ((ConfigError("x"), 2), (RunDirInUse("x"), 2), (InjectedFault("x"), 1), (RaalError("x"), 1),
                      (WaitingForLabels("a", 1, [3]), 1)):
        assert report(err, str(tmp_path)) == code, err
    capsys.readouterr()
