"""raal's own exception types, so callers can tell a user mistake from a bug."""
from __future__ import annotations


class RaalError(Exception):
    """The root of every exception raal defines: `except RaalError` catches raal's own failures and nothing else.

    Each subclass also keeps its builtin base (ValueError, RuntimeError), so older `except ValueError` still works.
    Whether an error is the user's (one line, exit 2) is decided by `cli_errors.USER_ERRORS`, not by this root.
    """


class ConfigError(RaalError, ValueError):
    """A config key is unknown, mistyped or holds an impossible value. The message names the key."""


class PoolError(RaalError, ValueError):
    """Base class for problems with the unlabeled pool itself."""


class EmptyPoolError(PoolError):
    """The pool has no items at all."""


class PoolExhaustedError(PoolError):
    """Every pool item is already labeled: there is nothing left to query."""


class StoreError(RaalError, RuntimeError):
    """The run store is corrupt, or refuses an operation that would lose or mix data."""


class LabelImportError(RaalError, ValueError):
    """Labels given for import are invalid (never queried, already labeled, unknown class, conflicting)."""


class ImageDecodeError(RaalError, ValueError):
    """An image of the pool or test split cannot be read or decoded. The message names the id and the path."""


def short(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: a message stays one readable line whatever the file holds."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
