"""`python -m raal.tune conf=NAME [key=value …] [tune.key=value …]` — a Ray Tune sweep of raal runs.

A sweep varies config keys (grid and random search over e.g. `asvp.threshold`, `al.schedule`, `al.strategy`,
`proxy.lr`); every trial is a full raal experiment in its own run dir, scored by its mean sample saving ratio
against ONE random baseline that the sweep runs first and shares. Layout of the sweep folder:

    SWEEP/sweep.json           the resolved sweep (spec, base config, trial list): a resume must match it
    SWEEP/baseline/            run store of the random baseline (its v0 features are shared with every trial)
    SWEEP/trials/trial_NNN/    run store of trial NNN
    SWEEP/tune/                Ray Tune's experiment folder (Tuner.restore)
    SWEEP/results.{parquet,csv,md}, SWEEP/best.yaml, SWEEP/best.json

Trial lists are expanded here, not by Tune's samplers: random draws are seeded (`tune.seed`), so trial NNN has
the same parameters and the same run dir however often the sweep is restarted, and an interrupted sweep resumes
through `Tuner.restore` with every trial continuing from its last committed round.

Sweep files (`conf/tune_*.yaml`) hold one `tune:` section (see `SweepSpec`); every other `key=value` on the command
line overrides the run config of all trials, `tune.key=value` the sweep settings, and `tune.grid.KEY=[…]`,
`tune.choice.KEY=[…]`, `tune.uniform.KEY=[lo,hi]`, `tune.loguniform.KEY=[lo,hi]`, `tune.randint.KEY=[lo,hi]`
one swept key (replacing the file's spec of that key).
"""
from raal.tune.cli import USAGE, main  # noqa: F401 - the package's interface, as when it was one module
from raal.tune.plan import (  # noqa: F401
                            Plan,
                            apply_params,
                            baseline_config,
                            check_pool,
                            check_sweep_folder,
                            label_points,
                            make_plan,
                            sweep_dir,
                            trial_config,
)
from raal.tune.results import collect_results, markdown_table, write_results  # noqa: F401
from raal.tune.spec import (  # noqa: F401
                            FORBIDDEN_PREFIXES,
                            KINDS,
                            METRICS,
                            OPERATIONAL,
                            SweepSpec,
                            check_spec,
                            expand_trials,
                            load_sweep,
                            sweep_path,
)
from raal.tune.trial import curve_of, run_baseline, run_sweep, run_trial, share_features, trial_metrics  # noqa: F401
