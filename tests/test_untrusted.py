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
    cfg = load_config("demo", ["data.pool_size=200", "data.test_size=100", "al.initial=20", "al.schedule=[20]",
                              f"run_dir={run_dir}"])
    Experiment(cfg)
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert "config.yaml" in os.listdir(tmp_path / "run")
    assert "TOPSECRET" not in stored and "TOK" not in stored and "REDACTED" in stored
