"""Pool sources -> an unlabeled pool (a Ray Data dataset with stable ids), a labelled test split, hidden truth.

The pool never carries labels: ground truth (when a source has it) is handed to the simulated oracle alone, so no
other code can peek at labels it did not pay for. Ids are stable across reads: the bundled set and manifests keep
their own ids, an image folder derives each file's id from its relative path (`path_ids`), so adding or removing
a file never renumbers the others, and splits the test set off by a keyed hash of the id, not by position.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raal.config import DataConfig
from raal.errors import ConfigError, EmptyPoolError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ANIMAL_MNIST_CLASSES = ["cat", "dog", "horse", "cow", "deer", "giraffe", "camel", "elephant", "monkey", "bird"]


@dataclass
class ImageSet:
    """A set of images with stable int64 ids. `columns` holds one image column (image | bytes | path).

    For a pool, labels live elsewhere (the oracle). For the test split, `labels` is filled.
    """

    name: str
    ids: np.ndarray
    columns: dict
    class_names: list[str]
    labels: np.ndarray | None = None
    parquet: tuple[str, str] | None = None  # (manifest path, image column) when rows stay on disk
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dataset(self, num_blocks: int | None = None):
        """A Ray Data dataset with columns `id` and one image column, in id order of `self.ids`."""
        import ray.data

        n = len(self)
        if n == 0:
            raise EmptyPoolError(f"{self.name}: no items")
        if self.parquet is not None:
            path, col = self.parquet
            ds = ray.data.read_parquet(path).select_columns(["id", col])
            keep = self.ids
            rename = {"image": "bytes"} if col == "image" else {}
            return ds.map_batches(_KeepIds(keep, rename, os.path.dirname(os.path.realpath(path))),
                                  batch_format="numpy")
        num_blocks = num_blocks or max(1, min(64, n // 512))
        bounds = np.linspace(0, n, num_blocks + 1).astype(int)
        tables = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            cols = {"id": pa.array(self.ids[a:b], type=pa.int64())}
            for key, values in self.columns.items():
                cols[key] = _arrow_column(values[a:b])
            tables.append(pa.table(cols))
        return ray.data.from_arrow(tables)

    def take(self, positions: np.ndarray) -> dict:
        """Rows at `positions` as a numpy batch (for training jobs on small labeled sets)."""
        out = {"id": self.ids[positions]}
        if self.parquet is not None:  # rows live in the manifest: read just these

            path, col = self.parquet
            table = pq.read_table(path, columns=["id", col], filters=pc.field("id").isin(out["id"]))
            got = table.column("id").to_numpy()
            order = np.argsort(got)[np.searchsorted(np.sort(got), out["id"])]
            values = table.column(col).to_pylist()
            if col == "path":  # relative paths count from the manifest's folder
                base = os.path.dirname(os.path.realpath(path))
                values = [os.path.join(base, v) for v in values]
            out["bytes" if col == "image" else "path"] = np.asarray([values[i] for i in order], dtype=object)
            return out
        for key, values in self.columns.items():
            out[key] = values[positions] if isinstance(values, np.ndarray) else [values[i] for i in positions]
        return out


class _KeepIds:
    """Filter a manifest stream to the ids of one split (pool or test)."""

    def __init__(self, ids: np.ndarray, rename: dict | None = None, base: str = ""):
        self.ids = np.sort(np.asarray(ids, dtype=np.int64))
        self.rename = rename or {}
        self.base = base  # relative image paths count from the manifest's folder

    def __call__(self, batch: dict) -> dict:
        ids = np.asarray(batch["id"], dtype=np.int64)
        pos = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        keep = self.ids[pos] == ids
        out = {self.rename.get(k, k): np.asarray(v)[keep] for k, v in batch.items()}
        if "path" in out and self.base:
            out["path"] = np.asarray([os.path.join(self.base, str(p)) for p in out["path"]], dtype=object)
        return out


def _arrow_column(values):
    if isinstance(values, np.ndarray) and values.ndim > 1:
        from ray.data.extensions import ArrowTensorArray

        return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(list(values))
    return pa.array(values)


@dataclass
class Dataset:
    """What a pipeline gets: the unlabeled pool, the labelled test split and the hidden truth for the oracle."""

    pool: ImageSet
    test: ImageSet
    truth: dict[int, int] = field(repr=False, default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.pool.class_names


# ---------------------------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Animal-MNIST ships its arrays as a pickle. Allow only numpy's array reconstruction, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the Animal-MNIST file")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 28×28 grey images and labels of the installed `animal-mnist` package."""
    try:

        spec = importlib.util.find_spec("animal_mnist")
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.source=animal_mnist needs the package: pip install --no-deps animal-mnist==0.4")
    base = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    out = []
    for part in ("data", "label"):
        with gzip.open(base / f"animal_{part}_version_3.gz", "rb") as f:
            out.append(np.asarray(_NumpyOnlyUnpickler(io.BytesIO(f.read())).load()))
    images, labels = out
    images = images.reshape(-1, 28, 28).astype(np.uint8, copy=False)
    return images, labels.reshape(-1).astype(np.int64)


def _split(n: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    test = np.sort(perm[:test_size])
    pool = np.sort(perm[test_size:])
    return pool, test


def _subsample(ids_pos: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k <= 0 or k >= len(ids_pos):
        return ids_pos
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(ids_pos, size=k, replace=False))


def _finish(name: str, ids: np.ndarray, labels: np.ndarray | None, columns_fn, class_names, cfg: DataConfig,
            test_ids=None, test_labels=None, test_columns_fn=None, parquet=None, by_id: bool = False) -> Dataset:
    """Split off the test set (unless given), subsample the pool, hide the pool's labels. `by_id`: choose the split
    and the subsample by a hash of each id (`_rank_by_id`) instead of by position."""
    if test_ids is None:
        if cfg.test_size >= len(ids):
            raise ConfigError(f"data.test_size={cfg.test_size} leaves no pool ({len(ids)} items in {name})")
        if by_id:
            rank = _rank_by_id(ids, cfg.split_seed)
            test_pos, rest = np.sort(rank[:cfg.test_size]), rank[cfg.test_size:]
            pool_pos = np.sort(rest[:cfg.pool_size] if 0 < cfg.pool_size < len(rest) else rest)
        else:
            pool_pos, test_pos = _split(len(ids), cfg.test_size, cfg.split_seed)
            pool_pos = _subsample(pool_pos, cfg.pool_size, cfg.split_seed)
        if labels is None:
            raise ConfigError(f"{name}: the test split needs labels; give data.test_root or a labelled source")
        test = ImageSet("test", ids[test_pos], columns_fn(test_pos), class_names, labels=labels[test_pos],
                        parquet=parquet)
    else:
        pool_pos = (np.sort(_rank_by_id(ids, cfg.split_seed)[:cfg.pool_size]) if by_id and 0 < cfg.pool_size < len(ids)
                    else _subsample(np.arange(len(ids)), cfg.pool_size, cfg.split_seed))
        test = ImageSet("test", test_ids, test_columns_fn(), class_names, labels=test_labels)
    pool = ImageSet("pool", ids[pool_pos], columns_fn(pool_pos), class_names, parquet=parquet)
    truth = {} if labels is None else dict(zip(ids[pool_pos].tolist(), labels[pool_pos].tolist()))
    if len(pool) == 0:
        raise EmptyPoolError(f"{name}: the pool is empty")
    return Dataset(pool=pool, test=test, truth=truth)


def load_animal_mnist(cfg: DataConfig) -> Dataset:
    images, labels = animal_mnist_arrays()
    ids = np.arange(len(images), dtype=np.int64)
    return _finish("animal_mnist", ids, labels, lambda pos: {"image": images[pos]}, list(ANIMAL_MNIST_CLASSES), cfg)


def _scan_folder(root: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(paths, labels, classes, ids) of an ImageFolder tree, in ascending id order (ids from `path_ids`)."""
    rootp = Path(root)
    if not rootp.is_dir():
        raise ConfigError(f"data.root={root!r}: not a folder")
    classes = sorted(d.name for d in rootp.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"data.root={root!r}: no class sub-folders (ImageFolder layout: root/CLASS/IMAGE)")
    paths, labels = [], []
    for ci, c in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(rootp / c):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(str(Path(dirpath) / fn))
                    labels.append(ci)
    ids = path_ids([os.path.relpath(p, rootp) for p in paths], root)
    order = np.argsort(ids, kind="stable")
    return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order], classes, ids[order]


def path_ids(rel_paths: list[str], root: str = "") -> np.ndarray:
    """Stable int64 ids (>= 0) of image files: the first 63 bits of BLAKE2b of the POSIX relative path.

    An id depends on its own path only, so a file added, removed or renamed elsewhere changes no other id. Two
    paths with the same 63-bit hash (odds about n^2 / 2^64: 1e-7 for a million files) are refused by name rather
    than numbered silently: renaming one of them fixes it.
    """
    ids = np.fromiter((int.from_bytes(hashlib.blake2b(p.replace(os.sep, "/").encode("utf-8"), digest_size=8)
                                      .digest(), "big") >> 1 for p in rel_paths), dtype=np.int64, count=len(rel_paths))
    if len(np.unique(ids)) != len(ids):
        order = np.argsort(ids, kind="stable")
        k = int(np.flatnonzero(ids[order][1:] == ids[order][:-1])[0])
        a, b = rel_paths[order[k]], rel_paths[order[k + 1]]
        raise ConfigError(f"data.root={root!r}: the files {a!r} and {b!r} hash to the same id; rename one of them")
    return ids


def _rank_by_id(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random order of items that depends on each item's id alone (splitmix64 of id ^ seed), so
    that adding or removing one item moves no other item between the pool and the test split."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable")


def load_image_folder(cfg: DataConfig) -> Dataset:
    paths, labels, classes, ids = _scan_folder(cfg.root)
    paths_arr = np.asarray(paths, dtype=object)
    if not len(ids):
        raise EmptyPoolError(f"data.root={cfg.root!r}: no images found")
    if cfg.test_root:
        tpaths, tlabels, tclasses, tids = _scan_folder(cfg.test_root)
        if tclasses != classes:
            raise ConfigError(f"data.test_root={cfg.test_root!r}: classes {tclasses} differ from data.root's {classes}")
        tarr = np.asarray(tpaths, dtype=object)
        return _finish("image_folder", ids, labels, lambda pos: {"path": paths_arr[pos]}, classes, cfg,
                       test_ids=tids, test_labels=tlabels, test_columns_fn=lambda: {"path": tarr}, by_id=True)
    return _finish("image_folder", ids, labels, lambda pos: {"path": paths_arr[pos]}, classes, cfg, by_id=True)


def _read_manifest(path: str) -> tuple[pa.Table, str]:
    """The manifest's (id[, label]) columns and the name of its image column, after checking the file is Parquet, the
    ids are unique non-null integers, and the image column has the right type."""
    if not Path(path).is_file():
        raise ConfigError(f"data.root={path!r}: the Parquet manifest does not exist")
    try:
        schema = pq.read_schema(path)
        names = set(schema.names)
        if "id" not in names:
            raise ConfigError(f"{path}: the manifest needs an 'id' column; has {sorted(names)}")
        col = "path" if "path" in names else "image" if "image" in names else None
        if col is None:
            raise ConfigError(f"{path}: the manifest needs a 'path' or 'image' (bytes) column; has {sorted(names)}")
        meta = pq.read_table(path, columns=["id"] + (["label"] if "label" in names else []))
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"{path}: not a readable Parquet manifest ({str(err).splitlines()[0][:200]})") from None
    want = (pa.types.is_string, pa.types.is_large_string) if col == "path" else (
        pa.types.is_binary, pa.types.is_large_binary)
    if not any(ok(schema.field(col).type) for ok in want):
        raise ConfigError(f"{path}: the manifest's {col!r} column holds {schema.field(col).type}; expected "
                          f"{'text (image paths)' if col == 'path' else 'binary (encoded image bytes)'}")
    id_col = meta.column("id")
    if not pa.types.is_integer(id_col.type):
        raise ConfigError(f"{path}: manifest ids are {id_col.type}; ids must be integers")
    if id_col.null_count:
        k = int(np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ConfigError(f"{path}: row {k} of the manifest has no id ({id_col.null_count} rows without one)")
    ids = id_col.to_numpy()
    if ids.dtype == np.uint64 and len(ids) and int(ids.max()) > np.iinfo(np.int64).max:
        raise ConfigError(f"{path}: manifest id {int(ids.max())} is larger than 2**63 - 1")
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{path}: ids in the manifest are not unique")
    return meta, col


def _sorted_by_id(meta: pa.Table) -> pa.Table:
    """The manifest's (id, label) rows in ascending id order (a manifest need not be sorted)."""
    ids = meta.column("id").to_numpy()
    if len(ids) < 2 or bool(np.all(ids[1:] >= ids[:-1])):
        return meta
    return meta.take(pa.array(np.argsort(ids, kind="stable")))


def _labels_from(meta: pa.Table, classes: list[str] | None = None) -> tuple[np.ndarray | None, list[str]]:
    if "label" not in meta.column_names:
        return None, classes or []
    lab = meta.column("label").to_pylist()
    ids = meta.column("id").to_pylist()
    lab = _check_labels(ids, lab)
    if all(isinstance(v, int) for v in lab):
        arr = np.asarray(lab, dtype=np.int64)
        if classes and len(arr) and int(arr.max()) >= len(classes):
            k = int(np.argmax(arr >= len(classes)))
            raise ConfigError(f"manifest label of id {ids[k]} is {lab[k]!r}, outside the {len(classes)} classes "
                              f"0..{len(classes) - 1}")
        k = int(arr.max()) + 1 if len(arr) else 0
        return arr, classes or [str(i) for i in range(k)]
    names = classes or sorted({str(v) for v in lab})
    index = {c: i for i, c in enumerate(names)}
    unknown = {str(v) for v in lab} - set(index)
    if unknown:
        raise ConfigError(f"manifest labels {sorted(unknown)[:5]} are not among the classes {names[:10]}")
    return np.asarray([index[str(v)] for v in lab], dtype=np.int64), names


def _check_labels(ids: list, lab: list) -> list:
    """Manifest labels as ints (class indices >= 0) or strings (class names); anything else is a ConfigError naming
    the id and the value. Floats count as indices only when the whole column is integral (3.0 -> 3)."""

    for i, v in zip(ids, lab):
        bad = (v is None or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v))
               or not isinstance(v, (int, float, str)) or (isinstance(v, str) and not v.strip()))
        if bad:
            raise ConfigError(f"manifest label of id {i} is {v!r}: a label must be a class index >= 0 or a class name")
    if any(isinstance(v, float) for v in lab):
        for i, v in zip(ids, lab):
            if isinstance(v, str) or (isinstance(v, float) and not v.is_integer()):
                raise ConfigError(f"manifest label of id {i} is {v!r}: float labels must all be whole numbers "
                                  "(class indices)")
        lab = [int(v) for v in lab]
    if any(isinstance(v, int) for v in lab) and not all(isinstance(v, int) for v in lab):
        k = next(k for k, v in enumerate(lab) if isinstance(v, str))
        raise ConfigError(f"manifest label of id {ids[k]} is {lab[k]!r}: labels mix class indices and names")
    for i, v in zip(ids, lab):
        if isinstance(v, int) and v < 0:
            raise ConfigError(f"manifest label of id {i} is {v!r}: a class index must be >= 0")
    return lab


def load_parquet(cfg: DataConfig) -> Dataset:
    """A Parquet manifest (id, path | image bytes, optional label). Image rows stay on disk; Ray Data reads them."""
    meta, col = _read_manifest(cfg.root)
    if col == "path":
        _resolve_manifest_paths(cfg.root, meta.column("id").to_numpy(), effective_roots(cfg))
    meta = _sorted_by_id(meta)  # rows may come in any id order; the pool and test split keep ids sorted
    ids = meta.column("id").to_numpy().astype(np.int64)
    labels, classes = _labels_from(meta)
    image_col = "path" if col == "path" else "bytes"
    parquet = (cfg.root, col)

    def cols(pos):  # rows stay in the manifest; only ids travel
        return {}

    if cfg.test_root:
        tmeta, tcol = _read_manifest(cfg.test_root)
        if tcol == "path":
            _resolve_manifest_paths(cfg.test_root, tmeta.column("id").to_numpy(), effective_roots(cfg))
        tmeta = _sorted_by_id(tmeta)
        tlabels, tclasses = _labels_from(tmeta, classes)
        if tlabels is None:
            raise ConfigError(f"data.test_root={cfg.test_root!r}: the test manifest needs a 'label' column")
        classes = classes or tclasses  # an unlabeled pool (people label it) takes its classes from the test set
        data = _finish("parquet", ids, labels, cols, classes, cfg,
                       test_ids=tmeta.column("id").to_numpy().astype(np.int64), test_labels=tlabels,
                       test_columns_fn=lambda: {}, parquet=parquet)
        data.test.parquet = (cfg.test_root, tcol)
    else:
        data = _finish("parquet", ids, labels, cols, classes, cfg, parquet=parquet)
    data.pool.meta["image_column"] = image_col
    return data


def effective_roots(cfg: DataConfig) -> tuple[str, ...]:
    """Folders every image path must lie under: `data.data_roots`, else the image folder or the manifests' folders.

    Paths in manifests and label files are untrusted: `../` or an absolute path outside these is refused.
    """
    if cfg.data_roots:
        return tuple(os.path.realpath(r) for r in cfg.data_roots)
    if cfg.source == "image_folder":
        return tuple(os.path.realpath(r) for r in (cfg.root, cfg.test_root) if r)
    if cfg.source == "parquet":
        return tuple(os.path.dirname(os.path.realpath(r)) for r in (cfg.root, cfg.test_root) if r)
    return ()


def _resolve_manifest_paths(path: str, ids: np.ndarray, roots: tuple[str, ...]) -> None:
    """Refuse a manifest whose image paths leave the data roots (relative paths count from the manifest).

    A lexical check (no filesystem call per row, so a 1.28M-row manifest costs about a second): `..` and absolute
    paths are resolved as text. Symlinks are judged when an image is read (`confine_path` resolves them there).
    """
    base = os.path.dirname(os.path.realpath(path))
    prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)
    try:
        values = pq.read_table(path, columns=["path"]).column("path").to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"{path}: not a readable Parquet manifest ({str(err).splitlines()[0][:200]})") from None
    for i, p in zip(ids.tolist(), values):
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{path}: id {i} has no image path")
        full = os.path.normpath(os.path.join(base, p))
        if roots and not (full + os.sep).startswith(prefixes):
            raise ConfigError(f"{path}: id {i} has path {p!r}, which lies outside the data roots {list(roots)}")


LOADERS = {"animal_mnist": load_animal_mnist, "image_folder": load_image_folder, "parquet": load_parquet}


def load_data(cfg: DataConfig) -> Dataset:
    """Build the pool, the test split and the hidden truth for the configured source."""
    if cfg.source not in LOADERS:
        raise ConfigError(f"data.source={cfg.source!r} is not allowed; allowed: {', '.join(LOADERS)}")
    data = LOADERS[cfg.source](cfg)
    if cfg.num_classes and cfg.num_classes != len(data.class_names):
        raise ConfigError(f"data.num_classes={cfg.num_classes} but the source has {len(data.class_names)} classes")
    return data
