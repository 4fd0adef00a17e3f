"""Semantic checks of a config that its types cannot express: allowed values, numeric ranges, the schedule.

`validate` is the one place a value is judged; every path that makes a RunConfig (a named config, a resume with
overrides, a Tune trial) ends in it, so the layers below trust the values they are given.
"""
from __future__ import annotations

import math
import re
from typing import Any

from raal.config._schema import (
    ANNOTATION_POLICIES,
    AUTOCAST_MODES,
    BALANCED_STRATEGIES,
    CANDIDATE_MODES,
    DATA_SOURCES,
    DEVICES,
    EVAL_MODES,
    IMAGE_URL_MODES,
    INITIAL_STRATEGIES,
    ORACLES,
    PIPELINES,
    SHARDED_PIPELINES,
    SHARDED_STRATEGIES,
    STOP_MODES,
    STRATEGIES,
    TRAIN_METHODS,
    RunConfig,
)
from raal.errors import ConfigError

_SCHEDULE_TERM = re.compile(r"^\[\s*(\d+(?:\s*,\s*\d+)*)\s*\](?:\s*\*\s*(\d+))?$")
#: Bounds checked on the text and its parsed terms before anything is expanded (issue #26): a schedule that asks for
#: more than this many rounds, or a number with more digits, is refused in one line however it is written.
MAX_SCHEDULE_CHARS = 10_000  # the text itself (the paper's longest schedule is 16 characters)
MAX_ROUNDS = 10_000  # query rounds, whatever the pool (each round trains a model; the papers run at most 18)
MAX_NUMBER_DIGITS = 15  # one query size or repeat count: < 10**15, past any pool, well inside int64


def _show(text: str) -> str:
    """The schedule as quoted in a message: whole when short, else its start (the message stays one short line)."""
    return repr(text) if len(text) <= 80 else repr(text[:60]) + f"... ({len(text)} characters)"


def _number(digits: str, text: str) -> int:
    if len(digits) > MAX_NUMBER_DIGITS:
        raise ConfigError(f"al.schedule: the number {digits[:20]}... in {_show(text)} has {len(digits)} digits; "
                          f"at most {MAX_NUMBER_DIGITS}")
    return int(digits)


def schedule_terms(text: str) -> list[tuple[list[int], int]]:
    """The schedule's terms as (query sizes, repeat count) pairs, parsed and bounded but not expanded.

    Refused (ConfigError) before any list is built: text longer than MAX_SCHEDULE_CHARS, a number longer than
    MAX_NUMBER_DIGITS digits (int() of a long digit string is slow, and past 4300 digits a ValueError that is no
    config error), and terms that together ask for more than MAX_ROUNDS rounds (counted as len(sizes) x repeat).
    """
    text = str(text).strip()
    if len(text) > MAX_SCHEDULE_CHARS:
        raise ConfigError(f"al.schedule: {_show(text)} is longer than {MAX_SCHEDULE_CHARS} characters")
    if not text:
        return []
    terms: list[tuple[list[int], int]] = []
    rounds = 0
    for term in text.split("+"):
        m = _SCHEDULE_TERM.match(term.strip())
        if not m:
            raise ConfigError(f"al.schedule: cannot parse {_show(term.strip())} in {_show(text)}; "
                              "allowed: terms like [200]*10 or [100,200] joined by +")
        values = [_number(v.strip(), text) for v in m.group(1).split(",")]
        repeat = _number(m.group(2), text) if m.group(2) else 1
        rounds += len(values) * repeat
        if rounds > MAX_ROUNDS:
            raise ConfigError(f"al.schedule: {_show(text)} asks for more than {MAX_ROUNDS} query rounds "
                              f"(at least {rounds})")
        terms.append((values, repeat))
    return terms


def schedule_labels(text: str) -> int:
    """The labels the schedule asks for in all (al.initial not included), from its terms: nothing is expanded."""
    return sum(sum(values) * repeat for values, repeat in schedule_terms(text))


def parse_schedule(text: str) -> list[int]:
    """Parse a query schedule written as in the paper, e.g. "[200]*10+[500]*8" or "[100,200]+[50]*2".

    No eval(): a config string is untrusted input. Nothing is expanded before `schedule_terms` has bounded it: at
    most MAX_ROUNDS rounds (10,000) whatever the pool, so "[200]*99999999999" is one ConfigError line, never a
    MemoryError. Whether the labels fit the pool is `validate_against_pool`, as soon as the pool's size is known
    (before any work), which counts them from the terms without expanding either.
    """
    sizes: list[int] = []
    for values, repeat in schedule_terms(text):
        sizes.extend(values * repeat)
    return sizes


def _check(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def validate(cfg: RunConfig) -> None:
    """Semantic checks the schema cannot express. Pool-size checks happen in `validate_against_pool`."""
    _check_ranges(cfg)  # numeric ranges of embed/proxy/train/lora, each naming its own key
    d = cfg.data
    _check(d.source in DATA_SOURCES, "data.source", f"allowed: {', '.join(DATA_SOURCES)}", d.source)
    _check(d.source not in ("image_folder", "parquet") or bool(d.root), "data.root",
           f"data.source={d.source} needs data.root (a folder or manifest path)", d.root)
    _check(cfg.track.kind in ("mlflow", "none"), "track.kind", "allowed: mlflow, none", cfg.track.kind)
    _check(cfg.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log.level",
           "allowed: DEBUG, INFO, WARNING, ERROR", cfg.log.level)
    _check(d.image_size >= 16, "data.image_size", "must be >= 16", d.image_size)
    _check(d.pool_size >= 0, "data.pool_size", "must be >= 0 (0 = all)", d.pool_size)
    _check(d.test_size >= 0, "data.test_size", "must be >= 0", d.test_size)
    _check(d.test_size > 0 or bool(d.test_root), "data.test_size",
           "must be > 0 unless data.test_root gives the test split", d.test_size)
    _check(d.check_images >= 0, "data.check_images", "must be >= 0 (0 = no sample)", d.check_images)
    _check(len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std), "data.mean/data.std",
           "three values each, std > 0", (d.mean, d.std))
    _check(cfg.embed.device in DEVICES, "embed.device", f"allowed: {', '.join(DEVICES)}", cfg.embed.device)
    _check(cfg.proxy.device in DEVICES, "proxy.device", f"allowed: {', '.join(DEVICES)}", cfg.proxy.device)
    _check(cfg.embed.autocast in AUTOCAST_MODES, "embed.autocast", f"allowed: {', '.join(AUTOCAST_MODES)}",
           cfg.embed.autocast)
    _check(cfg.embed.batch_size > 0, "embed.batch_size", "must be > 0", cfg.embed.batch_size)
    _check(cfg.embed.num_actors >= 0, "embed.num_actors", "must be >= 0 (0 = auto)", cfg.embed.num_actors)
    a = cfg.al
    _check(a.pipeline in PIPELINES, "al.pipeline", f"allowed: {', '.join(PIPELINES)}", a.pipeline)
    known = list(STRATEGIES)
    _check(a.strategy in known, "al.strategy", f"allowed: {', '.join(known)}", a.strategy)
    _check(not a.balanced or a.strategy in BALANCED_STRATEGIES, "al.balanced",
           f"only strategies that rank by a score accept it ({', '.join(BALANCED_STRATEGIES)})",
           f"{a.balanced} with al.strategy={a.strategy}")
    _check(a.candidates in CANDIDATE_MODES, "al.candidates", f"allowed: {', '.join(CANDIDATE_MODES)}", a.candidates)
    _check(isinstance(a.candidates_k, int) and not isinstance(a.candidates_k, bool) and a.candidates_k >= 1,
           "al.candidates_k", "must be an integer >= 1 (neighbours per labeled item)", a.candidates_k)
    _check(isinstance(a.select_workers, int) and not isinstance(a.select_workers, bool) and a.select_workers >= 0,
           "al.select_workers", "must be an integer >= 0 (0 = select in the driver's process)", a.select_workers)
    if a.select_workers > 0:
        _check(a.pipeline in SHARDED_PIPELINES, "al.select_workers",
               f"needs al.pipeline in {', '.join(SHARDED_PIPELINES)} (their proxy scores the pool on the workers)",
               f"{a.select_workers} with al.pipeline={a.pipeline}")
        _check(a.strategy in SHARDED_STRATEGIES, "al.select_workers",
               f"needs al.strategy in {', '.join(SHARDED_STRATEGIES)} (the strategies with a merge of the workers' "
               "picks)", f"{a.select_workers} with al.strategy={a.strategy}")
        _check(a.candidates == "all", "al.select_workers",
               "needs al.candidates=all (SEALS' candidates are scored in the driver)",
               f"{a.select_workers} with al.candidates={a.candidates}")
    for arm in a.compare:
        parts = str(arm).split("/")
        _check(len(parts) == 2 and parts[0] in PIPELINES and parts[1] in known, "al.compare",
               f"entries look like pipeline/strategy with pipeline in {PIPELINES} and strategy in {known}", arm)
    _check(isinstance(a.coreset_dim, int) and not isinstance(a.coreset_dim, bool) and a.coreset_dim >= 0,
           "al.coreset_dim", "must be an integer >= 0 (0 = exact greedy k-center)", a.coreset_dim)
    _check(a.coreset_dim == 0 or "coreset" in [a.strategy] + [str(arm).split("/")[-1] for arm in a.compare],
           "al.coreset_dim", "only coreset arms use it (al.strategy or an al.compare entry)",
           f"{a.coreset_dim} with al.strategy={a.strategy}, al.compare={list(a.compare)}")
    _check(a.baseline_pipeline in ("",) + PIPELINES, "al.baseline_pipeline", f"allowed: '' or {PIPELINES}",
           a.baseline_pipeline)
    _check(a.initial >= 1, "al.initial", "must be >= 1 (round 0's batch trains every arm's first model)",
           a.initial)
    starts = [s for s in INITIAL_STRATEGIES if s in known]  # those this build has
    _check(a.initial_strategy in starts, "al.initial_strategy", f"allowed: {', '.join(starts)}", a.initial_strategy)
    _check(a.stop in STOP_MODES, "al.stop", f"allowed: {', '.join(STOP_MODES)}", a.stop)
    st = cfg.stopping
    _check(st.kappa_rounds >= 0 and st.gain_rounds >= 1 and st.sample >= 1, "stopping",
           "kappa_rounds >= 0, gain_rounds >= 1 and sample >= 1", (st.kappa_rounds, st.gain_rounds, st.sample))
    _check(-1 <= st.kappa <= 1 and st.point_value >= 0 and math.isfinite(st.min_gain), "stopping",
           "kappa in [-1, 1], point_value >= 0, min_gain finite", (st.kappa, st.point_value, st.min_gain))
    sizes = parse_schedule(a.schedule)
    for s in sizes:
        _check(s > 0, "al.schedule", "every query size must be > 0", a.schedule)
    _check(a.initial + sum(sizes) > 0, "al.schedule", "the initial batch and the schedule ask for no labels at all",
           a.schedule)
    p = cfg.proxy
    _check(p.epochs > 0 and p.batch_size > 0 and p.lr > 0, "proxy", "epochs, batch_size and lr must be > 0",
           (p.epochs, p.batch_size, p.lr))
    t = cfg.train
    _check(t.method in TRAIN_METHODS, "train.method", f"allowed: {', '.join(TRAIN_METHODS)}", t.method)
    _check(t.num_workers >= 1, "train.num_workers", "must be >= 1", t.num_workers)
    _check(t.warm in ("auto", "off"), "train.warm", "allowed: auto, off", t.warm)
    _check(t.epochs >= 0 and t.lp_epochs >= 0, "train.epochs", "must be >= 0", (t.epochs, t.lp_epochs))
    _check(cfg.eval.every_round in EVAL_MODES, "eval.every_round", f"allowed: {', '.join(EVAL_MODES)}",
           cfg.eval.every_round)
    _check(cfg.eval.final in ("none", "ft", "lpft"), "eval.final", "allowed: none, ft, lpft", cfg.eval.final)
    t = cfg.train
    _check(t.optimizer in ("adamw", "sgd"), "train.optimizer", "allowed: adamw, sgd", t.optimizer)
    _check(t.schedule in ("cosine", "multistep"), "train.schedule", "allowed: cosine, multistep", t.schedule)
    _check(t.bn in ("frozen", "train"), "train.bn", "allowed: frozen, train", t.bn)
    _check(t.lp_solver in ("lbfgs", "sgd"), "train.lp_solver", "allowed: lbfgs, sgd", t.lp_solver)
    _check(t.min_steps >= 0 and 0 <= t.warmup_frac < 1 and 0 < t.crop_scale_min <= 1, "train.min_steps",
           "min_steps >= 0, warmup_frac in [0, 1), crop_scale_min in (0, 1]",
           (t.min_steps, t.warmup_frac, t.crop_scale_min))
    _check(t.freeze_blocks == 0 or cfg.eval.every_round == "evaluator", "train.freeze_blocks",
           "partial fine-tuning uses the evaluator's cached activations: set eval.every_round=evaluator",
           t.freeze_blocks)
    e = cfg.eval
    _check(e.method in ("lp", "lpft", "ft"), "eval.method", "allowed: lp, lpft, ft", e.method)
    _check(e.bn in ("frozen", "train"), "eval.bn", "allowed: frozen, train", e.bn)
    _check(e.steps >= 1 and e.batch_size >= 1, "eval.steps", "steps and batch_size must be >= 1",
           (e.steps, e.batch_size))
    _check(e.freeze_blocks >= -1, "eval.freeze_blocks", "must be -1 (auto: all but the last 2 blocks), 0 (full "
           "fine-tuning) or >= 1", e.freeze_blocks)
    _check(min(e.backbone_lr, e.head_lr, e.ft_head_lr) > 0 and e.weight_decay >= 0 and e.probe_l2 >= 0
           and 0 <= e.warmup_frac < 1, "eval", "learning rates must be > 0, weight_decay and probe_l2 >= 0, "
           "warmup_frac in [0, 1)", (e.backbone_lr, e.head_lr, e.ft_head_lr, e.weight_decay, e.warmup_frac))
    _check(cfg.asvp.logme_variant in ("fast", "exact"), "asvp.logme_variant", "allowed: fast, exact",
           cfg.asvp.logme_variant)
    _check(cfg.asvp.threshold >= 0, "asvp.threshold", "must be >= 0", cfg.asvp.threshold)
    _check(cfg.asvp.rule in ("gain", "delta", "at", "never"), "asvp.rule", "allowed: gain, delta, at, never",
           cfg.asvp.rule)
    _check(cfg.asvp.rule != "at" or (bool(cfg.asvp.refresh_at) and all(int(v) >= 1 for v in cfg.asvp.refresh_at)),
           "asvp.refresh_at", "rule 'at' needs labeled-set sizes >= 1 to refresh at", cfg.asvp.refresh_at)
    _check(cfg.asvp.switch in ("rule", "ft", "lpft", "holdout"), "asvp.switch", "allowed: rule, ft, lpft, holdout",
           cfg.asvp.switch)
    _check(cfg.asvp.switch != "holdout" or cfg.eval.every_round == "evaluator", "asvp.switch",
           "holdout compares FT and LP-FT with the evaluator: set eval.every_round=evaluator", cfg.asvp.switch)
    _check(cfg.asvp.gain_rounds >= 1 and cfg.asvp.gain_permutations >= 1, "asvp.gain_rounds",
           "gain_rounds and gain_permutations must be >= 1", (cfg.asvp.gain_rounds, cfg.asvp.gain_permutations))
    _check(cfg.oracle.kind in ORACLES, "oracle.kind", f"allowed: {', '.join(ORACLES)}", cfg.oracle.kind)
    o = cfg.oracle
    _check(o.annotations in ANNOTATION_POLICIES, "oracle.annotations",
           f"allowed: {', '.join(ANNOTATION_POLICIES)}", o.annotations)
    url_prefix = o.image_url.startswith(("http://", "https://"))
    _check(o.image_url in IMAGE_URL_MODES or url_prefix, "oracle.image_url",
           f"allowed: {', '.join(IMAGE_URL_MODES)} or an http(s):// prefix", o.image_url)
    _check(bool(o.document_root) or not (url_prefix or o.image_url == "local-files"), "oracle.document_root",
           f"oracle.image_url={o.image_url} needs the folder its URLs are relative to", o.document_root)
    _check(o.backend_url.startswith(("http://", "https://")), "oracle.backend_url", "must be an http(s) URL",
           o.backend_url)
    for key in ("label_price", "gpu_hour_price", "cpu_hour_price"):
        v = getattr(cfg.cost, key)
        _check(v >= 0, f"cost.{key}", "must be >= 0", v)


# -- numeric ranges (issue #16) ---------------------------------------------------------------------------------------
#: (section, key, rule): ">=1" and ">=0" for counts, ">0" for rates/sizes, "[0,1)" for momentum; an Optional key
#: that is None means "use the default" and is not checked. A key missing from the dataclass is skipped.
NUMERIC_RANGES: tuple[tuple[str, str, str], ...] = (
    ("embed", "batch_size", ">=1"), ("embed", "num_actors", ">=0"), ("embed", "shard_rows", ">=1"),
    ("proxy", "epochs", ">=1"), ("proxy", "batch_size", ">=1"), ("proxy", "lr", ">0"),
    ("proxy", "momentum", "[0,1)"), ("proxy", "weight_decay", ">=0"), ("proxy", "score_batch_size", ">=1"),
    ("train", "epochs", ">=0"), ("train", "lp_epochs", ">=0"), ("train", "lp_lr", ">0"), ("train", "head_lr", ">0"),
    ("train", "backbone_lr", ">0"), ("train", "weight_decay", ">=0"), ("train", "momentum", "[0,1)"),
    ("train", "lpft_head_lr", ">0"), ("train", "lpft_backbone_lr", ">0"), ("train", "lpft_weight_decay", ">=0"),
    ("train", "milestones", ">=0"), ("train", "gamma", ">0"), ("train", "batch_size", ">=1"),
    ("train", "eval_batch_size", ">=1"), ("train", "num_workers", ">=1"), ("train", "cpus_per_worker", ">0"),
    ("train", "max_failures", ">=-1"),
    ("lora", "rank", ">=1"), ("lora", "alpha", ">0"), ("lora", "lr", ">0"), ("lora", "epochs", ">=0"),
    ("lora", "batch_size", ">=1"),
)
_RULES = {">=1": (lambda v: v >= 1, "must be >= 1"), ">=0": (lambda v: v >= 0, "must be >= 0"),
          ">0": (lambda v: v > 0, "must be > 0"), ">=-1": (lambda v: v >= -1, "must be >= -1 (-1 = unlimited)"),
          "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


def _check_ranges(cfg: RunConfig) -> None:
    """Range checks of the numeric keys of embed/proxy/train/lora: one ConfigError naming the first bad key."""
    for section, key, rule in NUMERIC_RANGES:
        sub = getattr(cfg, section, None)
        if sub is None or not hasattr(sub, key):
            continue
        value = getattr(sub, key)
        if value is None:
            continue
        ok, allowed = _RULES[rule]
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            _check(finite and ok(v), f"{section}.{key}", allowed, value)


def validate_against_pool(cfg: RunConfig, pool_size: int) -> None:
    """The budget must fit in the pool: checked as soon as the pool's size is known, before any work."""
    budget = cfg.al.initial + schedule_labels(cfg.al.schedule)  # counted from the terms, not expanded
    if budget > pool_size:
        raise ConfigError(f"al.schedule: the budget (al.initial={cfg.al.initial} + schedule "
                          f"{_show(str(cfg.al.schedule))} = {budget}) is larger than the pool ({pool_size} items)")

