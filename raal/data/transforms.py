"""Turn a batch of raw pool rows into model input, inside the Ray Data pipeline (never on the driver).

A batch carries exactly one of three image columns: `image` (uint8 arrays, H×W or H×W×C), `bytes` (encoded
PNG/JPEG) or `path` (a file under one of the configured data roots). Grey images become 3-channel by repeating the
channel; everything is resized to `size`×`size` and normalised with the configured mean/std (ImageNet by default).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raal.config import IMAGENET_MEAN, IMAGENET_STD
from raal.errors import ConfigError, ImageDecodeError

IMAGE_COLUMNS = ("image", "bytes", "path")


@dataclass(frozen=True)
class ImageTransform:
    """Resize + normalise; picklable so it can travel to Ray actors."""

    size: int = 64
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)
    data_roots: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, batch: dict) -> np.ndarray:
        """Rows of a batch -> float32 array N×3×size×size."""
        import torch
        import torch.nn.functional as F

        images = decode_images(batch, self.data_roots)
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        for idx in groups.values():  # same-shape images resize together
            arr = np.stack([images[i] for i in idx])  # n×H×W×3 uint8
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)
            out[idx] = ((x - mean) / std).numpy()
        return out


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3])
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    raise ValueError(f"image array has shape {arr.shape}; expected H×W or H×W×{{1,3,4}}")


def _decode_encoded(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _id_at(ids, k: int):
    return None if ids is None else ids[k]


def _decode_named(read, item_id, where: str) -> np.ndarray:
    """Read and decode one encoded image; any failure becomes an ImageDecodeError naming the id and the path."""

    try:
        return _decode_encoded(read())
    except Exception as err:
        what = f"id {int(item_id)}" if item_id is not None else "an item without id"
        reason = str(err).split(" <_io.BytesIO", 1)[0].strip() or type(err).__name__
        raise ImageDecodeError(f"cannot read the image of {what} ({where}): {type(err).__name__}: {reason}") from None


def confine_path(path: str, roots: tuple[str, ...] | list[str]) -> str:
    """Resolve `path` and refuse it unless it lies under one of `roots` (untrusted manifests, issue 9)."""
    if not roots:
        return path
    real = os.path.realpath(path)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            return real

    raise ConfigError(f"path {path!r} lies outside the configured data roots {list(roots)}")


def decode_images(batch: dict, data_roots: tuple[str, ...] = ()) -> list[np.ndarray]:
    """The images of a batch as a list of H×W×3 uint8 arrays, whatever column they came in."""
    if "image" in batch:
        col = batch["image"]
        if isinstance(col, np.ndarray) and col.dtype == np.uint8:
            if col.ndim == 3:  # N×H×W grey
                rgb = np.repeat(col[:, :, :, None], 3, axis=3)
                return list(rgb)
            if col.ndim == 4:
                return [_as_rgb(a) for a in col]
        return [_as_rgb(np.asarray(a)) for a in col]
    ids = batch.get("id")
    if "bytes" in batch:
        return [_decode_named(lambda b=b: bytes(b), _id_at(ids, k), "image bytes in the manifest")
                for k, b in enumerate(batch["bytes"])]
    if "path" in batch:
        out = []
        for k, p in enumerate(batch["path"]):
            p = confine_path(str(p), data_roots)
            out.append(_decode_named(lambda p=p: Path(p).read_bytes(), _id_at(ids, k), p))
        return out
    raise ValueError(f"a pool batch needs one of the columns {IMAGE_COLUMNS}; got {sorted(batch)}")
