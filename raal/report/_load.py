"""Reading runs for the report: a run directory or any RunStore URI (`file://…`, `s3://…`), through RunStore.

A run holds `config.yaml` and `arms/<arm>/{arm.json, rounds.parquet}`. Problems in a run (missing rounds, no
baseline, unreadable files) become notes, never a crash; only a path that is not a run at all is an error.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from raal import layout, metrics
from raal.errors import RaalError, StoreError
from raal.store import RunStore, _resolve, redact_uri

# column -> (kind, fill for missing/null values), from the one rounds schema
_KINDS = {"int64": "int", "float64": "float", "bool": "bool", "string": "str"}
ROUND_COLUMNS: dict[str, tuple[str, object]] = {
    k: (_KINDS[t], layout.ROUND_MISSING[k]) for k, t in layout.ROUND_TYPES.items()}
OPTIONAL_COLUMNS = layout.ROUND_OPTIONAL  # absent in older runs
REQUIRED_COLUMNS = layout.ROUND_REQUIRED

class NotARunError(RaalError, ValueError):
    """The path given is not an experiment directory (no config.yaml and no arms/)."""


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Arm:
    """One arm of a run: its arm.json, its rounds table (column -> numpy array, sorted by round) and notes."""

    run_label: str
    dir_name: str
    meta: dict
    rounds: dict[str, np.ndarray] | None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the run's config.yaml (seeds of one config are grouped)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.dir_name)

    @property
    def baseline(self) -> bool:
        return bool(self.meta.get("baseline", False))

    @property
    def pipeline(self) -> str:
        return str(self.meta.get("pipeline", "?"))

    @property
    def n_rounds(self) -> int:
        return 0 if self.rounds is None else len(self.rounds["round"])


@dataclass
class Run:
    """An experiment directory: its config, arms, and what is wrong with it."""

    path: str                     # as given (credentials of a URI redacted)
    label: str
    config: dict
    arms: list[Arm]
    notes: list[str] = field(default_factory=list)

    prices: metrics.Prices = field(default_factory=metrics.Prices)
    exclude_random_rounds: bool = True
    threshold: float = 1.0

    @property
    def baseline(self) -> Arm | None:
        base = [a for a in self.arms if a.baseline and a.rounds is not None]
        return base[0] if base else None

    def apply_config(self) -> None:
        """Prices, averaging option and ASVP threshold from config.yaml, with defaults for what is absent."""
        def section(name: str) -> dict:
            sec = self.config.get(name)
            return sec if isinstance(sec, dict) else {}

        try:
            self.prices = metrics.Prices.from_config(section("cost"))
        except ValueError as exc:
            self.notes.append(f"bad cost prices in config.yaml ({exc}); the defaults are used")
        ex = section("metrics").get("exclude_random_rounds")
        self.exclude_random_rounds = True if ex is None else bool(ex)
        try:
            th = section("asvp").get("threshold")
            self.threshold = 1.0 if th is None else float(th)
        except (TypeError, ValueError):
            self.notes.append("asvp.threshold in config.yaml is not a number; 1.0 is shown")


def _read_config(store: RunStore, notes: list[str]) -> dict:
    if not store.exists(layout.CONFIG):
        notes.append("config.yaml is missing: default prices and options are used")
        return {}
    try:

        conf = OmegaConf.create(store.read_text(layout.CONFIG))
        try:
            data = OmegaConf.to_container(conf, resolve=True)
        except Exception:  # noqa: BLE001 - an unresolvable interpolation must not sink the report
            data = OmegaConf.to_container(conf, resolve=False)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"config.yaml could not be read ({type(exc).__name__}: {exc}); defaults are used")
        return {}
    return data if isinstance(data, dict) else {}


def _read_rounds(store: RunStore, rel: str, notes: list[str]) -> dict[str, np.ndarray] | None:
    """rounds.parquet as numpy columns with nulls filled; None (and a note) when absent or unreadable."""
    if not store.exists(rel):
        notes.append("rounds.parquet is missing: no completed round recorded")
        return None

    try:
        table = pq.read_table(io.BytesIO(store.read_bytes(rel)))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"rounds.parquet could not be read ({type(exc).__name__}: {exc})")
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        notes.append(f"rounds.parquet lacks the column(s) {', '.join(missing)}: arm left out")
        return None
    n = table.num_rows
    cols: dict[str, np.ndarray] = {}
    absent = []
    for name, (kind, fill) in ROUND_COLUMNS.items():
        if name not in table.column_names:
            if name not in OPTIONAL_COLUMNS:
                absent.append(name)
            cols[name] = np.full(n, fill, dtype={"int": np.int64, "float": np.float64, "bool": object,
                                                 "str": object}[kind])
            continue
        col = table[name]
        try:
            if kind == "float":
                col = pc.fill_null(col.cast(pa.float64()), np.nan)
                cols[name] = col.to_numpy().astype(np.float64)
            elif kind == "int":
                col = pc.fill_null(col.cast(pa.int64()), int(cast(int, fill)))  # int columns' fill: -1
                cols[name] = col.to_numpy().astype(np.int64)
            elif kind == "bool":
                vals = col.cast(pa.bool_()).to_pylist()
                cols[name] = np.array([fill if v is None else bool(v) for v in vals], dtype=object)
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in col.to_pylist()], dtype=object)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
            notes.append(f"column {name} of rounds.parquet has an unusable type ({exc}); ignored")
            cols[name] = np.full(n, fill, dtype=object if kind in ("bool", "str") else None)
    if absent:
        notes.append(f"rounds.parquet lacks column(s) {', '.join(absent)}; treated as not recorded")
    # random_only: missing -> round 0 only
    ro = cols["random_only"]
    cols["random_only"] = np.array([(r == 0) if v is None else bool(v) for v, r in zip(ro, cols["round"])],
                                   dtype=bool)
    cols["refreshed"] = np.array([bool(v) for v in cols["refreshed"]], dtype=bool)

    rnd = cols["round"]
    order = np.argsort(rnd, kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    rnd = cols["round"]
    # duplicated round numbers (a resumed round written twice): keep the last written
    if rnd.size and np.unique(rnd).size != rnd.size:
        dup = sorted({int(r) for r in rnd[:-1][np.diff(rnd) == 0]})
        notes.append(f"round(s) {_ranges(dup)} recorded more than once; the last record is used")
        last = np.r_[np.diff(rnd) != 0, True]
        cols = {k: v[last] for k, v in cols.items()}
        rnd = cols["round"]
    if rnd.size == 0:
        notes.append("rounds.parquet has no rows: no completed round recorded")
        return None
    expected = np.arange(int(rnd.max()) + 1)
    gaps = np.setdiff1d(expected, rnd)
    if gaps.size:
        notes.append(f"missing round(s) {_ranges(gaps.tolist())} of 0..{int(rnd.max())}: "
                     "the curves are broken there and those rounds count in no average")
    if not np.isfinite(cols["accuracy"]).any():
        notes.append("no round has a test accuracy: nothing to plot for this arm")
    return cols


def _ranges(values: Sequence[int]) -> str:
    """[1,2,3,7] -> '1-3, 7'."""
    out, vals = [], sorted(int(v) for v in values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(out)


def open_run_store(run_dir: str | Path) -> RunStore:
    """The run's store (a path or a pyarrow.fs URI such as file://…), without creating anything."""

    uri = str(run_dir)
    try:
        fs, root = _resolve(uri)
        kind = fs.get_file_info(root).type
    except (OSError, ValueError) as exc:
        raise NotARunError(f"{redact_uri(uri)} cannot be opened ({exc}), so it is not a raal run") from exc
    if kind != pafs.FileType.Directory:
        raise NotARunError(f"{redact_uri(uri)} is not a directory, so it is not a raal run")
    return RunStore(root, _fs=fs)


def _run_name(run_dir: str | Path) -> str:
    uri = str(run_dir)
    if "://" in uri:
        return uri.rstrip("/").rsplit("/", 1)[-1] or uri
    return Path(uri).resolve().name


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read an experiment directory (a path or a RunStore URI); raises NotARunError if it is not one, otherwise
    never fails."""
    store = open_run_store(run_dir)
    single = store.exists(layout.ROUNDS)
    has_arms = layout.ARMS in store.listdir()
    if not store.exists(layout.CONFIG) and not has_arms and not single:
        raise NotARunError(f"{redact_uri(str(run_dir))} is not a raal run: it has neither config.yaml nor arms/")
    notes: list[str] = []
    config = _read_config(store, notes)
    arm_dirs = [layout.arm(d) for d in store.listdir(layout.ARMS) if store.listdir(layout.arm(d))] if has_arms else []
    if not arm_dirs and single:
        arm_dirs = [""]
    run = Run(path=redact_uri(str(run_dir)), label=label or _run_name(run_dir), config=config, arms=[],
              notes=notes)
    run.apply_config()
    for d in arm_dirs:
        arm_notes: list[str] = []
        meta: dict = {}
        rel = f"{d}/" if d else ""
        dir_name = d.rsplit("/", 1)[-1] if d else run.label
        if store.exists(rel + layout.ARM_META):
            try:
                meta = json.loads(store.read_text(rel + layout.ARM_META))
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError, StoreError) as exc:
                arm_notes.append(f"arm.json could not be read ({exc}); the directory name is used")
                meta = {}
        else:
            arm_notes.append("arm.json is missing; the directory name is used and the arm is not a baseline")
        meta.setdefault("name", dir_name)
        rounds = _read_rounds(store, rel + layout.ROUNDS, arm_notes)
        run.arms.append(Arm(run_label=run.label, dir_name=dir_name, meta=meta, rounds=rounds, notes=arm_notes,
                            config=config))
    if not run.arms:
        notes.append("the run has no arms yet (arms/ is missing or empty): nothing to report")
    bases = [a for a in run.arms if a.baseline]
    if not bases:
        notes.append('no random baseline arm (arm.json "baseline": true): sample saving ratios cannot be '
                     "computed for this run")
    elif len(bases) > 1:
        notes.append(f"{len(bases)} baseline arms; the first ({bases[0].name}) is used")
    elif bases[0].rounds is None or not np.isfinite(bases[0].rounds["accuracy"]).any():
        notes.append(f"the random baseline arm {bases[0].name} has no evaluated round: sample saving ratios "
                     "cannot be computed for this run")
    return run
