"""Does an installed environment equal its lock? Every package the lock names for this platform installed at the
locked version, and nothing installed that the lock does not name.

    python -m raal.lockcheck locks/dev.txt                    # the running interpreter's environment
    python -m raal.lockcheck locks/labelstudio.txt --venv .venv-ls
    python -m raal.lockcheck locks/cluster.txt -- CMD ...     # check, then run CMD in this process's place
    python -m raal.lockcheck locks/dev.txt --unlocked         # the installed names the lock lacks, one a line

`make install`, `make labelstudio` and `make env-check` run it after installing, and a cluster job runs it before
raal starts (jobs/submit.sh), so a node whose packages drifted from what CI ran stops with one line instead of
running untested versions. The lock's environment markers are evaluated for the Python that runs this check
(the same minor version as the checked venv). Exit 0: equal; 1: a difference (each printed); 2: bad input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from raal.errors import RaalError

# Installed next to the locked packages on purpose: the project itself (an editable install, not in its own lock).
NOT_LOCKED = frozenset({"raal"})


class LockError(RaalError, ValueError):
    """A lock file that cannot be read: missing, or a line that is not a requirement."""


def read_lock(path: str | os.PathLike) -> dict[str, str]:
    """`{canonical name: version}` of a `requirements.txt`-style lock (uv export / pip-compile), for this platform.

    Each requirement must be an exact pin (`name==version`); hash options and comments are skipped; a pin whose
    environment marker does not hold here is left out.
    """
    lock = Path(path)
    if not lock.is_file():
        raise LockError(f"{lock}: no such lock file (run `make lock`)")
    pins: dict[str, str] = {}
    for number, line in _logical_lines(lock.read_text(encoding="utf-8")):
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            raise LockError(f"{lock}:{number}: not a requirement: {err}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise LockError(f"{lock}:{number}: {req.name} is not pinned to one version ({req.specifier or 'any'})")
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pins[canonicalize_name(req.name)] = specs[0].version
    if not pins:
        raise LockError(f"{lock}: names no package for this platform")
    return pins


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, requirement) with continuations joined and `--hash=…` options and comments removed."""
    number, parts = 0, list[str]()
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not parts:
            number = i
        cont = line.endswith("\\")
        parts.append(line.rstrip("\\").strip())
        if cont:
            continue
        joined = re.sub(r"\s--hash=\S+", "", " " + " ".join(p for p in parts if p)).strip()
        parts = []
        if joined and not joined.startswith("-"):
            yield number, joined


def installed(site_packages: list[str] | None = None) -> dict[str, str]:
    """`{canonical name: version}` of the distributions on `site_packages` (default: this interpreter's path)."""
    dists = metadata.distributions(path=site_packages) if site_packages else metadata.distributions()
    found: dict[str, str] = {}
    for dist in dists:
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)  # first on the path wins, as for imports
    return found


def venv_site_packages(venv: str | os.PathLike) -> list[str]:
    """The site-packages folder(s) of a virtual environment, or LockError when it has none."""
    found = sorted(str(p) for p in Path(venv).glob("lib/python*/site-packages"))
    if not found:
        raise LockError(f"{venv}: not a virtual environment (no lib/python*/site-packages)")
    return found


def differences(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per package that is missing, at another version, or installed without being locked."""
    lines = []
    for name in sorted(locked.keys() | present.keys()):
        want, have = locked.get(name), present.get(name)
        if want == have or (want is None and name in NOT_LOCKED):
            continue
        if have is None:
            lines.append(f"{name}: locked at {want}, not installed")
        elif want is None:
            lines.append(f"{name}: {have} installed, not in the lock")
        else:
            lines.append(f"{name}: {have} installed, locked at {want}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m raal.lockcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", help="a requirements-style lock, e.g. locks/dev.txt")
    parser.add_argument("--venv", help="check this virtual environment instead of the running interpreter's")
    parser.add_argument("--unlocked", action="store_true",
                        help="only print the installed packages the lock does not name (make install uninstalls "
                             "them, so an environment follows a lock that dropped a package)")
    args = parser.parse_args(argv)
    try:
        locked = read_lock(args.lock)
        present = installed(venv_site_packages(args.venv) if args.venv else None)
    except LockError as err:
        print(f"raal.lockcheck: error: {err}", file=sys.stderr)
        return 2
    where = args.venv or sys.prefix
    if args.unlocked:
        print("\n".join(sorted(set(present) - set(locked) - NOT_LOCKED)))
        return 0
    problems = differences(locked, present)
    if problems:
        for line in problems:
            print(f"raal.lockcheck: {where}: {line}", file=sys.stderr)
        print(f"raal.lockcheck: {where} differs from {args.lock} in {len(problems)} package(s); reinstall from the "
              f"lock (make install / make labelstudio, or the cluster's setup_commands)", file=sys.stderr)
        return 1
    print(f"raal.lockcheck: {where} equals {args.lock} ({len(locked)} packages)")
    if command:
        sys.stdout.flush()
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
