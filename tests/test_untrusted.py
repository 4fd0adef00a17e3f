"""Untrusted input: no pickle in the run store or label import, weights_only checkpoints, image paths confined to
the data roots, and no credentials in the run store or the logs."""
import ast
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raal.config import DataConfig, load_config
from raal.data.sources import _NumpyOnlyUnpickler, effective_roots, load_data
from raal.errors import ConfigError
from raal.store import redact_uri

pytestmark = [pytest.mark.timeout(120)]

PKG = Path(__file__).resolve().parents[1] / "raal"


def calls(name: str):
    """(file, call node) for every call of `name` (an attribute like torch.load, or a bare name) in raal/."""
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                full = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else \
                    getattr(f, "id", "")
                if full == name:
                    yield path.relative_to(PKG.parent), node


def keyword(node: ast.Call, key: str):
    return next((k.value.value for k in node.keywords if k.arg == key and isinstance(k.value, ast.Constant)), None)


def test_every_torch_load_is_weights_only_and_every_np_load_refuses_pickle():
    loads = list(calls("torch.load"))
    assert len(loads) >= 4  # backbone checkpoints, proxies, heads, Ray Train checkpoints
    assert [str(p) for p, n in loads if keyword(n, "weights_only") is not True] == []
    assert [str(p) for p, n in calls("np.load") if keyword(n, "allow_pickle") is not False] == []
    for bad in ("pickle.load", "pickle.loads", "eval", "exec", "yaml.load", "np.fromfile"):
        assert list(calls(bad)) == [], bad


def test_pickle_is_imported_only_by_the_restricted_animal_mnist_reader():
    users = [str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "pickle" in
                    ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert users == ["raal/data/sources.py"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(_NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr))).load(), arr)


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).save(path)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_manifest_paths_outside_the_data_roots_are_refused(tmp_path, bad):
    root = tmp_path / "data"
    for k in range(6):
        _png(root / "img" / f"{k}.png")
    _png(tmp_path / "outside.png")
    paths = [f"img/{k}.png" for k in range(6)]
    pq.write_table(pa.table({"id": np.arange(6), "path": paths, "label": [0, 1] * 3}), root / "m.parquet")
    cfg = DataConfig(source="parquet", root=str(root / "m.parquet"), test_size=2)
    data = load_data(cfg)  # relative paths count from the manifest's folder, which is the default root
    assert effective_roots(cfg) == (os.path.realpath(root),)
    taken = data.pool.take(np.arange(2))["path"]
    assert all(Path(p).is_file() and str(p).startswith(os.path.realpath(root)) for p in taken)
    pq.write_table(pa.table({"id": np.arange(6), "path": paths[:5] + [bad], "label": [0, 1] * 3}),
                   root / "m.parquet")
    with pytest.raises(ConfigError, match=r"id 5 has path .* outside the data roots"):
        load_data(cfg)


def test_credentials_never_reach_the_store_or_the_output(tmp_path, capsys):
    from raal.pipelines.experiment import Experiment

    assert redact_uri("s3://AKIAX:wJalrXUt@bucket/runs/a?region=eu-west-1&secret_key=s3cr3t") == \
        "s3://bucket/runs/a?region=eu-west-1&secret_key=REDACTED"
    assert redact_uri("/plain/local/path") == "/plain/local/path"
    run_dir = f"file://{tmp_path}/run?secret_key=TOPSECRET&session_token=TOK"
    cfg = load_config("demo", ["eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "data.pool_size=200", "data.test_size=100", "al.initial=20", "al.schedule=[20]",
                              f"run_dir={run_dir}"])
    exp = Experiment(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()  # written when the first committed step begins
    exp.commit_config()
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert "config.yaml" in os.listdir(tmp_path / "run")
    assert "TOPSECRET" not in stored and "TOK" not in stored and "REDACTED" in stored


def test_redaction_is_an_allow_list():
    from raal.store import uri_credentials

    got = redact_uri("s3://bucket/run?aws_secret=XYZ&region=us-east-1&endpoint_override=minio:9000&Signature=S"
                     "&x-amz-credential=C&anonymous=false")
    assert "XYZ" not in got and "=S&" not in got and "=C" not in got
    assert "aws_secret=REDACTED" in got and "region=us-east-1" in got and "endpoint_override=minio%3A9000" in got
    assert "anonymous=false" in got
    assert redact_uri("gs://tok@bucket/run") == "gs://bucket/run"
    assert uri_credentials("s3://K:S@bucket/x?region=eu&aws_secret=1") == ["userinfo", "aws_secret"]
    assert uri_credentials("s3://bucket/x?region=eu&scheme=https") == []
    assert uri_credentials("/local/path?aws_secret=1") == []


SUBMIT = Path(__file__).resolve().parents[1] / "jobs" / "submit.sh"


def _submit(tmp_path, run_dir):
    import subprocess

    fake = tmp_path / "fake_ray"
    fake.write_text(f"#!/bin/sh\necho called > {tmp_path / 'ray_called'}\n")
    fake.chmod(0o755)
    env = {**os.environ, "RAY": str(fake)}
    return subprocess.run(["bash", str(SUBMIT), "--no-wait", "--", "conf=demo", f"run_dir={run_dir}"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("run_dir, what", [
    ("s3://AKIAX:wJalr@bucket/runs/a", "user:secret@"),
    ("s3://bucket/runs/a?region=eu-west-1&aws_secret=TOPSECRET", "'aws_secret'"),
    ("gs://bucket/runs/a?Access_Key=K", "'Access_Key'"),
])
def test_submit_refuses_a_run_dir_with_credentials(tmp_path, run_dir, what):
    proc = _submit(tmp_path, run_dir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and "credential chain" in lines[0], proc.stderr
    assert "TOPSECRET" not in proc.stderr + proc.stdout and "wJalr" not in proc.stderr + proc.stdout
    assert not (tmp_path / "ray_called").exists()


def test_submit_accepts_allow_listed_query_keys(tmp_path):
    proc = _submit(tmp_path, "s3://bucket/runs/a?region=eu-west-1&endpoint_override=minio:9000")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ray_called").exists()


def test_submit_allow_list_matches_the_store():
    import re

    from raal.store import SAFE_QUERY_KEYS

    m = re.search(r'^SAFE_QUERY_KEYS="([^"]*)"', SUBMIT.read_text(), re.M)
    assert m and set(m.group(1).split()) == set(SAFE_QUERY_KEYS)
