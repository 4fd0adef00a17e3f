"""The config schema: one dataclass per section, every knob of raal with its default and allowed values.

A Ray Tune sweep or a user changes any key by its dotted name (`raal.config` loads, overrides and validates them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

DATA_SOURCES = ("animal_mnist", "image_folder", "parquet")
# The pipelines and strategies a config may name. The config owns these names so that it never imports the code
# behind them (pipelines pull torch and Ray); raal.pipelines.registry and raal.strategies check themselves against
# them when imported, so a pipeline or strategy added on one side only fails at once.
PIPELINES = ("standard", "svpp", "asvp", "activeft", "peal")
STRATEGIES = ("activeft", "activeft_al", "badge", "cluster_margin", "confidence", "coreset", "dropquery", "entropy",
              "featdist", "kmeans_centroid", "margin", "probcover", "random", "typiclust")  # sorted
BALANCED_STRATEGIES = ("confidence", "entropy", "margin")  # those that rank by a score take al.balanced
TRAIN_METHODS = ("ft", "lpft")
DEVICES = ("auto", "cpu", "cuda")
AUTOCAST_MODES = ("bf16", "fp16", "none")
ORACLES = ("simulated", "files")
ANNOTATION_POLICIES = ("majority", "unanimous", "first")
IMAGE_URL_MODES = ("path", "local-files", "backend")
EVAL_MODES = ("evaluator", "proxy", "ft", "lpft")
INITIAL_STRATEGIES = ("random", "typiclust", "probcover", "kmeans_centroid", "activeft")
STOP_MODES = ("schedule", "advice")
CANDIDATE_MODES = ("all", "seals")  # al.candidates: what the strategies of the AL arms choose from
SHARDED_PIPELINES = ("svpp", "asvp")  # al.select_workers > 0: the pipelines whose proxy scores the pool on workers
SHARDED_STRATEGIES = ("confidence", "coreset", "entropy", "margin")  # ... and the strategies that have a merge


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
    warm: bool = True  # keep the embedding actors alive across the passes of a run (raal/features/_pool.py)


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
    # all: every round's strategy chooses from the whole unlabeled pool. seals: from the `candidates_k` nearest
    # neighbours of each labeled item (SEALS), kept incrementally on an IVF index of the v0 features, so rounds after
    # the first never score the whole pool; the random baseline and random arms stay on the whole pool
    # (docs/selection.md#seals-candidates-and-cluster-margin)
    candidates: str = "all"
    candidates_k: int = 100
    # 0: svpp/asvp score the pool in the driver's process. N > 0: N Ray tasks (one CPU each) each read a contiguous
    # part of the pool's feature shards from the run store, run the proxy there and return only their candidates;
    # the driver merges them: the exact picks for margin/confidence/entropy (balanced too), composable greedy
    # k-center for coreset (docs/selection.md#selection-spread-over-ray-workers). Arms with other strategies select
    # in process.
    select_workers: int = 0
    # 0: coreset arms run exact greedy k-center on their embeddings. N > 0: on the embeddings times a fixed Gaussian
    # random projection to N dimensions (when N is below the embeddings' width): D/N times less work per distance and
    # an N-wide copy in memory instead of re-reading the pool; each distance kept within about sqrt(2/N) (12.5% at
    # 128); the k-center objective, measured in the original space, has stayed within about 1.1x exact greedy's
    # (bench/scale_million.py). On workers too (al.select_workers). Needs a coreset arm
    # (docs/selection.md#coreset-at-scale-alcoreset_dim)
    coreset_dim: int = 0


@dataclass
class ProxyConfig:
    """The MLP proxy of SVPp/ASVP: trained on the pre-computed features, it ranks the pool in their place."""

    epochs: int = 50
    batch_size: int = 2048
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    device: str = "auto"
    score_batch_size: int = 16384


@dataclass
class TrainConfig:
    """FT / LP-FT of the backbone (linear probe first, then the whole network): one-worker jobs on the run's warm
    training actor, DDP jobs as Ray Train fits."""

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
    lpft_head_lr: float | None = 1e-3  # LP-FT's own FT-stage recipe (None = the FT value above): its head
    # starts converged, so it moves more slowly than FT's fresh one
    lpft_backbone_lr: float | None = None
    lpft_weight_decay: float | None = None
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
    warm: str = "auto"  # auto: one-worker jobs on the run's warm training actor (raal/train/_warm.py) | off: Ray Train


@dataclass
class LoraConfig:
    """PEAL's LoRA adapters: low-rank updates of the attention projections, trained with a linear head."""

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
    """The ASVP refresh trigger: when to re-embed the pool with a fine-tuned backbone (the `gain` rule:
    docs/asvp_trigger.md).

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
    rule: str = "gain"  # gain | delta (legacy) | at (refresh at `refresh_at`) | never
    refresh_at: list[int] = field(default_factory=list)  # rule "at": labeled-set sizes after which to refresh
    # the final model's method: rule (LP-FT until a refresh, FT after) | ft | lpft | holdout (both fitted on 80 %
    # of the labeled set, the better on the other 20 % wins: raal/pipelines/switch.py)
    switch: str = "rule"
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
    # keep every fit's model in the run store beside its memo record (eval_memo/<key>.pt; MobileNetV2: ~9 MB a
    # fit), so that another run seeded with these records (a benchmark's forced-refresh arm) reuses the model too
    memo_models: bool = False


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
    """The console shows raal's own lines; everything goes to <run_dir>/raal.log (raal/logs.py)."""
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

