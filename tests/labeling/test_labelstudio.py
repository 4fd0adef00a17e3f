"""Label Studio's formats (raal.labeling.labelstudio): image references, the three export formats as Label Studio's own
converter writes them (fixtures from tests/fixtures/labelstudio/, made by make_fixtures.py from a JSON export of a
real Label Studio server), the annotation policies, and malformed choices (one line, exit 2, nothing written)."""
import json
import os
import subprocess

import lstudio
import pyarrow as pa
import pytest

from raal import labeling
from raal.config import load_config, to_yaml
from raal.errors import ConfigError, LabelImportError
from raal.labeling import labelstudio as ls
from raal.run import label_main
from raal.store import RunStore

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "labelstudio")
FORMATS = ("export.json", "export_min.json", "export.csv")
CLASSES = ["cat", "dog", "horse"]


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def votes(answers):
    """{raal_id: sorted labels} of the annotations in a parsed export."""
    out = {}
    for a in answers:
        out.setdefault(a.id, []).append(a.label)
    return {k: sorted(v) for k, v in out.items()}


def test_three_export_formats_give_the_same_annotations():
    parsed = {name: ls.parse(fixture(name), name) for name in FORMATS}
    expected = {101: ["cat", "cat"], 102: ["dog", "dog", "horse"], 103: ["cat", "dog"], 104: ["horse"]}
    for name, answers in parsed.items():
        assert votes(answers) == expected, name  # the cancelled annotation and the unannotated task add nothing
        assert all(a.annotation is not None for a in answers), name
        assert all(a.path.startswith("/data/local-files/?d=images/") for a in answers), name
    orders = {name: sorted((a.id, a.annotation[1]) for a in answers) for name, answers in parsed.items()}
    assert orders["export.json"] == orders["export_min.json"] == orders["export.csv"]  # same annotation ids


@pytest.mark.parametrize("name", FORMATS)
def test_annotation_policies(name):
    answers = ls.parse(fixture(name), name)
    got, report = ls.resolve(answers, "majority")
    assert {a.id: a.label for a in got} == {101: "cat", 102: "dog", 104: "horse"}
    assert report == {"ties": [103], "disagreements": [102, 103]}  # the tie is reported, never chosen
    got, report = ls.resolve(answers, "unanimous")
    assert {a.id: a.label for a in got} == {101: "cat", 104: "horse"}
    assert report["disagreements"] == [102, 103]
    got, report = ls.resolve(answers, "first")  # the earliest annotation: 102's first vote, 103's first vote
    assert {a.id: a.label for a in got} == {101: "cat", 102: "dog", 103: "cat", 104: "horse"}
    assert report["disagreements"] == [102, 103]


def test_fixtures_are_the_converters_output(tmp_path):
    """JSON-MIN and CSV fixtures are what Label Studio's converter makes of export.json (regenerated here)."""
    reason = lstudio.skip_reason()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([lstudio.LS_PYTHON, os.path.join(FIXTURES, "make_fixtures.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("export_min.json", "export.csv"):
        assert (tmp_path / name).read_text(encoding="utf-8") == fixture(name), name


def test_image_refs(tmp_path):
    img = tmp_path / "run" / "queries" / "images" / "round_0" / "7 a.png"
    assert ls.image_ref(str(img), 7, mode="path") == str(img)
    ref = ls.image_ref(str(img), 7, mode="local-files", document_root=str(tmp_path))
    assert ref == "/data/local-files/?d=run/queries/images/round_0/7%20a.png" and ls.is_url(ref)
    assert ls.local_files_path(ref, str(tmp_path)) == str(img)
    assert ls.image_ref(str(img), 7, mode="https://cdn.example/x/", document_root=str(tmp_path)) == \
        "https://cdn.example/x/run/queries/images/round_0/7%20a.png"
    assert ls.image_ref(str(img), 7, mode="backend", backend_url="http://127.0.0.1:9090/") == \
        "http://127.0.0.1:9090/image/7"
    with pytest.raises(LabelImportError, match="outside oracle.document_root"):
        ls.image_ref("/etc/passwd", 7, mode="local-files", document_root=str(tmp_path))
    assert not ls.is_url(str(img)) and not ls.is_url("data/local-files/x.png")
    config = ls.labeling_config(["cat", "a \"quoted\" & odd"])
    assert "higher = ask sooner" in config and "value='a \"quoted\" &amp; odd'" in config


@pytest.mark.parametrize("key,value,message", [
    ("oracle.annotations", "newest", "allowed: majority, unanimous, first"),
    ("oracle.image_url", "ftp://x", "an http(s):// prefix"),
    ("oracle.image_url", "local-files", "needs the folder its URLs are relative to"),
])
def test_config_checks(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("demo", [f"{key}={value}"])


def waiting_run(tmp_path, ids=(101, 102, 103, 104, 105), policy="majority"):
    """A run dir as raal leaves it when round 0 waits for labels (no Ray: the store is written directly)."""
    run_dir = tmp_path / "run"
    store = RunStore(str(run_dir))
    cfg = load_config("demo", ["oracle.kind=files", f"oracle.annotations={policy}", f"run_dir={run_dir}"])
    store.write_text("config.yaml", to_yaml(cfg))
    store.write_json("status.json", {"state": "waiting_for_labels", "round": 0, "queried": len(ids)})
    store.write_json(labeling.CLASSES, CLASSES)
    refs = [f"/data/local-files/?d=images/{i}.png" for i in ids]
    store.write_table("queries/round_0.parquet", pa.table({"id": pa.array(list(ids), pa.int64()),
                                                           "path": [f"/nonexistent/{i}.png" for i in ids],
                                                           "image": refs}))
    return run_dir


def listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_imports_by_raal_id(tmp_path, capsys, name):
    run_dir = waiting_run(tmp_path)
    (tmp_path / name).write_text(fixture(name), encoding="utf-8")
    assert label_main([f"run_dir={run_dir}", f"file={tmp_path / name}"]) == 0
    out = capsys.readouterr().out
    assert "3 new labels imported; 3 of 5 queried items labeled, 2 still waiting" in out, out
    assert "annotators tied (oracle.annotations=majority): raal_ids [103]" in out
    assert labeling.Ledger(RunStore(str(run_dir))).load() == {101: 0, 102: 1, 104: 2}
    assert label_main([f"run_dir={run_dir}", f"file={tmp_path / name}"]) == 0  # a re-import adds nothing
    assert "0 new labels imported (3 identical" in capsys.readouterr().out


def malformed_exports() -> dict[str, tuple[str, str]]:
    """Label Studio exports whose `choices` is not one class name, in each format."""
    task = json.loads(fixture("export.json"))[0]

    def full(choices):
        t = json.loads(json.dumps(task))
        t["annotations"][0]["result"][0]["value"]["choices"] = choices
        return json.dumps([t])

    row = json.loads(fixture("export_min.json"))[0]
    lines = fixture("export.csv").splitlines()  # the converter writes several choices as a JSON object
    several = lines[0] + "\n" + lines[1].replace('"cat"', '"{""choices"":[""cat"",""dog""]}"', 1) + "\n"
    return {
        "string.json": (full("cat"), "malformed choices \"cat\""),
        "dict.json": (full({"cat": 1}), "malformed choices {\"cat\": 1}"),
        "number.json": (full([3]), "malformed choices [3]"),
        "several.json": (full(["cat", "dog"]), "several choices ['cat', 'dog']"),
        "min_list.json": (json.dumps([{**row, "label": {"choices": ["cat", "dog"]}}]), "several choices"),
        "min_number.json": (json.dumps([{**row, "label": 7}]), "malformed label 7"),
        "several.csv": (several, "several choices"),
    }


@pytest.mark.parametrize("name", sorted(malformed_exports()))
def test_malformed_choices_one_line_exit_2(tmp_path, capsys, name):
    run_dir = waiting_run(tmp_path)
    text, message = malformed_exports()[name]
    (tmp_path / name).write_text(text, encoding="utf-8")
    before = listing(run_dir)
    assert label_main([f"run_dir={run_dir}", f"file={tmp_path / name}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert listing(run_dir) == before


def test_one_sign_for_every_strategy():
    """The score beside a query is its pick order: 1 - k/n, higher = ask sooner, whatever the strategy."""
    from raal.strategies.base import pick_priority

    assert pick_priority(4).tolist() == [1.0, 0.75, 0.5, 0.25] and pick_priority(0).tolist() == []
    assert "higher = ask sooner" in ls.SCORE_MEANING
