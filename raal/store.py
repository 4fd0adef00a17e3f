"""The run store: one directory (local path or any `pyarrow.fs` URI) per run, every write atomic, no pickle.

Atomicity: on a local filesystem a write goes to a temporary file in the same folder, is fsync'ed, then renamed over
the target (and the folder is fsync'ed), so a reader sees the old or the new file, never half of one. On object stores
(S3, GCS) a single PUT is already atomic, so the object is written directly.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import posixpath
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raal import layout
from raal.errors import StoreError

#: URI query keys whose values are harmless and may be shown and stored; every other value is redacted (allow-list:
#: a new pyarrow option, or a misspelt secret, is never printed). jobs/submit.sh keeps the same list.
SAFE_QUERY_KEYS = frozenset({"region", "endpoint_override", "scheme", "anonymous", "allow_bucket_creation",
                             "allow_bucket_deletion", "connect_timeout", "request_timeout",
                             "force_virtual_addressing", "default_bucket_location", "project_id"})


def uri_credentials(uri: str) -> list[str]:
    """The parts of `uri` that may carry credentials: 'userinfo' and every query key outside SAFE_QUERY_KEYS."""

    if "://" not in uri:
        return []
    parts = urlsplit(uri)
    found = ["userinfo"] if "@" in parts.netloc else []
    return found + [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SAFE_QUERY_KEYS]


def redact_uri(uri: str) -> str:
    """`uri` without `user:secret@` and with every query value REDACTED except SAFE_QUERY_KEYS': what may be stored
    or logged.

    pyarrow accepts credentials inside S3 URIs (s3://KEY:SECRET@bucket/x, ?access_key=...); they must never reach
    config.yaml, status files or logs.
    """

    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(k, v if k.lower() in SAFE_QUERY_KEYS else "REDACTED")
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/"), parts.fragment))


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


class RunStore:
    """A folder of run state. `child("arms", "x")` gives a sub-store sharing the same filesystem."""

    def __init__(self, uri: str | os.PathLike, *, _fs: pafs.FileSystem | None = None, create: bool = True):
        """`create=False` only looks (preflight checks must leave no empty run dir behind); writes create folders."""
        uri = str(uri)
        if _fs is not None:
            self.fs, self.root = _fs, uri
        else:
            self.fs, self.root = _resolve(uri)
        self.uri = uri
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if create:
            self.fs.create_dir(self.root, recursive=True)

    def __repr__(self) -> str:
        return f"RunStore({self.root!r})"

    # -- paths ---------------------------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        rel = str(rel).strip("/")
        if ".." in rel.split("/"):
            raise StoreError(f"store path {rel!r} escapes the run directory")
        return posixpath.join(self.root, rel) if rel else self.root

    def local_path(self, rel: str = "") -> Path | None:
        """A real filesystem path (for memory-mapping) when the store is local, else None."""
        return Path(self.path(rel)) if self.is_local else None

    def local_copy(self, rel: str) -> Path:
        """A local file with the content of `rel`: the file itself when local, else a cached download."""
        if self.is_local:
            return Path(self.path(rel))

        dest = Path(tempfile.gettempdir()) / "raal-store-cache" / hashlib.sha256(self.path(rel).encode()).hexdigest()
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".part")
            tmp.write_bytes(self.read_bytes(rel))
            os.replace(tmp, dest)
        return dest

    def child(self, *parts: str) -> RunStore:
        return RunStore(self.path("/".join(parts)), _fs=self.fs)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str = "") -> list[str]:
        info = self.fs.get_file_info(self.path(rel))
        if info.type != pafs.FileType.Directory:
            return []
        entries = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(posixpath.basename(e.path) for e in entries)

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        info = self.fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(p)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(p)

    # -- atomic writes -------------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        parent = posixpath.dirname(target)
        self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            return
        with atomic_local_file(target) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    # -- reads ---------------------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError as err:
            raise StoreError(f"{self.path(rel)}: missing from the run store") from err

    def read_text(self, rel: str) -> str:
        try:
            return self.read_bytes(rel).decode("utf-8")
        except UnicodeDecodeError as err:
            raise StoreError(f"{self.path(rel)}: corrupt: not UTF-8 text ({err.reason} at byte {err.start})") from None

    def read_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_text(rel))
        except (ValueError, RecursionError) as err:  # JSONDecodeError, a 5000-digit number, deep nesting
            raise StoreError(f"{self.path(rel)}: corrupt JSON ({str(err)[:200]})") from None

    def read_table(self, rel: str) -> pa.Table:
        try:
            return pq.read_table(io.BytesIO(self.read_bytes(rel)))
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"{self.path(rel)}: corrupt Parquet ({str(err).splitlines()[0][:200]})") from None

    def tmp_name(self) -> str:
        return f".tmp-{uuid.uuid4().hex}"


# -- Ray Train's storage -----------------------------------------------------------------------------------------------
def local_dir(run_dir: str) -> Path | None:
    """The run dir as a local path (a plain path or a `file://` URI), else None; creates nothing."""
    fs, root = _resolve(run_dir)
    return Path(root) if isinstance(fs, pafs.LocalFileSystem) else None


def ray_train_storage(where: str | os.PathLike | RunStore, name: str) -> tuple[RunStore, dict]:
    """Where a fine-tune job named `name` keeps Ray Train's state: `<where>/<name>`, on `where`'s own filesystem.

    `where` is a local path, a pyarrow.fs URI or a RunStore (e.g. `run_store.child("ray_train")`). Returns the job's
    RunStore and the `storage_path`/`storage_filesystem` arguments of Ray Train's `RunConfig`: Ray writes its
    checkpoints through that filesystem object, so a job of an S3 run store checkpoints into the bucket (a killed
    job resumes from there on any node) and the URI, with whatever credentials it carries, never becomes a string
    Ray prints or stores.
    """
    base = where if isinstance(where, RunStore) else RunStore(str(where))
    return base.child(name), {"storage_path": base.root, "storage_filesystem": base.fs}


# -- one writer per run dir -------------------------------------------------------------------------------------------
LEASE = layout.LOCK  # local run dirs: flock'ed file (removed again on release)
REMOTE_LEASE = layout.REMOTE_LEASE  # object stores: a best-effort lease object


class RunDirInUse(StoreError):
    """Another raal process holds the run dir's lease (a run, or a label import)."""


class RunLease:
    """An exclusive lease on a run dir, held by `raal.run` for a run and by `raal.run label` for an import.

    Local run dirs (plain paths and file:// URIs): `fcntl.flock(LOCK_EX | LOCK_NB)` on `<run_dir>/.raal.lock`, which
    holds the owner's pid. The kernel drops the lock when the process dies, so a crash leaves no stale lease.
    Object stores (s3://, gs://, ...) have no locks: the lease is a best-effort object `<run_dir>/.raal.lease.json`
    (host, pid, token), written when absent and read back to detect a racing writer. Two writers starting within the
    same instant can still both pass; a lease left by a killed process is taken over on the same host once its pid
    is gone, and from another host only after the object is deleted by hand (the refusal names it).
    """

    def __init__(self, run_dir: str | RunStore):
        self.store = run_dir if isinstance(run_dir, RunStore) else RunStore(str(run_dir))
        self.shown = redact_uri(self.store.uri)
        self._fd: int | None = None
        self._token: str | None = None
        if self.store.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()

    def _refuse(self, pid, extra: str = "") -> None:
        raise RunDirInUse(f"run_dir {self.shown} is in use by another raal process (pid {pid or 'unknown'}{extra})")

    def _acquire_local(self) -> None:

        path = self.store.path(LEASE)
        for _ in range(20):  # retry if the file we locked was removed by a releasing owner meanwhile
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                self._refuse(pid)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return
        raise StoreError(f"run_dir {self.shown}: could not take the lease {LEASE}")

    def _acquire_remote(self) -> None:

        host = socket.gethostname()
        if self.store.exists(REMOTE_LEASE):
            try:
                held = self.store.read_json(REMOTE_LEASE)
            except StoreError:
                held = {}
            if not (held.get("host") == host and not _pid_alive(held.get("pid"))):
                self._refuse(held.get("pid"), f" on host {held.get('host', '?')}; if no raal process uses it, delete "
                                              f"{self.shown.rstrip('/')}/{REMOTE_LEASE}")
        self._token = uuid.uuid4().hex
        self.store.write_json(REMOTE_LEASE, {"host": host, "pid": os.getpid(), "token": self._token})
        held = self.store.read_json(REMOTE_LEASE)
        if held.get("token") != self._token:
            self._token = None
            self._refuse(held.get("pid"), f" on host {held.get('host', '?')}")

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.store.path(LEASE))  # while still locked: a waiter re-checks the inode and retries
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._token is not None:
            try:
                if self.store.read_json(REMOTE_LEASE).get("token") == self._token:
                    self.store.delete(REMOTE_LEASE)
            except StoreError:
                pass
            self._token = None

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_local_file(target: str | os.PathLike):
    """A binary file that replaces `target` only once written completely: temp file beside it, fsync, rename,
    fsync of the folder. On any error the temp file is removed and `target` is untouched."""
    parent = os.path.dirname(os.fspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
