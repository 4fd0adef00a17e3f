"""The CLI's error contract: a user mistake is one line and exit 2; anything else is one line, exit 1, and the full
traceback in a log file whose path the line names.

Errors raised inside Ray actors, Ray Data tasks and Ray Train workers come back wrapped (`RayTaskError`, nested
once per actor hop; `ActorDiedError` when an actor's constructor raised; Ray Train's `TrainingFailedError` /
`WorkerGroupError`). `root_cause` unwraps them, so raal's own exception reaches the user with its own message.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback

from raal import errors
from raal.errors import ConfigError, ImageDecodeError, LabelImportError, PoolError, StoreError

#: raal's exceptions that mean "the input is wrong" (config, data, run dir, labels): one line, exit 2.
USER_ERRORS = (ConfigError, StoreError, LabelImportError, ImageDecodeError, PoolError)
LOG_DIR = "logs"  # under the run dir: the tracebacks of internal errors

# `raal.errors.ConfigError: msg` (or a subclass defined in raal.store) inside the text of an error that lost its
# cause object (an actor whose constructor raised reaches the caller as ActorDiedError with the traceback as text)
_IN_TEXT = re.compile(r"^(?:raal\.[\w.]+\.)?(\w+Error): (.+)$", re.M)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception behind Ray's wrappers (and behind plain `raise … from`) that raal raised itself, or
    the innermost one at all when raal raised none."""
    seen, chain = set(), []
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = _inner(cur)
    for e in reversed(chain):  # innermost first
        if isinstance(e, USER_ERRORS) and not _is_ray_wrapper(e):
            return e
    for e in reversed(chain):  # a cause that did not survive serialisation (Ray Data's UserCodeException, an actor
        text = _from_text(e)   # constructor's ActorDiedError) is still named in the remote traceback's text
        if text is not None:
            return text
    return chain[-1]


def _is_ray_wrapper(e: BaseException) -> bool:
    """`ray.get` raises `RayTaskError(ConfigError)`, an instance of both: its message is the whole remote traceback."""
    return type(e).__module__.startswith("ray.")


def _inner(e: BaseException) -> BaseException | None:
    for attr in ("cause", "controller_failure"):  # RayTaskError / ActorDiedError; Ray Train ControllerError
        inner = getattr(e, attr, None)
        if isinstance(inner, BaseException):
            return inner
    failures = getattr(e, "worker_failures", None)  # Ray Train WorkerGroupError: {rank: exception}
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        if isinstance(first, BaseException):
            return first
    return e.__cause__


def _from_text(e: BaseException) -> BaseException | None:
    """A raal user error named in the message of a Ray error that carries no cause object."""
    if not type(e).__module__.startswith("ray."):
        return None
    for name, msg in reversed(_IN_TEXT.findall(str(e))):
        cls = getattr(errors, name, None)
        if cls is None:
            from raal import store  # lazy: light CLI: store pulls pyarrow

            cls = getattr(store, name, None)
        if isinstance(cls, type) and issubclass(cls, USER_ERRORS):
            return cls(msg.strip())
    return None


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def is_user_error(err: BaseException) -> bool:
    return isinstance(root_cause(err), USER_ERRORS)


def report(err: BaseException, run_dir: str | None, prog: str = "raal") -> int:
    """Print the one line for `err` on stderr; return the exit code (2: bad input, 1: internal error).

    An internal error's traceback (with every wrapped remote traceback Ray carried) goes to
    `<run_dir>/logs/error-<time>-<pid>.log` for a local run dir, else to the temp folder; the line names the file.
    Such a log never counts as committed state: the run dir can still be resumed or reused.
    """
    cause = root_cause(err)
    if isinstance(cause, USER_ERRORS):
        print(f"{prog}: error: {one_line(cause)}", file=sys.stderr, flush=True)
        return 2
    path = write_log(err, run_dir)
    print(f"{prog}: internal error: {type(cause).__name__}: {one_line(cause)[:300]} (full log: {path})",
          file=sys.stderr, flush=True)
    return 1


def write_log(err: BaseException, run_dir: str | None) -> str:
    folder = os.path.join(run_dir, LOG_DIR) if run_dir and "://" not in run_dir else \
        os.path.join(tempfile.gettempdir(), "raal-logs")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = tempfile.gettempdir()
    path = os.path.join(os.path.abspath(folder), f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    from raal.store import atomic_local_file  # lazy: light CLI: store pulls pyarrow

    with atomic_local_file(path) as f:
        f.write(text.encode("utf-8", "replace"))
    return path
