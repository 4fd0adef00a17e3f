"""The structured config: dataclasses for the schema, OmegaConf for YAML files and `key=value` overrides.

Every knob of raal lives here with its default, so a Ray Tune sweep or a user can change any of them, and a typo is
caught before any work starts (`ConfigError`, one line naming the key and what is allowed).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raal.errors import ConfigError
from raal.pipelines import registry as pipeline_registry

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

DATA_SOURCES = ("animal_mnist", "image_folder", "parquet")
PIPELINES = pipeline_registry.NAMES
TRAIN_METHODS = ("ft", "lpft")
DEVICES = ("auto", "cpu", "cuda")
ORACLES = ("simulated", "files")
ANNOTATION_POLICIES = ("majority", "unanimous", "first")
IMAGE_URL_MODES = ("path", "local-files", "backend")
EVAL_MODES = ("evaluator", "proxy", "ft", "lpft")
INITIAL_STRATEGIES = ("random", "typiclust", "probcover", "kmeans_centroid", "activeft")
STOP_MODES = ("schedule", "advice")


@dataclass
class DataConfig:
    """Where the pool and the held-out test set come from, and how images are shaped."""

    source: str = "animal_mnist"  # animal_mnist | image_folder | parquet
    root: str = ""  # image_folder: the folder; parquet: the manifest file (id, path|image, [label])
    test_root: str = ""  # optional separate test folder/manifest; otherwise a fixed-seed split of the pool
    test_size: int = 2000  # held-out items when the test set is split off the pool
    pool_size: int = 0  # 0 = every remaining item; >0 = a fixed-seed subsample (quick runs, tests)
    split_seed: int = 0
    image_size: int = 64
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    data_roots: list[str] = field(default_factory=list)  # paths in manifests/labels must lie under one of these
    num_classes: int = 0  # 0 = inferred from the source
    skip_undecodable: bool = False  # true: list undecodable images (data/undecodable.json) and leave them out
    check_images: int = 32  # images decoded as a sample before any work (0 = none); the rest fail or skip later


@dataclass
class ModelConfig:
    """The backbone: a torchvision architecture and where its weights come from."""

    arch: str = "mobilenet_v2"
    weights: str = "imagenet-offline"  # imagenet-offline | none | a local checkpoint path (.pth/.pt, weights_only)
    checkpoint_key: str = ""  # key inside the checkpoint dict that holds the state dict ("" = auto)


@dataclass
class EmbedConfig:
    """The Ray Data embedding pass over the pool."""

    batch_size: int = 256
    num_actors: int = 0  # 0 = derive from the cluster's free resources
    device: str = "auto"  # auto | cpu | cuda
    autocast: str = "bf16"  # on CUDA: bf16 | fp16 | none
    shard_rows: int = 4096  # rows per feature shard written to the store
    warm: bool = True  # keep the embedding actors alive across the passes of a run (raal/embed_pool.py)


@dataclass
class ALConfig:
    """The active-learning experiment: which pipeline, which strategy, the query schedule, the baseline."""

    pipeline: str = "svpp"
    strategy: str = "margin"
    compare: list[str] = field(default_factory=list)  # extra arms as "pipeline/strategy", e.g. ["svpp/margin"]
    baseline: bool = True  # also run "<pipeline>/random" as the random baseline (needed for the saving ratio)
    baseline_pipeline: str = ""  # pipeline for the baseline arm ("" = svpp)
    initial: int = 100  # size of the initial uniformly random batch (ActiveFT(al) chooses its own)
    schedule: str = "[100]*5"  # per-round query sizes, written as in the paper: "[200]*10+[500]*8"
    seed: int = 0
    # The random baseline continues past the schedule (rounds of the last size) until its evaluated accuracy
    # passes every AL arm's best, so saving ratios are read off a measured curve, not an extrapolated one:
    # -1 = up to 3x the AL budget (at most the pool), 0 = never, N = up to N labels.
    baseline_cap: int = -1
    # round 0 of every non-baseline arm, chosen on the pre-computed v0 features (the random baseline stays random);
    # one of INITIAL_STRATEGIES. ActiveFT arms choose their own.
    initial_strategy: str = "random"
    stop: str = "schedule"  # schedule: run every round | advice: end when the main arm's stop_advice says stop
    # Score strategies (margin, confidence, entropy) pick round-robin over the predicted classes (docs/strategies.md)
    balanced: bool = False


@dataclass
class ProxyConfig:
    """The MLP proxy of SVPp/ASVP (docs/algorithms.md §3.3)."""

    epochs: int = 50
    batch_size: int = 2048
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    device: str = "auto"
    score_batch_size: int = 16384


@dataclass
class TrainConfig:
    """FT / LP-FT of the backbone: one-worker jobs on the run's warm training actor, DDP jobs as Ray Train fits."""

    method: str = "lpft"  # ft | lpft (standard AL and the final model; ASVP switches by itself)
    epochs: int = 10  # FT epochs (FT alone gets lp_epochs + epochs, so both methods run as many steps)
    lp_epochs: int = 2
    # Defaults that stay stable on small pools at 32-96 px with batch 64 (checked on Animal-MNIST + MobileNetV2: the
    # paper's ImageNet values, LP 0.5 / head 0.1 / backbone 0.01, diverge there). conf/*_asvp.yaml carry the papers'.
    lp_lr: float = 0.05  # the SGD probe (lp_solver=sgd)
    head_lr: float = 3e-3  # AdamW values for small sets (bench/recipe.py); the papers' SGD values in conf/*_asvp.yaml
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lpft_head_lr: Optional[float] = 1e-3  # LP-FT's own FT-stage recipe (None = the FT value above): its head
    # starts converged, so it moves more slowly than FT's fresh one
    lpft_backbone_lr: Optional[float] = None
    lpft_weight_decay: Optional[float] = None
    milestones: list[int] = field(default_factory=lambda: [6, 8])
    gamma: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: bool = True
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    # The recipe that stays sound at small labeled sets (bench/recipe.py); sgd/multistep/train/sgd/0 restore the
    # papers' epoch-based recipe (conf/*_asvp.yaml use it for ImageNet-scale runs).
    optimizer: str = "adamw"  # adamw | sgd (the FT stage)
    schedule: str = "cosine"  # cosine (per step, linear warm-up) | multistep (per epoch, `milestones`)
    warmup_frac: float = 0.1
    bn: str = "frozen"  # frozen: BatchNorm keeps its pre-trained statistics in FT | train
    lp_solver: str = "lbfgs"  # lbfgs: LP-FT's probe trained to convergence on the frozen features | sgd (lp_epochs)
    min_steps: int = 200  # the FT stage runs at least this many optimiser steps, whatever the labeled-set size
    crop_scale_min: float = 0.6  # RandomResizedCrop's smallest area fraction (mild augmentation)
    probe_l2: float = 1e-3  # L2 of the L-BFGS probe (per sample)
    # 0: fine-tune the whole backbone as a Ray Train job. != 0: partial fine-tuning in the driver from the
    # evaluator's cached prefix activations (standard AL's model, ASVP's refresh), the evaluator's recipe
    # (eval.*) with this method; needs eval.every_round=evaluator. Meant for CPUs.
    freeze_blocks: int = 0
    warm: str = "auto"  # auto: one-worker jobs on the run's warm training actor (raal/train_warm.py) | off: Ray Train


@dataclass
class LoraConfig:
    """PEAL's LoRA adapters (docs/algorithms.md §9)."""

    rank: int = 16
    alpha: float = 16.0
    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 64


@dataclass
class PEDConfig:
    dt: float = 0.1
    nsigma: float = 0.6
    exit_ratio: float = 0.5
    max_steps: int = 6


@dataclass
class ASVPConfig:
    """The ASVP refresh trigger (docs/algorithms.md §3.2; the `gain` rule: docs/asvp_trigger.md).

    rule "gain" (default): fire when doubling the labels no longer improves LogME's linear probe on the frozen
    features by `gain_threshold` (accuracy, absolute) in `gain_rounds` consecutive scored rounds. rule "delta"
    (legacy, the paper's): fire when |LogME-PED - previous| < `threshold`; with the fast variant and N < D that
    change is set by N and D, not by the data. `ped_max_steps_for_skip` = -1 never skips: PED takes its
    `ped.max_steps` on real features every round (its step count says nothing about saturation), so a skip
    limit of 1 never acted.
    """

    threshold: float = 1.0  # rule "delta" only
    ped_max_steps_for_skip: int = -1  # -1 = never skip (was 1; see the docstring)
    max_refreshes: int = -1  # -1 = unlimited
    logme_variant: str = "fast"  # fast | exact: the recorded LogME-PED (and rule "delta")
    ped: PEDConfig = field(default_factory=PEDConfig)
    rule: str = "gain"  # gain | delta (legacy)
    gain_threshold: float = 0.02  # fire below this accuracy gain per doubling of the labels
    gain_rounds: int = 2  # ... in this many consecutive scored rounds
    gain_permutations: int = 5  # seeded random splits of the labeled set averaged per round


@dataclass
class EvalConfig:
    """How each round is evaluated on the test split, and how the final model is trained."""

    # evaluator: every arm scored by the one evaluator (raal/evaluator.py: a fixed partial fine-tune recipe, seeds
    # paired by labeled-set size); proxy | ft | lpft: the arm's own model (proxy accuracy is a diagnostic only)
    every_round: str = "proxy"
    final: str = "none"  # none | ft | lpft
    # the evaluator's recipe (tuned on random labeled sets only: bench/recipe.py)
    method: str = "lpft"  # lp | lpft | ft
    freeze_blocks: int = -1  # frozen leading blocks whose activations are cached; -1 = all but the last 2 (ResNet: 4)
    steps: int = 300  # optimiser steps, whatever the labeled-set size
    batch_size: int = 64
    backbone_lr: float = 1e-4  # 3e-4 or 150 steps: job-seed spreads of 2-2.8 points at 100 labels (bench/recipe.py)
    head_lr: float = 1e-3
    ft_head_lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1
    probe_l2: float = 1e-3
    augment: bool = True
    bn: str = "frozen"  # frozen | train


@dataclass
class CostConfig:
    label_price: float = 0.12  # per label (3 annotations on a crowd platform)
    gpu_hour_price: float = 3.06  # an AWS p3.2xlarge hour
    cpu_hour_price: float = 0.10


@dataclass
class StoppingConfig:
    """The stopping advice recorded every round (raal/stopping.py); `al.stop=advice` acts on it."""

    min_gain: float = 0.5  # plateau: accuracy points per 100 labels below which the curve has flattened
    gain_rounds: int = 1  # ... measured over this many rounds back
    kappa: float = 0.99  # stable predictions: Cohen's kappa of consecutive models on a fixed pool sample ...
    kappa_rounds: int = 3  # ... at least this for this many rounds
    sample: int = 2000  # size of that fixed sample (at most the pool)
    point_value: float = 0.0  # cost: what one accuracy point is worth (cost.label_price's currency); 0 = off


@dataclass
class MetricsConfig:
    exclude_random_rounds: bool = True


@dataclass
class OracleConfig:
    kind: str = "simulated"  # simulated | files
    allow_partial: bool = False
    # how exported Label Studio tasks reference their image: path | local-files | backend | http(s)://PREFIX
    image_url: str = "path"
    document_root: str = ""  # LOCAL_FILES_DOCUMENT_ROOT (local-files), or the folder an http(s) prefix serves
    backend_url: str = "http://127.0.0.1:9090"  # where `python -m raal.serve` listens (image_url=backend)
    annotations: str = "majority"  # several annotations of one task: majority | unanimous | first


@dataclass
class RayConfig:
    address: str = ""  # "" = RAY_ADDRESS or a private local Ray; "auto" = attach to a running cluster
    num_cpus: int = 0  # local Ray only; 0 = all cores


@dataclass
class TrackConfig:
    """Experiment tracking (raal/tracking.py). `track=none` on the command line is short for track.kind=none."""
    kind: str = "mlflow"  # mlflow | none
    mlflow_uri: str = ""  # "" = a local file store in the run dir (<run_dir>/mlruns)
    experiment: str = ""  # MLflow experiment name ("" = the config's name)


@dataclass
class LogConfig:
    """The console shows raal's own lines; everything goes to <run_dir>/raal.log (raal/console.py)."""
    level: str = "INFO"  # raal.log's level: DEBUG | INFO | WARNING | ERROR
    verbose: bool = False  # also show every log line (raal's and Ray's) on the console; same as -v


@dataclass
class RunConfig:
    name: str = "demo"
    run_dir: str = ""  # local path or pyarrow.fs URI ("" = runs/<name>)
    report: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    al: ALConfig = field(default_factory=ALConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    asvp: ASVPConfig = field(default_factory=ASVPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    log: LogConfig = field(default_factory=LogConfig)


MAIN_KEYS = (
    "run_dir", "data.source", "data.root", "data.pool_size", "data.image_size", "model.arch", "model.weights",
    "al.pipeline", "al.strategy", "al.initial", "al.schedule", "al.seed", "proxy.lr", "train.method",
    "asvp.threshold", "eval.every_round", "eval.final", "oracle.kind",
)


def conf_dir() -> Path:
    """The folder of named configs: $RAAL_CONF_DIR, else ./conf, else the repository's conf/."""
    env = os.environ.get("RAAL_CONF_DIR")
    if env:
        return Path(env)
    cwd = Path.cwd() / "conf"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "conf"


def is_sweep_config(path: Path) -> bool:
    """A Ray Tune sweep file (top-level `tune:`), run by `python -m raal.tune`, not by `raal.run`."""
    return any(line.startswith("tune:") for line in path.read_text().splitlines())


def available_configs(sweeps: bool = False) -> list[str]:
    """Run configs in conf/ (or, with `sweeps`, the sweep files)."""
    d = conf_dir()
    return sorted(p.stem for p in d.glob("*.yaml") if is_sweep_config(p) == sweeps) if d.is_dir() else []


_SCHEDULE_TERM = re.compile(r"^\[\s*(\d+(?:\s*,\s*\d+)*)\s*\](?:\s*\*\s*(\d+))?$")


def parse_schedule(text: str) -> list[int]:
    """Parse a query schedule written as in the paper, e.g. "[200]*10+[500]*8" or "[100,200]+[50]*2".

    No eval(): a config string is untrusted input.
    """
    text = str(text).strip()
    if not text:
        return []
    sizes: list[int] = []
    for term in text.split("+"):
        m = _SCHEDULE_TERM.match(term.strip())
        if not m:
            raise ConfigError(f"al.schedule: cannot parse {term.strip()!r} in {text!r}; "
                              "allowed: terms like [200]*10 or [100,200] joined by +")
        values = [int(v) for v in m.group(1).split(",")]
        sizes.extend(values * int(m.group(2) or 1))
    return sizes


def parse_overrides(overrides: list[str], schema: DictConfig | None = None) -> DictConfig:
    """`a.b=c` strings -> a config. Values are YAML scalars/lists, except for string-typed keys, which take the
    text as written (so `al.schedule=[200]*10+[500]*8` needs no quoting)."""
    import yaml

    schema = schema if schema is not None else OmegaConf.structured(RunConfig)
    out = OmegaConf.create()
    for item in overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        if key in ("track", "log"):  # `track=none`, `log=DEBUG`: the section's main key
            key = {"track": "track.kind", "log": "log.level"}[key]
        if not key or not _:
            raise ConfigError(f"{item!r}: overrides must look like key=value (e.g. al.seed=1)")
        try:
            default = OmegaConf.select(schema, key, throw_on_missing=False)
        except OmegaConfBaseException:
            default = None
        if isinstance(default, str):
            value = text
        else:
            try:
                value = yaml.safe_load(text) if text != "" else ""
            except yaml.YAMLError:
                value = text
        _check_shape(key, text, default, value)
        try:
            OmegaConf.update(out, key, value, force_add=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {_one_line(err)}") from err
    return out


def _check_shape(key: str, text: str, default: Any, value: Any) -> None:
    """Refuse what OmegaConf would coerce or fail on without naming the key: 2 for a boolean, a scalar for a list,
    a list or mapping for a scalar, a value for a whole section."""
    if isinstance(default, DictConfig):
        want = "a section: set its keys one by one, e.g. data.source=parquet" if not isinstance(value, dict) else ""
    elif isinstance(default, ListConfig):
        want = "a list, e.g. [1, 2]" if not isinstance(value, list) else ""
    elif isinstance(default, bool):  # OmegaConf would take 2 or "1" as true
        want = "true or false" if not isinstance(value, bool) else ""
    else:
        want = "a single value" if isinstance(value, (dict, list)) and default is not None else ""
    if want:
        raise ConfigError(f"{key}={text!r} is not allowed; expected {want}")


def _load_named(name: str, seen: list[str]) -> DictConfig:
    """conf/NAME.yaml, merged over the config its `base:` key names (recursively), without the `base` key."""
    path = conf_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"conf={name}: no such config; available: {', '.join(available_configs()) or 'none'}")
    if name in seen:
        raise ConfigError(f"conf={name}: circular base: {' -> '.join(seen + [name])}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # malformed YAML
        raise ConfigError(f"conf={name}: {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"conf={name}: {path} must hold a mapping of keys")
    base = cfg.pop("base", None)
    if base:
        cfg = OmegaConf.merge(_load_named(str(base), seen + [name]), cfg)
    return cfg


def _one_line(err: OmegaConfBaseException) -> str:
    msg = str(err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {msg}" if key and not msg.startswith(str(key)) else msg


def load_config(name: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load `conf/NAME.yaml` over the schema, apply `a.b=c` overrides, validate; return a typed RunConfig.

    Raises ConfigError with one line naming the key for anything wrong.
    """
    name = name or "demo"
    if name in available_configs(sweeps=True):
        raise ConfigError(f"conf={name!r} is a Ray Tune sweep; run it with: python -m raal.tune conf={name}")
    schema = OmegaConf.structured(RunConfig)
    file_cfg = _load_named(name, [])
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"{item!r}: overrides must look like key=value (e.g. al.seed=1)")
    try:
        merged = OmegaConf.merge(schema, file_cfg, parse_overrides(overrides, schema))
        cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    if not any(o.startswith("name=") for o in overrides):
        cfg.name = name  # a config derived with `base:` is still known by its own name
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def validate(cfg: RunConfig) -> None:
    """Semantic checks the schema cannot express. Pool-size checks happen in `validate_against_pool`."""
    import math

    from raal import strategies

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
    _check(cfg.embed.batch_size > 0, "embed.batch_size", "must be > 0", cfg.embed.batch_size)
    _check(cfg.embed.num_actors >= 0, "embed.num_actors", "must be >= 0 (0 = auto)", cfg.embed.num_actors)
    a = cfg.al
    _check(a.pipeline in PIPELINES, "al.pipeline", f"allowed: {', '.join(PIPELINES)}", a.pipeline)
    known = strategies.names()
    _check(a.strategy in known, "al.strategy", f"allowed: {', '.join(known)}", a.strategy)
    _check(not a.balanced or strategies.accepts(a.strategy, "balanced"), "al.balanced",
           f"only strategies that rank by a score accept it ({', '.join(strategies.accepting('balanced'))})",
           f"{a.balanced} with al.strategy={a.strategy}")
    for arm in a.compare:
        parts = str(arm).split("/")
        _check(len(parts) == 2 and parts[0] in PIPELINES and parts[1] in known, "al.compare",
               f"entries look like pipeline/strategy with pipeline in {PIPELINES} and strategy in {known}", arm)
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
    _check(e.freeze_blocks == -1 or e.freeze_blocks >= 1, "eval.freeze_blocks", "must be -1 (auto) or >= 1",
           e.freeze_blocks)
    _check(min(e.backbone_lr, e.head_lr, e.ft_head_lr) > 0 and e.weight_decay >= 0 and e.probe_l2 >= 0
           and 0 <= e.warmup_frac < 1, "eval", "learning rates must be > 0, weight_decay and probe_l2 >= 0, "
           "warmup_frac in [0, 1)", (e.backbone_lr, e.head_lr, e.ft_head_lr, e.weight_decay, e.warmup_frac))
    _check(cfg.asvp.logme_variant in ("fast", "exact"), "asvp.logme_variant", "allowed: fast, exact",
           cfg.asvp.logme_variant)
    _check(cfg.asvp.threshold >= 0, "asvp.threshold", "must be >= 0", cfg.asvp.threshold)
    _check(cfg.asvp.rule in ("gain", "delta"), "asvp.rule", "allowed: gain, delta", cfg.asvp.rule)
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
    import math

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
    budget = cfg.al.initial + sum(parse_schedule(cfg.al.schedule))
    if budget > pool_size:
        raise ConfigError(f"al.schedule: the budget (al.initial={cfg.al.initial} + schedule "
                          f"{cfg.al.schedule!r} = {budget}) is larger than the pool ({pool_size} items)")


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_yaml(text: str) -> RunConfig:
    """Read back a resolved config written by `to_yaml` (for resume checks and the report).

    A stored config is input too (a run dir may be damaged or hand-edited): anything that is not a mapping of known,
    well-typed keys is a one-line ConfigError."""
    import yaml

    try:
        data = OmegaConf.create(text)
        if not isinstance(data, DictConfig):
            kind = type(OmegaConf.to_object(data)).__name__
            raise ConfigError(f"the stored config is a {kind}, not a mapping of keys")
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"the stored config is not valid YAML: {str(err).splitlines()[0]}") from err


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` with `key=value` overrides applied and the result validated (a resume with changed settings): the same
    one-line ConfigError as `load_config` for an unknown key, a wrong type or a value out of range."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), parse_overrides(overrides))
        out: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    validate(out)
    return out


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        full = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_keys(va, vb, full + "."))
        elif va != vb:
            out.append(full)
    return out


def as_dictconfig(cfg: RunConfig) -> DictConfig:
    return OmegaConf.structured(cfg)
