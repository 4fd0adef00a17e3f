"""What every part of the faiss layer shares: the device (GPU when faiss sees one), numpy's BLAS threads, and
reading a big input in bounded row chunks (optionally through a row subset, optionally L2-normalised)."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import logging
import os
from collections.abc import Iterator

import faiss
import numpy as np

log = logging.getLogger("raal.index")  # the name users see in raal.log, as before the package

CHUNK_BYTES = 64 << 20  # float32 bytes per query or base chunk


# -- devices ---------------------------------------------------------------------------------------------------------
@functools.cache
def gpu_count() -> int:
    """Number of GPUs faiss can use; logs once when the searches will run on the CPU."""
    n = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if n == 0:
        log.info("faiss sees no GPU: raal's distance searches run on the CPU")
    return n


@functools.cache
def _gpu_resources():
    return faiss.StandardGpuResources()


def _use_gpu(use_gpu: bool | None) -> bool:
    return gpu_count() > 0 if use_gpu is None else bool(use_gpu)


@functools.cache
def _openblas_local_threads():
    """numpy's OpenBLAS `openblas_set_num_threads_local` (per calling thread), or None when unavailable."""
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Run numpy's BLAS on `n` threads in this thread only (a no-op where numpy's BLAS is not OpenBLAS).

    Yields the previous setting (None when there is no OpenBLAS), so a nested block can restore it for one big
    product.

    Long loops of thin products (a block of rows against a few centres) are faster on one thread: a threaded
    GEMV spends most of its time waiting for its second thread, and far more so on a shared, loaded machine.
    """
    fn = _openblas_local_threads()
    if fn is None:
        yield None
        return
    prev = fn(int(n))
    try:
        yield prev
    finally:
        fn(prev)


# -- chunked reading -------------------------------------------------------------------------------------------------
def chunk_rows(dim: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a float32 chunk of `dim` columns that fit in `chunk_bytes`."""
    return max(1, int(chunk_bytes) // (4 * max(1, int(dim))))


def iter_slices(n: int, rows: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, rows):
        yield s, min(n, s + rows)


def read_rows(x: np.ndarray, start: int, stop: int, rows: np.ndarray | None = None, *,
              normalize: bool = False) -> np.ndarray:
    """Rows start:stop of `x` (or of `x[rows]`) as a C-contiguous float32 block, L2-normalised if asked.

    A float32 slice of a C-contiguous array is returned as a view (no copy); normalising always makes a new block,
    so the caller's input is never modified.
    """
    block = x[start:stop] if rows is None else x[rows[start:stop]]
    block = np.ascontiguousarray(block, dtype=np.float32)
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        block = block / np.maximum(norms, np.float32(1e-12))[:, None]
    return block


def mean_row(x: np.ndarray, rows: np.ndarray | None = None, *, normalize: bool = False,
             chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Mean of the (selected, optionally L2-normalised) rows, accumulated in float64."""
    n = len(x) if rows is None else len(rows)
    acc = np.zeros(x.shape[1], dtype=np.float64)
    for s, e in iter_slices(n, chunk_rows(x.shape[1], chunk_bytes)):
        acc += read_rows(x, s, e, rows, normalize=normalize).sum(axis=0, dtype=np.float64)
    return (acc / max(n, 1)).astype(np.float32)
