"""`data.skip_undecodable=true`: find the images of the pool and the test split that cannot be decoded, list them,
and leave them out, instead of stopping the run at the first one (the default, naming its id and path).

Every image is decoded once, the way the embedding decodes it, in chunks on a few threads of the process that
builds the experiment (the driver actor). The list goes to `<run_dir>/data/undecodable.json` with the first
committed step; a resumed run reads it back instead of decoding again, so its pool stays the one it started with.
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from raal import layout
from raal.data.sources import Dataset, ImageSet
from raal.data.transforms import decode_images
from raal.errors import EmptyPoolError, ImageDecodeError

log = logging.getLogger(__name__)
LIST = layout.UNDECODABLE
CHUNK = 256


def find_undecodable(images: ImageSet, roots: tuple[str, ...], threads: int = 4) -> list[dict]:
    """[{id, split, error}] for every image of `images` that fails to decode (in-memory arrays never do)."""

    if "image" in images.columns or len(images) == 0:
        return []

    def one(pos: np.ndarray) -> list[dict]:
        batch = images.take(pos)
        col = "path" if "path" in batch else "bytes"
        bad = []
        for k in range(len(pos)):
            try:
                decode_images({"id": batch["id"][k:k + 1], col: batch[col][k:k + 1]}, roots)
            except ImageDecodeError as err:
                bad.append({"id": int(batch["id"][k]), "split": images.name, "error": str(err)})
        return bad

    chunks = [np.arange(a, min(a + CHUNK, len(images))) for a in range(0, len(images), CHUNK)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [b for part in pool.map(one, chunks) for b in part]


def without(images: ImageSet, drop: set[int]) -> ImageSet:
    keep = ~np.isin(images.ids, np.fromiter(drop, dtype=np.int64, count=len(drop)))
    columns = {k: (v[keep] if isinstance(v, np.ndarray) else [x for x, m in zip(v, keep) if m])
               for k, v in images.columns.items()}
    labels = None if images.labels is None else images.labels[keep]
    return dataclasses.replace(images, ids=images.ids[keep], columns=columns, labels=labels)


def skip_undecodable(data: Dataset, roots: tuple[str, ...], known: list[dict] | None = None
                     ) -> tuple[Dataset, list[dict]]:
    """`data` without its undecodable images, and their list (`known`: a list stored by an earlier start)."""
    bad = known if known is not None else find_undecodable(data.pool, roots) + find_undecodable(data.test, roots)
    for b in bad:
        log.warning("skipping undecodable image (data.skip_undecodable=true): %s", b["error"])
    if not bad:
        return data, bad
    drop = {b["id"] for b in bad if b["split"] == "pool"}
    pool = without(data.pool, drop)
    test = without(data.test, {b["id"] for b in bad if b["split"] == "test"})
    if len(pool) == 0:
        raise EmptyPoolError("every pool image is undecodable")
    truth = {i: c for i, c in data.truth.items() if i not in drop}
    return Dataset(pool=pool, test=test, truth=truth), bad
