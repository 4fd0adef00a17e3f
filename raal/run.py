"""`python -m raal.run [conf=NAME] [key=value …]` — one active-learning experiment, end to end.

With no `conf=` it runs `demo`. `python -m raal.run run_dir=DIR` alone resumes the run stored there with its own
config. Config mistakes stop before any work with exit code 2 and one line naming the key.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time

from raal import cli_errors, console, layout, logs
from raal import lifeline as lifeline_mod
from raal.config import (
    MAIN_KEYS,
    RunConfig,
    apply_overrides,
    available_configs,
    conf_dir,
    from_yaml,
    load_config,
    to_dict,
)
from raal.errors import ConfigError

log = logging.getLogger("raal")

USAGE = """usage: python -m raal.run [conf=NAME] [key=value ...]
       python -m raal.run run_dir=DIR            (resume the run stored in DIR with its own config)
       python -m raal.run label run_dir=DIR file=LABELS.csv|EXPORT.json [allow_partial=true]
                                                 (import people's labels into a run with oracle.kind=files)

Runs one active-learning experiment: embeds the pool with the backbone through Ray Data, runs the configured
pipeline/strategy next to a random baseline, evaluates every round on the test split, writes the run store and an
HTML report. Without conf= it runs 'demo'. Ray: a private local instance, or the cluster under `ray job submit`.
"""


def help_text() -> str:
    configs = available_configs()
    lines = [USAGE, f"configs ({conf_dir()}):", "  " + (", ".join(configs) or "none"),
             "sweeps (python -m raal.tune conf=NAME): " + (", ".join(available_configs(sweeps=True)) or "none"), "",
             "main keys:"]

    defaults = to_dict(RunConfig())
    for key in MAIN_KEYS:
        value = defaults
        for part in key.split("."):
            value = value[part]
        lines.append(f"  {key:<22} default {value!r}")
    lines.append("\nany other key of the schema (raal/config/_schema.py) works the same way, "
                 "e.g. asvp.ped.dt=0.5 cost.label_price=0.1")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    name, overrides = None, []
    for arg in argv:
        if arg.startswith("conf="):
            name = arg.split("=", 1)[1]
        elif arg in ("-v", "--verbose"):
            overrides.append("log.verbose=true")
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: unknown option; use --help, conf=NAME or key=value")
        else:
            overrides.append(arg)
    return name, overrides


def resolve_config(argv: list[str]) -> RunConfig:
    """conf=NAME plus overrides; or, for `run_dir=DIR` with a stored run and no conf=, the stored config."""
    name, overrides = parse_args(argv)
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    if name is None and run_dirs:
        from raal.store import RunStore  # lazy: light CLI fast path

        store = RunStore(run_dirs[-1], create=False)
        others = [o for o in overrides if not o.startswith("run_dir=")]
        if not others and not store.exists(layout.CONFIG):  # `run_dir=DIR` alone means: resume the run in DIR
            from raal.store import redact_uri  # lazy: light CLI fast path

            what = "does not exist" if not store.exists("") else "holds no run (no config.yaml)"
            raise ConfigError(f"run_dir={redact_uri(run_dirs[-1])!r} {what}: nothing to resume; to start a run "
                              "there give conf=NAME (e.g. conf=demo)")
        if store.exists(layout.CONFIG):
            stored = from_yaml(store.read_text(layout.CONFIG))
            if others:  # apply overrides over the stored config; the resume check judges them

                stored = apply_overrides(stored, others)
            stored.run_dir = run_dirs[-1]
            return stored
    return load_config(name, overrides)


def label_main(argv: list[str]) -> int:
    """`python -m raal.run label run_dir=DIR file=F [allow_partial=true]`; errors exit 2 with one line."""
    from raal.labeling import import_labels, summary_lines  # lazy: light CLI fast path

    args: dict[str, str] = {}
    try:
        for a in argv:
            key, eq, value = a.partition("=")
            if not eq or key not in ("run_dir", "file", "allow_partial"):
                raise ConfigError(f"{a!r}: expected run_dir=DIR file=F [allow_partial=true]")
            args[key] = value
        missing = [k for k in ("run_dir", "file") if not args.get(k)]
        if missing:
            raise ConfigError(f"label needs {' and '.join(k + '=' for k in missing)}")
        partial = args.get("allow_partial", "false").lower()
        if partial not in ("true", "false"):
            raise ConfigError(f"allow_partial={args['allow_partial']!r}: expected true or false")
        res = import_labels(args["run_dir"], args["file"], allow_partial=partial == "true")
    except Exception as err:  # noqa: BLE001 - the error contract: one line; exit 2 (input) or 1 + log (bug)
        return cli_errors.report(err, args.get("run_dir") if args.get("run_dir") and os.path.isdir(args["run_dir"])
                                 else None, prog="raal label")
    waiting = res["queried"] - res["answered"]
    go = waiting == 0 or (res["partial"] and res["answered"] > 0)
    for line in summary_lines(res):
        print(f"raal label: {line}")
    if go:
        print(f"raal label: continue with: python -m raal.run run_dir={args['run_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "label":
        return label_main(argv[1:])
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0

    run_dir, before = None, None
    try:
        cfg = resolve_config(argv)
        from raal.pipelines.experiment import default_run_dir  # lazy: light CLI fast path
        from raal.preflight import preflight  # lazy: light CLI fast path

        run_dir = default_run_dir(cfg)
        preflight(cfg)
        before = uncommitted_entries(run_dir)
        lease = take_lease(cfg)
    except Exception as err:  # noqa: BLE001 - the error contract: one line, exit 2 (input) or 1 + log (bug)
        if before is not None and not before[0] and run_dir is not None:  # (run_dir is set before `before`)
            _remove_if_empty(run_dir)  # the lease was refused: leave no run dir it created
        return cli_errors.report(err, run_dir)
    code = 1
    try:
        code = run(cfg)
        return code
    except Exception as err:  # noqa: BLE001 - errors from Ray actors and workers arrive wrapped; unwrap them
        code = cli_errors.report(err, run_dir)
        return code
    finally:
        if code == 2 and before is not None:
            roll_back(run_dir, before[1])
        lease.release()
        if before is not None and not before[0]:
            _remove_if_empty(run_dir)  # a run that stopped before its first committed step leaves no empty run dir


def uncommitted_entries(run_dir: str) -> tuple[bool, set[str]] | None:
    """For a local run dir without committed state (no config.yaml): whether it exists and the names in it now, so
    that a run that fails on bad input can leave it as it found it. None for a committed or a remote run dir."""
    if "://" in run_dir:
        return None
    if not os.path.isdir(run_dir):
        return False, set()
    names = set(os.listdir(run_dir))
    return None if layout.CONFIG in names else (True, names)


def roll_back(run_dir: str, before: set[str]) -> None:
    """Bad input found inside Ray (e.g. a corrupt image past the decode sample): remove what this run wrote into a
    run dir that held no committed state (`main` then removes the run dir itself if this run created it). Runs
    under the lease."""

    if not os.path.isdir(run_dir):
        return
    for name in set(os.listdir(run_dir)) - before - {layout.LOCK}:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _remove_if_empty(run_dir: str) -> None:
    try:
        os.rmdir(run_dir)
    except OSError:
        pass


def take_lease(cfg: RunConfig):
    """The run dir's exclusive lease (one writer per run), held until the run returns; the resume check is re-done
    under it, since another process may have written the run dir between the preflight and the lease."""
    from raal.pipelines.experiment import check_resume, default_run_dir  # lazy: light CLI fast path
    from raal.store import RunLease  # lazy: light CLI fast path

    lease = RunLease(default_run_dir(cfg))
    try:
        check_resume(lease.store, cfg)
    except BaseException:
        lease.release()
        raise
    return lease


def print_waiting(status: dict, run_dir: str) -> None:
    """The stop of a files-oracle run: what to label, and the two commands that continue it."""
    todo = status["queried"] - status.get("labeled", 0)
    print(f"raal: round {status['round']} waits for {todo} of {status['queried']} labels; label one of:")
    for f in status["files"]:
        print(f"  {f}")
    print(f"raal: then: python -m raal.run label run_dir={run_dir} file=LABELS.csv   (or the Label Studio export)")
    print(f"raal: and:  python -m raal.run run_dir={run_dir}", flush=True)


def run(cfg: RunConfig) -> int:
    import ray

    from raal.pipelines.experiment import default_run_dir, start_driver  # lazy: light CLI fast path
    from raal.progress import start_board  # lazy: light CLI fast path
    from raal.raylocal import init_local_ray  # lazy: light CLI fast path
    from raal.store import local_dir, redact_uri  # lazy: light CLI fast path
    from raal.tracking import Tracker  # lazy: light CLI fast path

    run_dir = default_run_dir(cfg)
    shown = redact_uri(run_dir)  # what is printed: never the credentials a URI may carry
    log_file = logs.log_file_for(run_dir)
    ray_kw = logs.setup(log_file, os.environ.get("RAAL_LOG", cfg.log.level), cfg.log.verbose)
    started_here = not ray.is_initialized()
    private = started_here and not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    lifeline = None
    if private:  # if this process is killed, a watchdog stops the private Ray it started (raal.lifeline)

        lifeline = lifeline_mod.start()
    out = console.Display()
    t0 = time.perf_counter()
    tracker = None
    try:
        init_local_ray(cfg.ray.num_cpus or None, address=cfg.ray.address or None, logging_kwargs=ray_kw)
        print(f"raal: logs: {log_file} (Ray's own: {logs.ray_log_dir() or 'see the cluster'}); -v shows them here",
              flush=True)
        board = start_board()
        driver = start_driver(cfg)
        info = console.wait(driver.prepare.remote(), board, out)
        names = info["arms"]
        out.print(f"raal: run_dir={shown}  pool={info['pool']}  test={info['test']}  arms={', '.join(names)}"
                  f"{'  (resumed at round ' + str(info['completed_rounds']) + ')' if info['resumed'] else ''}")
        for msg in info.get("undecodable", []):
            out.print(f"raal: skipped (data.skip_undecodable=true): {msg}")
        tracker = Tracker.open(cfg, run_dir, names, info.get("baseline"))
        if tracker is not None:
            tracker.log_history(ray.get(driver.history.remote()))
        print(f"raal: pre-computed features (v0) in {info['t_pre']:.1f} s")
        if info.get("evaluator"):
            print(f"raal: accuracy = the one evaluator for every arm: {info['evaluator']} (the selectors' own "
                  "accuracies are diagnostics in the rounds table)")
        print(console.format_header(names), flush=True)
        waiting, r = None, 0
        # Experiment.run's loop, a round per call so that each round's row, MLflow step and progress line show here
        while ray.get(driver.has_round.remote(r)):  # the schedule, then the random curve until it passes every arm
            rows = console.wait(driver.run_round.remote(r), board, out)
            waiting = ray.get(driver.waiting.remote())
            if waiting:
                print_waiting(waiting, shown)
                break
            if tracker is not None:
                tracker.log_history(ray.get(driver.history.remote()))
            out.print(console.format_row(r, rows, names))
            r += 1
        finals = {} if waiting else console.wait(driver.finalize.remote(), board, out)
        if tracker is not None:
            tracker.log_summary(finals)
        for name, res in finals.items():
            print(f"raal: final model of {name}: {res['method']} on {res['n_labeled']} labels -> "
                  f"test accuracy {res['accuracy']:.4f}")
        ray.kill(driver)
    finally:
        if started_here:
            ray.shutdown()
        if lifeline is not None:
            lifeline.done()
    if waiting:
        return 0
    local = local_dir(run_dir)  # a path or file://: the report reads through RunStore, writes locally
    if cfg.report and local is not None:
        try:
            from raal.report import write_report  # lazy: light CLI fast path

            print()
            write_report([run_dir], local / layout.REPORT, echo=True)
            if tracker is not None:
                tracker.log_report(local / layout.REPORT)
        except ImportError:
            pass
    if tracker is not None:
        tracker.finish()
        print(f"raal: MLflow: mlflow ui --backend-store-uri {tracker.uri}")
    print(f"raal: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    _code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # End without interpreter finalisation: native thread pools (pyarrow's, torch's) still alive then can abort the
    # process at exit ("terminate called without an active exception", exit 134) after the right message was printed.
    # Everything raal writes is closed and fsync'ed by now, and Ray was shut down by `run`.
    os._exit(_code)
