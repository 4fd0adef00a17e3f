"""raal.serve's arguments and the backend's answers from the run store (no Ray, no Label Studio here; the live
path is tests/labeling/test_labelstudio_live.py)."""
import subprocess
import sys

import pyarrow as pa
import pytest

from raal import live, serve
from raal.errors import ConfigError, LabelImportError
from raal.store import RunStore


def test_split_args_and_bad_input():
    run, srv = serve.split_args(["conf=demo", "run_dir=/tmp/x", "ls_url=http://127.0.0.1:8080", "project=3",
                                 "port=9191"])
    assert run == ["conf=demo", "run_dir=/tmp/x"]
    assert srv == {"ls_url": "http://127.0.0.1:8080", "project": "3", "port": "9191"}
    with pytest.raises(ConfigError, match="needs run_dir"):
        serve.split_args(["conf=demo"])
    with pytest.raises(ConfigError, match="port='http'"):
        serve.split_args(["run_dir=x", "port=http"])


def test_studio_connection_from_args_and_env(monkeypatch):
    for k in ("LABEL_STUDIO_URL", "LABEL_STUDIO_PROJECT", *live.TOKEN_ENV):
        monkeypatch.delenv(k, raising=False)
    assert live.studio_from({}) is None  # no Label Studio: serve without pushing
    with pytest.raises(ConfigError, match="project id"):
        live.studio_from({"ls_url": "http://127.0.0.1:8080"})
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY or LABEL_STUDIO_USER_TOKEN"):
        live.studio_from({"ls_url": "http://127.0.0.1:8080", "project": "2"})
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "secret-token")
    client = live.studio_from({"ls_url": "http://127.0.0.1:8080/", "project": "2"})
    assert client.url == "http://127.0.0.1:8080" and client.project == 2
    assert client.http.headers["Authorization"] == "Token secret-token"


@pytest.mark.parametrize("args,message", [
    (["conf=demo"], "needs run_dir"),
    (["conf=demo", "run_dir=RUN", "oracle.kind=simulated"], "use oracle.kind=files"),
    (["conf=demo", "run_dir=RUN", "oracle.kind=files", "ls_url=http://127.0.0.1:1"], "project id"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    args = [a.replace("RUN", str(tmp_path / "run")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "raal.serve", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_predictions_answered_from_the_stored_export(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.write_json("status.json", {"state": "waiting_for_labels", "round": 1})
    store.write_table("queries/round_0.parquet", pa.table({"id": [5, 6], "path": ["/a/5.png", "/a/6.png"],
                                                           "prediction": ["", ""], "score": [1.0, 0.5]}))
    store.write_table("queries/round_1.parquet", pa.table({"id": [7, 8], "path": ["/a/7.png", "/a/8.png"],
                                                           "prediction": ["cat", "dog"], "score": [1.0, 0.5]}))
    run = object.__new__(live.LiveRun)  # the store is all it reads
    run.store = store
    got = run.predictions([{"data": {"raal_id": 8, "raal_round": 1}}, {"data": {"raal_id": 7}},
                           {"data": {"raal_id": 5, "raal_round": 0}}, {"data": {"image": "x.png"}}])
    assert got[0]["score"] == 0.5 and got[0]["result"][0]["value"]["choices"] == ["dog"]
    assert got[1]["model_version"] == "raal-round-1" and got[1]["result"][0]["value"]["choices"] == ["cat"]
    assert got[2]["result"] == [] and got[3]["result"] == []  # round 0 had no model; a foreign task has no answer
    assert run.image_path(6) == "/a/6.png"
    with pytest.raises(LabelImportError, match="never exported"):
        run.image_path(99)  # the backend serves exported items only
