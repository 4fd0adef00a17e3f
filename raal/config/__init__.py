"""raal's configuration: the schema, loading `conf=NAME` with `key=value` overrides, and validation.

The bottom of raal's layers (docs/architecture.md): config imports nothing of raal but its leaves, so every layer
above can read a RunConfig. Its modules are private: `_schema` (the dataclasses and the allowed values, the
pipeline and strategy names included), `_load` (YAML, overrides) and `_validate` (the one place a value is judged).
"""
from raal.config._load import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    apply_overrides,
    available_configs,
    check_yaml_text,
    conf_dir,
    diff_keys,
    from_yaml,
    is_sweep_config,
    load_config,
    parse_overrides,
    to_dict,
    to_yaml,
)
from raal.config._schema import (
    ANNOTATION_POLICIES,
    AUTOCAST_MODES,
    BALANCED_STRATEGIES,
    CANDIDATE_MODES,
    DATA_SOURCES,
    DEVICES,
    EVAL_MODES,
    IMAGE_URL_MODES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INITIAL_STRATEGIES,
    MAIN_KEYS,
    ORACLES,
    PIPELINES,
    SHARDED_PIPELINES,
    SHARDED_STRATEGIES,
    STOP_MODES,
    STRATEGIES,
    TRAIN_METHODS,
    ALConfig,
    ASVPConfig,
    CostConfig,
    DataConfig,
    EmbedConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    MetricsConfig,
    ModelConfig,
    OracleConfig,
    PEDConfig,
    ProxyConfig,
    RayConfig,
    RunConfig,
    StoppingConfig,
    TrackConfig,
    TrainConfig,
)
from raal.config._validate import (
    MAX_NUMBER_DIGITS,
    MAX_ROUNDS,
    MAX_SCHEDULE_CHARS,
    NUMERIC_RANGES,
    parse_schedule,
    schedule_labels,
    validate,
    validate_against_pool,
)
from raal.errors import ConfigError

__all__ = [
    "ANNOTATION_POLICIES", "AUTOCAST_MODES", "BALANCED_STRATEGIES", "CANDIDATE_MODES", "DATA_SOURCES", "DEVICES",
    "EVAL_MODES", "IMAGE_URL_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "INITIAL_STRATEGIES", "MAIN_KEYS",
    "MAX_NUMBER_DIGITS", "MAX_ROUNDS", "MAX_SCHEDULE_CHARS", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "NUMERIC_RANGES",
    "ORACLES", "PIPELINES", "SHARDED_PIPELINES", "SHARDED_STRATEGIES", "STOP_MODES", "STRATEGIES", "TRAIN_METHODS",
    "ALConfig", "ASVPConfig", "ConfigError", "CostConfig", "DataConfig", "EmbedConfig", "EvalConfig", "LogConfig",
    "LoraConfig", "MetricsConfig", "ModelConfig", "OracleConfig", "PEDConfig", "ProxyConfig", "RayConfig", "RunConfig",
    "StoppingConfig", "TrackConfig", "TrainConfig",
    "apply_overrides", "available_configs", "check_yaml_text", "conf_dir", "diff_keys", "from_yaml", "is_sweep_config", "load_config",
    "parse_overrides", "parse_schedule", "schedule_labels", "to_dict", "to_yaml", "validate", "validate_against_pool",
]
