"""The cluster side of raal: check an autoscaling `cluster.yaml` offline, hold resources for a job, fetch results.

`ray up` has no dry run, and a typo in a cluster file shows up only after minutes of provisioning. `check_cluster`
runs the checks that need no cloud credentials, in the order that gives the clearest message first:

1. the JSON schema that ships inside the installed ray package (`ray/autoscaler/ray-schema.json`): key typos,
   fractional GPUs, wrong types;
2. Ray's own preparation and validation (`prepare_config` + `validate_config`, a private API wrapped here): merges
   the provider defaults, a bad `head_node_type`, global min > max;
3. raal's checks that Ray misses: per-type `min_workers <= max_workers`, every node installs raal's lock
   (`locks/cluster.txt`, mounted from the repo, hashes required: the versions CI ran, the same Ray as the client
   above all), and head and workers agree on `RAY_AUTH_MODE`.

Every failure is a `ClusterConfigError` (a ValueError) whose message is one line naming the key.

`python -m raal.cluster check cluster.yaml` — the checks, and a one-screen summary of the node types.
`python -m raal.cluster hold GPU=2 [--timeout S] -- CMD …` — ask the autoscaler for resources, wait until the
cluster has them, run CMD, release the request (a job that needs GPUs on a cluster whose GPU group starts at 0).
`python -m raal.cluster fetch SRC DEST` — copy the small files of a run store or sweep folder (S3 or local) to DEST.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import relevance

from raal import layout
from raal.errors import RaalError

log = logging.getLogger(__name__)

COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
# What `fetch` leaves behind: feature shards, model weights and Ray Train/Tune scratch are large and not needed
# to read or report a run.
FETCH_SKIP_DIRS = (layout.FEATURES + "/v", *(d + "/" for d in (layout.SCORES, layout.CHECKPOINTS, layout.RAY_TRAIN,
                                                             layout.TUNE, layout.REPORT)))
FETCH_SKIP_SUFFIXES = (".pt", ".pth", ".npy", ".bin")


class ClusterConfigError(RaalError, ValueError):
    """A cluster.yaml that Ray or raal would reject. `errors` holds every problem found, `str()` the first."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


# ---------------------------------------------------------------------------------------------------------------
# Loading and the three layers of checks
# ---------------------------------------------------------------------------------------------------------------

def load_cluster_yaml(path: str | os.PathLike) -> dict:
    """The cluster file as a dict; a missing file or malformed YAML is a ClusterConfigError."""

    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError([f"{p}: no such file"])
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ClusterConfigError([f"{p}: not valid YAML: {str(err).splitlines()[0]}"]) from err
    if not isinstance(cfg, dict):
        raise ClusterConfigError([f"{p}: must hold a mapping of keys, got {type(cfg).__name__}"])
    return cfg


def ray_schema_path() -> Path:
    """The autoscaler schema of the installed ray (the one `ray up` itself validates against)."""
    import ray.autoscaler

    return Path(ray.autoscaler.__file__).resolve().parent / "ray-schema.json"


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def schema_errors(config: dict) -> list[str]:
    """Every violation of ray-schema.json as "key.path: schema message", the most relevant first."""

    schema = json.loads(ray_schema_path().read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=relevance, reverse=True)
    # best_match's order: the deepest, most specific error first (a typo inside a node type, not "is not valid
    # under any of the given schemas" of an enclosing anyOf)
    return [f"{_key_path(e.absolute_path)}: {e.message}" for e in errors]


def prepare(config: dict) -> dict:
    """Ray's `prepare_config` then `validate_config` (private API, wrapped so that only this function knows it).

    Returns the prepared config (provider defaults merged, per-type min/max filled in); errors as one line.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)  # "setting max workers…"
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        raise ClusterConfigError([f"{_key_path(err.absolute_path)}: {err.message}"]) from None
    except (ValueError, RuntimeError, KeyError, NotImplementedError, TypeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterConfigError([f"ray rejects the cluster config: {msg}"]) from None
    return prepared


CLUSTER_LOCK = "locks/cluster.txt"  # what every node installs (`make lock` writes it from uv.lock)


def _lock_paths(mounts: dict) -> list[str]:
    """Where `file_mounts` puts raal's cluster lock on a node: the mounted file, or the mounted locks/ folder + name."""
    paths = []
    for target, source in mounts.items():
        src, dst = Path(str(source)).as_posix().rstrip("/"), str(target).rstrip("/")
        if src.endswith(CLUSTER_LOCK) or src == Path(CLUSTER_LOCK).name:
            paths.append(dst)
        elif src.endswith("locks") and (src == "locks" or src.endswith("/locks")):
            paths.append(f"{dst}/{Path(CLUSTER_LOCK).name}")
    return paths


def _lock_problems(prepared: dict, types: dict, head: str | None) -> list[str]:
    """The nodes install raal's lock (hashes required), so head and workers run the versions CI ran."""
    paths = _lock_paths(prepared.get("file_mounts") or {})
    if not paths:
        return [f"file_mounts: no node gets raal's lock {CLUSTER_LOCK}: mount the repo's locks/ folder "
                "(e.g. `~/raal-locks: ./locks`) and install it in setup_commands"]
    problems = []
    for role in ("head", "worker"):
        key = f"{role}_setup_commands"
        text = _commands(prepared, key)
        if role == "worker":
            text += "\n" + "\n".join(_commands(prepared, "worker_setup_commands", nt)
                                     for n, nt in types.items() if n != head)
        installs = [line for line in text.splitlines()
                    if any(p in line for p in paths) and "--require-hashes" in line
                    and re.search(r"\bpip (sync|install)\b", line)]
        if not installs:
            problems.append(f"{key} (with setup_commands): the nodes do not install raal's lock ({' or '.join(paths)})"
                            " with --require-hashes, e.g. `uv pip sync --require-hashes ~/raal-locks/cluster.txt`")
    return problems


def _commands(config: dict, key: str, node_type: dict | None = None) -> str:
    cmds = (node_type or {}).get(key) if node_type and key in node_type else config.get(key)
    return "\n".join(str(c) for c in (cmds or []))


def _auth_mode(commands: str) -> str:
    """The RAY_AUTH_MODE a list of start commands sets ("unset" when it does not)."""
    modes = set(re.findall(r"RAY_AUTH_MODE=['\"]?(\w+)", commands))
    if len(modes) > 1:
        return "+".join(sorted(modes))
    return modes.pop() if modes else "unset"


def raal_checks(prepared: dict) -> list[str]:
    """What Ray's validation misses, on a config that went through `prepare`: one message per problem."""
    problems: list[str] = []
    types = prepared.get("available_node_types") or {}
    head = prepared.get("head_node_type")
    for name, nt in types.items():
        lo, hi = int(nt.get("min_workers", 0)), int(nt.get("max_workers", 0))
        if lo > hi:
            problems.append(f"available_node_types.{name}: min_workers={lo} is larger than max_workers={hi}")
        gpus = (nt.get("resources") or {}).get("GPU", 0)
        if name == head and gpus:
            problems.append(f"available_node_types.{name}: the head declares GPU={gpus}; raal keeps the head "
                            "for drivers and Tune, GPUs belong in a worker group")

    docker = prepared.get("docker") or {}
    image = " ".join(str(docker.get(k, "")) for k in ("image", "head_image", "worker_image"))
    if image.strip():
        import ray

        if ray.__version__ not in image:
            problems.append(f"docker: the image(s) {image.strip()!r} do not name ray {ray.__version__}, the Ray of "
                            "this client; job submission needs the same Ray on both sides")
    else:
        problems += _lock_problems(prepared, types, head)

    head_mode = _auth_mode(_commands(prepared, "head_start_ray_commands"))
    worker_mode = _auth_mode(_commands(prepared, "worker_start_ray_commands"))
    if head_mode != worker_mode:
        problems.append(f"head_start_ray_commands sets RAY_AUTH_MODE={head_mode} but worker_start_ray_commands "
                        f"sets RAY_AUTH_MODE={worker_mode}; workers could not join the head")
    elif head_mode == "token":
        mounts = prepared.get("file_mounts") or {}
        start = _commands(prepared, "head_start_ray_commands") + _commands(prepared, "worker_start_ray_commands")
        if not any(str(t).rstrip("/").endswith(".ray/auth_token") for t in mounts) and "RAY_AUTH_TOKEN" not in start:
            problems.append("RAY_AUTH_MODE=token but no node gets the token: mount ~/.ray/auth_token in file_mounts "
                            "or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH in the start commands")
    return problems


def check_cluster(config: dict | str | os.PathLike) -> dict:
    """All three layers of checks; returns Ray's prepared config, or raises ClusterConfigError."""
    if not isinstance(config, dict):
        config = load_cluster_yaml(config)
    errors = schema_errors(config)
    if errors:
        raise ClusterConfigError(errors)
    prepared = prepare(config)
    problems = raal_checks(prepared)
    if problems:
        raise ClusterConfigError(problems)
    return prepared


def summary(prepared: dict) -> str:
    """One line per node type: role, instance type, workers min..max, resources."""
    head = prepared["head_node_type"]
    lines = [f"cluster {prepared.get('cluster_name')!r} on {prepared['provider'].get('type')} "
             f"({prepared['provider'].get('region', '-')}), global max_workers={prepared.get('max_workers')}"]
    for name, nt in prepared["available_node_types"].items():
        role = "head  " if name == head else "worker"
        inst = (nt.get("node_config") or {}).get("InstanceType", "?")
        res = ", ".join(f"{k}={v}" for k, v in sorted((nt.get("resources") or {}).items())) or "auto-detected"
        lines.append(f"  {role} {name:<16} {inst:<14} workers {nt.get('min_workers', 0)}..{nt.get('max_workers', 0)}"
                     f"  resources: {res}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Holding resources for a job
# ---------------------------------------------------------------------------------------------------------------

def parse_resources(items: list[str]) -> dict[str, float]:
    """["GPU=2", "CPU=8"] -> {"GPU": 2.0, "CPU": 8.0}; bad items raise ValueError naming them."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not name or amount < 0:
            raise ValueError(f"resource {item!r}: expected NAME=AMOUNT with AMOUNT >= 0, e.g. GPU=2")
        out[name] = amount
    return out


def _bundles(resources: dict[str, float]) -> list[dict[str, float]]:
    """One bundle per whole GPU (a GPU node each), the rest of the request in one bundle."""
    gpus = int(resources.get("GPU", 0))
    rest = {k: v for k, v in resources.items() if k != "GPU" and v > 0}
    bundles = [{"GPU": 1.0} for _ in range(gpus)]
    if rest:
        bundles.append(rest)
    return bundles


def wait_for_resources(resources: dict[str, float], *, timeout: float = 1800.0, poll: float = 2.0,
                       request: bool = True) -> dict[str, float]:
    """Ask the autoscaler for `resources` (a standing request) and wait until the cluster's totals reach them.

    Ray must be initialised. Returns the cluster's resources; TimeoutError names what is still missing.
    """
    import ray

    if request:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=_bundles(resources))
    deadline = time.monotonic() + timeout
    while True:
        have = ray.cluster_resources()
        missing = {k: v for k, v in resources.items() if have.get(k, 0.0) + 1e-9 < v}
        if not missing:
            return have
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the cluster has {({k: have.get(k, 0.0) for k in missing})} after {timeout:.0f} s, "
                               f"wanted {missing}")
        time.sleep(poll)


def release_resources() -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])


def hold(resources: dict[str, float], command: list[str], *, timeout: float = 1800.0) -> int:
    """Request and wait for `resources`, run `command` (its exit code is returned), then release the request.

    The request keeps the autoscaler from scaling the GPU group down during proxy-only rounds of a long run.
    """
    import ray

    from raal.raylocal import init_local_ray  # lazy: heavy: ray

    if not command:
        raise ValueError("hold: no command to run after --")
    # Attaching a driver inside a job re-extracts the job's working dir at the same path, which leaves this
    # process's cwd a deleted directory: the command gets the path, not the inherited (stale) cwd.
    cwd = os.getcwd()
    init_local_ray(address=os.environ.get("RAY_ADDRESS") or "auto", quiet=True)
    try:
        have = wait_for_resources(resources, timeout=timeout)
        print(f"raal.cluster: the cluster has {', '.join(f'{k}={have.get(k, 0):g}' for k in resources)}; "
              f"running {' '.join(command)}", flush=True)
        return subprocess.call(command, cwd=cwd)
    finally:
        try:
            release_resources()
        finally:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Fetching a run store or sweep folder
# ---------------------------------------------------------------------------------------------------------------

def _wanted(rel: str) -> bool:
    rel = rel.replace(os.sep, "/")
    if rel.endswith(FETCH_SKIP_SUFFIXES) or "/.tmp-" in f"/{rel}":
        return False
    return not any(rel.startswith(d) or f"/{d}" in f"/{rel}" for d in FETCH_SKIP_DIRS)


def fetch(src: str, dest: str | os.PathLike) -> list[str]:
    """Copy the small files of a run store or sweep folder (configs, tables, JSON, Markdown) from a local path or a
    pyarrow.fs URI (s3://…) into `dest`; returns the copied relative paths. Feature shards and weights stay."""
    import pyarrow.fs as pafs  # lazy: light CLI: pyarrow

    if "://" in src:
        fs, root = pafs.FileSystem.from_uri(src)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(src).expanduser().resolve())
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"fetch: {src} is not a folder")
    dest = Path(dest)
    copied = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(root):].lstrip("/")
        if not _wanted(rel):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(entry.path) as f:
            out.write_bytes(f.read())
        copied.append(rel)
    return sorted(copied)


def job_run_dir(address: str, job_id: str) -> str:
    """The run dir (or sweep folder) a job submitted by jobs/submit.sh recorded in its metadata."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(address).get_job_info(job_id)
    meta = info.metadata or {}
    if "raal_dir" not in meta:
        raise ValueError(f"job {job_id} has no raal_dir in its metadata (not submitted by jobs/submit.sh?)")
    return meta["raal_dir"]


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m raal.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="validate cluster files offline (schema, Ray, raal)")
    p_check.add_argument("files", nargs="+")
    p_check.add_argument("--quiet", action="store_true")
    p_hold = sub.add_parser("hold", help="request resources, wait for them, run the command after --, release")
    p_hold.add_argument("resources", nargs="+", help="NAME=AMOUNT, e.g. GPU=2")
    p_hold.add_argument("--timeout", type=float, default=1800.0)
    p_fetch = sub.add_parser("fetch", help="copy the small files of a run store / sweep folder")
    p_fetch.add_argument("src", help="a run dir or sweep folder (path or URI), or a job id with --address")
    p_fetch.add_argument("dest")
    p_fetch.add_argument("--address", default="", help="jobs API address: SRC is then a job id")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            for f in args.files:
                try:
                    prepared = check_cluster(f)
                except ClusterConfigError as err:
                    raise ClusterConfigError([f"{f}: {e}" for e in err.errors]) from None
                print(f"{f}: OK")
                if not args.quiet:
                    print(summary(prepared))
            return 0
        if args.cmd == "hold":
            return hold(parse_resources(args.resources), command, timeout=args.timeout)
        if args.cmd == "fetch":
            src = job_run_dir(args.address, args.src) if args.address else args.src
            files = fetch(src, args.dest)
            print(f"raal.cluster: fetched {len(files)} files of {src} into {args.dest}")
            return 0
    except ClusterConfigError as err:
        print(f"raal.cluster: error: {err}", file=sys.stderr)
        for extra in err.errors[1:]:
            print(f"raal.cluster:        {extra}", file=sys.stderr)
        return 2
    except (ValueError, TimeoutError) as err:
        print(f"raal.cluster: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
