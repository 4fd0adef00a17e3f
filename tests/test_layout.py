"""The run-store layout has one home (raal/layout.py): no other module spells a store path, and the README's
run-directory table is the one layout.py generates."""
from __future__ import annotations

import ast
from pathlib import Path

from raal import layout

ROOT = Path(__file__).resolve().parent.parent
#: RunStore / Path calls whose string argument is a store path
STORE_CALLS = {"child", "listdir", "exists", "delete", "path", "local_path", "local_copy", "read_bytes", "read_text",
               "read_json", "read_table", "write_bytes", "write_text", "write_json", "write_table", "Path"}


def layout_names() -> tuple[set[str], set[str]]:
    """(every name layout.py defines: files and paths, top-level folder names)."""
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    names |= {layout.results(e) for e in ("parquet", "csv", "md")} | {layout.best(e) for e in ("json", "yaml")}
    dirs = {n for n in names if "." not in n and "/" not in n} - {layout.RESULTS, layout.BEST}
    return names, dirs


def _text(node: ast.AST) -> str | None:
    """A string literal, or an f-string with its fields as {}; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and _text(body[0].value) is not None:
            out.add(id(body[0].value))
    return out


def store_literals(source: str) -> list[tuple[int, str]]:
    """(line, literal) of every store path spelt out in `source`."""
    names, dirs = layout_names()
    tree = ast.parse(source)
    skip = _docstrings(tree) | {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []

    def is_path(text: str | None, bare_dir_ok: bool) -> bool:
        if text is None or any(c.isspace() for c in text) or not text:
            return False
        if text in names and ("." in text or "/" in text or bare_dir_ok):
            return True
        parts = text.split("/")
        return len(parts) > 1 and (parts[0] in dirs or parts[-1] in names - dirs)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            if is_path(_text(node), False):
                found.append((node.lineno, _text(node)))
        elif isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if fn in STORE_CALLS:
                found += [(a.lineno, _text(a)) for a in node.args if _text(a) in dirs]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [(a.lineno, _text(a)) for a in (node.left, node.right) if _text(a) in dirs]
    return sorted(set(found), key=lambda f: (f[0], f[1]))


def scan(package: Path) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "layout.py" and path.parent == package:
            continue
        out += [f"{path.relative_to(package.parent)}:{line}: {text!r}"
                for line, text in store_literals(path.read_text(encoding="utf-8"))]
    return out


def test_no_store_path_outside_layout():
    found = scan(ROOT / "raal")
    assert not found, "store paths spelt outside raal/layout.py (name them there):\n" + "\n".join(found)


def test_scan_catches_each_spelling():
    src = '''
def f(store, r, local, rel):
    """Docstrings may name config.yaml and arms/<arm>/rounds.parquet."""
    store.read_json("status.json")
    store.write_table(f"queries/round_{r}.parquet", None)
    store.child("arms", "x")
    store.child("ray_train")
    x = local / "mlruns"
    y = rel + "arm.json"
    raise ValueError("config.yaml is missing")  # prose, not a path
'''
    assert [t for _, t in store_literals(src)] == ["status.json", "queries/round_{}.parquet", "arms", "ray_train",
                                                   "mlruns", "arm.json"]


def test_selection_and_export_have_different_names():
    assert layout.selection(3) != layout.export(3, "parquet")
    assert layout.old_selection(3) == "queries/round_3.parquet"  # the fallback a resumed old run needs


def test_rounds_schema_is_whole():
    assert set(layout.ROUND_DEFAULTS) == set(layout.ROUND_TYPES) - {"round", "n_labeled", "n_new"}
    assert set(layout.ROUND_MISSING) == set(layout.ROUND_TYPES)
    assert set(layout.PHASES) <= set(layout.ROUND_TYPES)
    assert set(layout.ROUND_OPTIONAL) | set(layout.ROUND_REQUIRED) <= set(layout.ROUND_TYPES)
    assert layout.round_schema().names == list(layout.ROUND_TYPES)


def test_readme_table_is_layouts():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert layout.readme_table() in readme, ("README's run directory table differs from raal/layout.py; replace it "
                                             "with the output of `python -m raal.layout`")


def test_old_run_selection_is_read(tmp_path):
    """A run written before the rename keeps its selections under queries/; a resumed round reuses them."""
    import pyarrow as pa

    from raal.pipelines.state import QUERY_SCHEMA, ArmState
    from raal.store import RunStore

    store = RunStore(tmp_path)
    store.write_table(layout.old_selection(0), pa.table({"id": [5, 7], "score": [1.0, 0.5], "prediction": [1, 0]},
                                                        schema=QUERY_SCHEMA))
    st = ArmState.open(store)
    assert st.saved_query(0).tolist() == [5, 7]
    st.add_labels(0, [5, 7], [1, 0], "test")  # labels answer the old-named query
    st.save_query(1, [9])
    assert store.exists(layout.selection(1)) and not store.exists(layout.old_selection(1))
