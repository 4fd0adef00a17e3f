"""Pool sources: stable ids, hidden labels, grey -> RGB, ImageFolder and Parquet manifests, confined paths."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raal.config import DataConfig
from raal.data.sources import animal_mnist_arrays, load_data
from raal.data.transforms import ImageTransform, confine_path
from raal.errors import ConfigError, LabelImportError
from raal.labeling.oracle import SimulatedOracle

pytestmark = pytest.mark.timeout(120)


def test_animal_mnist_is_real_and_split_is_fixed():
    images, labels = animal_mnist_arrays()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    a, b = load_data(DataConfig()), load_data(DataConfig())
    assert len(a.pool) == 8000 and len(a.test) == 2000
    assert np.array_equal(a.pool.ids, b.pool.ids) and np.array_equal(a.test.ids, b.test.ids)
    assert not set(a.pool.ids.tolist()) & set(a.test.ids.tolist())
    assert np.array_equal(a.test.labels, labels[a.test.ids])
    other = load_data(DataConfig(split_seed=1))
    assert not np.array_equal(a.test.ids, other.test.ids)


@pytest.mark.ray
def test_pool_carries_no_labels(ray_local):
    data = load_data(DataConfig(pool_size=300, test_size=100))
    assert data.pool.labels is None and "label" not in data.pool.columns
    ds = data.pool.to_dataset()
    assert "label" not in ds.schema().names
    ids = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=64, batch_format="numpy")])
    assert ids.tolist() == data.pool.ids.tolist()  # stable ids, in order, across reads
    ids2 = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=100, batch_format="numpy")])
    assert np.array_equal(ids, ids2)


def test_oracle_reveals_only_what_was_asked():
    data = load_data(DataConfig(pool_size=200, test_size=100))
    oracle = SimulatedOracle(data.truth)
    assert oracle.asked == frozenset()
    ids = data.pool.ids[:5]
    images, labels = animal_mnist_arrays()
    assert oracle.label(ids).tolist() == labels[ids].tolist()
    assert oracle.asked == frozenset(ids.tolist())
    with pytest.raises(LabelImportError):
        oracle.label(data.test.ids[:1])  # not a pool id: the oracle answers pool queries only
    assert not hasattr(oracle, "truth") and not any("truth" in k for k in vars(oracle) if not k.startswith("_Sim"))


def test_transform_grey_to_rgb_and_normalises():
    t = ImageTransform(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    grey = np.full((2, 28, 28), 255, dtype=np.uint8)
    out = t({"image": grey})
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    assert np.allclose(out, 1.0)
    rgba = [np.zeros((10, 12, 4), dtype=np.uint8), np.zeros((28, 28, 3), dtype=np.uint8)]
    assert np.allclose(t({"image": rgba}), -1.0)


def _png(color, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_source(tmp_path):
    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(6):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(color))
    data = load_data(DataConfig(source="image_folder", root=str(tmp_path), test_size=4, data_roots=[str(tmp_path)]))
    assert data.class_names == ["cat", "dog"] and len(data.pool) == 8 and len(data.test) == 4
    again = load_data(DataConfig(source="image_folder", root=str(tmp_path), test_size=4))
    assert np.array_equal(data.pool.ids, again.pool.ids)
    batch = data.pool.take(np.arange(len(data.pool)))
    x = ImageTransform(size=16, data_roots=(str(tmp_path),))(batch)
    labels = np.array([data.truth[i] for i in batch["id"]])
    red = x[:, 0].mean(axis=(1, 2)) > x[:, 2].mean(axis=(1, 2))
    assert np.array_equal(red, labels == 0)  # red images are the cats


@pytest.mark.ray
def test_parquet_manifest_source(tmp_path, ray_local):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rows = {"id": list(range(100, 130)), "image": [_png(colors[i % 3]) for i in range(30)],
            "label": [["r", "g", "b"][i % 3] for i in range(30)]}
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), path)
    data = load_data(DataConfig(source="parquet", root=str(path), test_size=6))
    assert data.class_names == ["b", "g", "r"] and len(data.pool) == 24
    got = list(data.pool.to_dataset().iter_batches(batch_size=100, batch_format="numpy"))
    ids = np.concatenate([b["id"] for b in got])
    assert sorted(ids.tolist()) == data.pool.ids.tolist()
    x = np.concatenate([ImageTransform(size=8)(b) for b in got])
    assert x.shape == (24, 3, 8, 8)
    with pytest.raises(ConfigError, match="'id' column"):
        pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "bad.parquet")
        load_data(DataConfig(source="parquet", root=str(tmp_path / "bad.parquet")))


def test_paths_outside_data_roots_are_rejected(tmp_path):
    inside = tmp_path / "data" / "a.png"
    inside.parent.mkdir()
    inside.write_bytes(_png((1, 2, 3)))
    assert confine_path(str(inside), [str(tmp_path / "data")]) == str(inside.resolve())
    for bad in (str(tmp_path / "data" / ".." / "secret.png"), "/etc/passwd"):
        with pytest.raises(ValueError, match="outside the configured data roots"):
            confine_path(bad, [str(tmp_path / "data")])


def test_parquet_take_reads_just_the_rows(tmp_path):
    rows = {"id": [30, 10, 20], "image": [_png((i * 80, 0, 0)) for i in range(3)], "label": [0, 1, 0]}
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), path)
    data = load_data(DataConfig(source="parquet", root=str(path), test_size=1, split_seed=3))
    pos = np.arange(len(data.pool))[::-1]
    batch = data.pool.take(pos)
    assert batch["id"].tolist() == data.pool.ids[pos].tolist()
    want = {i: b for i, b in zip(rows["id"], rows["image"])}
    assert [bytes(b) for b in batch["bytes"]] == [want[i] for i in batch["id"]]


def test_pipeline_positions_work_for_any_id_order():
    from raal.pipelines.base import Pipeline

    pipe = Pipeline.__new__(Pipeline)  # positions() needs only the pool ids
    pipe.pool_ids = np.asarray([30, 10, 50, 20, 40], dtype=np.int64)  # a shuffled manifest's order
    pos = pipe.positions(np.asarray([20, 30, 40, 10, 50]))
    assert pos.tolist() == [3, 0, 4, 1, 2]
    assert pipe.pool_ids[pos].tolist() == [20, 30, 40, 10, 50]
    with pytest.raises(ValueError, match="ids not in the pool.*id 25"):
        pipe.positions(np.asarray([10, 25]))
    with pytest.raises(ValueError, match="ids not in the pool"):
        pipe.positions(np.asarray([60]))


def test_shuffled_parquet_manifest_loads_with_sorted_ids(tmp_path):
    order = np.random.default_rng(0).permutation(20)
    ids = (100 + order).tolist()
    rows = {"id": ids, "image": [_png((i * 10, 0, 0)) for i in order], "label": [["a", "b"][i % 2] for i in order]}
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), path)
    data = load_data(DataConfig(source="parquet", root=str(path), test_size=4))
    assert data.pool.ids.tolist() == sorted(data.pool.ids.tolist())
    assert data.test.ids.tolist() == sorted(data.test.ids.tolist())
    want = {i: ["a", "b"][(i - 100) % 2] for i in ids}
    assert all(data.class_names[data.truth[i]] == want[i] for i in data.pool.ids.tolist())
    assert [data.class_names[k] for k in data.test.labels] == [want[i] for i in data.test.ids.tolist()]
    batch = data.pool.take(np.arange(len(data.pool)))
    got = {i: bytes(b) for i, b in zip(batch["id"].tolist(), batch["bytes"])}
    assert all(got[i] == _png(((i - 100) * 10, 0, 0)) for i in data.pool.ids.tolist())


@pytest.mark.parametrize("labels,match", [
    ([0, 1, None, 1], "id 12 is None"),
    ([0.0, 1.0, float("nan"), 1.0], "id 12 is nan"),
    ([0.0, 1.5, 2.0, 1.0], "id 11 is 1.5"),
    ([0, 1, -1, 1], "id 12 is -1"),
    (["cat", None, "dog", "cat"], "id 11 is None"),
    (["cat", "", "dog", "cat"], "id 11 is ''"),
])
def test_bad_manifest_labels_are_refused(tmp_path, labels, match):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12, 13], "image": [_png((0, 0, 0))] * 4, "label": labels}), path)
    with pytest.raises(ConfigError, match=match) as err:
        load_data(DataConfig(source="parquet", root=str(path), test_size=1))
    assert "\n" not in str(err.value)


def test_integral_float_labels_are_class_indices(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12, 13], "image": [_png((0, 0, 0))] * 4,
                             "label": [0.0, 2.0, 1.0, 3.0]}), path)
    data = load_data(DataConfig(source="parquet", root=str(path), test_size=1))
    assert data.class_names == ["0", "1", "2", "3"]
    assert sorted(list(data.truth.values()) + data.test.labels.tolist()) == [0, 1, 2, 3]


def test_test_manifest_label_index_out_of_range(tmp_path):
    pool, test = tmp_path / "p.parquet", tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "image": [_png((0, 0, 0))] * 3, "label": ["a", "b", "a"]}), pool)
    pq.write_table(pa.table({"id": [7, 8], "image": [_png((0, 0, 0))] * 2, "label": [1, 5]}), test)
    with pytest.raises(ConfigError, match="id 8 is 5, outside the 2 classes"):
        load_data(DataConfig(source="parquet", root=str(pool), test_root=str(test)))


def test_corrupt_image_error_names_id_and_path(tmp_path):
    from raal.errors import ImageDecodeError

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(_png((9, 9, 9)))
    bad = tmp_path / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    data = load_data(DataConfig(source="image_folder", root=str(tmp_path), test_size=1, split_seed=1))
    split = data.pool if str(bad) in [str(p) for p in data.pool.columns["path"]] else data.test
    batch = split.take(np.arange(len(split)))
    bad_id = int(batch["id"][[str(p) for p in batch["path"]].index(str(bad))])
    with pytest.raises(ImageDecodeError) as err:
        ImageTransform(size=16, data_roots=(str(tmp_path),))(batch)
    msg = str(err.value)
    assert f"id {bad_id} " in msg and str(bad) in msg and "BytesIO" not in msg and "\n" not in msg


def test_corrupt_image_bytes_error_names_the_id():
    from raal.errors import ImageDecodeError

    batch = {"id": np.asarray([7, 8]), "bytes": np.asarray([_png((1, 2, 3)), b"garbage"], dtype=object)}
    with pytest.raises(ImageDecodeError, match=r"id 8 \(image bytes in the manifest\).*cannot identify"):
        ImageTransform(size=16)(batch)
