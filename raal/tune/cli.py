"""`python -m raal.tune`: parse, plan and check the sweep before Ray starts (bad input: one line, exit 2), run it,
write and print its results."""
from __future__ import annotations

import logging
import os
import sys
import time

from raal import layout
from raal.errors import ConfigError, StoreError
from raal.raylocal import init_local_ray
from raal.tune.plan import _join, check_pool, check_sweep_folder, make_plan
from raal.tune.results import collect_results, markdown_table, write_results
from raal.tune.spec import fmt_params
from raal.tune.trial import run_sweep

USAGE = """usage: python -m raal.tune conf=SWEEP [key=value ...] [tune.key=value ...]

SWEEP is conf/SWEEP.yaml (or a path to a .yaml file) with a `tune:` section. key=value overrides the run config of
every trial; tune.key=value the sweep (tune.num_samples=4, tune.dir=..., tune.cpu=0.01, tune.max_concurrent_trials=1);
tune.grid.KEY=[a,b] / tune.choice.KEY=[a,b] / tune.uniform.KEY=[lo,hi] / tune.loguniform.KEY=[lo,hi] /
tune.randint.KEY=[lo,hi] sweeps KEY. Re-running the same command resumes an interrupted sweep.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=os.environ.get("RAAL_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    names = [a.split("=", 1)[1] for a in argv if a.startswith("conf=")]
    rest = [a for a in argv if not a.startswith("conf=")]
    try:
        if not names:
            raise ConfigError("conf=SWEEP is required (e.g. conf=tune_demo); see --help")
        bad = [a for a in rest if a.startswith("-")]
        if bad:
            raise ConfigError(f"{bad[0]}: unknown option; use --help, conf=SWEEP, key=value or tune.key=value")
        plan = make_plan(names[-1], rest)
        data = check_pool(plan)  # loaded once here, handed to every trial
        resumed = check_sweep_folder(plan)
    except (ConfigError, StoreError) as err:
        print(f"raal.tune: error: {err}", file=sys.stderr)
        return 2
    import ray


    print(f"raal.tune: sweep {plan.spec.name} in {plan.root}: {len(plan.params)} trials"
          f"{' (resuming)' if resumed else ''}", flush=True)
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    init_local_ray(plan.base.ray.num_cpus or None, address=plan.base.ray.address or None)
    try:
        baseline_curve, status = run_sweep(plan, data)
    finally:
        if started_here:
            ray.shutdown()
    rows = collect_results(plan, baseline_curve, status)
    best = write_results(plan, rows, baseline_curve)
    print()
    print(markdown_table(rows, plan.spec.metric))
    if best:
        print(f"raal.tune: best trial {best['trial']:03d} ({fmt_params(best['params'])}): {best['metric']} = "
              f"{best['value']:.4f} -> {_join(plan.root, layout.best('yaml'))}")
    print(f"raal.tune: results in {_join(plan.root, layout.results('md'))} ({time.perf_counter() - t0:.0f} s)")
    failed = [r for r in rows if r["status"] != "TERMINATED"]
    return 1 if failed else 0
