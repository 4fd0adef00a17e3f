"""The structured config: load a named YAML config over the schema, apply `key=value` overrides, validate.

Every RunConfig is made along one path — `load_config` (a new run) or `apply_overrides` (a resume with changed
settings, every Ray Tune trial) — and both end in `validate`, so a typo is caught before any work starts
(`ConfigError`, one line naming the key and what is allowed). The schema lives in `_schema`, the checks in
`_validate`; `raal.config` re-exports all three.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from raal.config._schema import RunConfig
from raal.config._validate import validate
from raal.errors import ConfigError

#: YAML nodes a config text may expand to once its aliases are followed (a run config has ~250; issue #26)
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 32  # nested [ and { (a config nests 3 deep; YAML's recursive parser is slow and fails near 500)


def check_yaml_text(text: str, where: str) -> None:
    """Bound a config text before YAML or OmegaConf evaluates it: a one-line ConfigError, never a hang or MemoryError.

    Two YAML/OmegaConf features expand a short text without limit, and raal uses neither: anchors and aliases
    (ten nested lists of ten aliases are 10**10 items once OmegaConf copies them) and `${...}` interpolations (keys
    that interpolate each other several times over resolve to gigabytes). Interpolations are refused; aliases are
    counted on YAML's node graph (shared, so composing is cheap) up to MAX_YAML_NODES visits, in O(that) time;
    flow nesting past MAX_YAML_DEPTH is refused before YAML's recursive parser sees it.
    """
    if "${" in text:
        raise ConfigError(f"{where}: interpolations (${{...}}) are not supported in a config; write the value out")
    depth = deepest = 0
    for ch in text:  # flow nesting, counted on the raw text (quotes ignored: this only ever over-counts)
        depth += (ch in "[{") - (ch in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: nested too deeply (more than {MAX_YAML_DEPTH} levels of [ or {{)")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # not YAML: the caller's own parser says so (or takes the text as written)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    stack = [] if root is None else [root]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise ConfigError(f"{where}: expands to more than {MAX_YAML_NODES} values (YAML anchors and aliases); "
                              "write the values out")
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)


def conf_dir() -> Path:
    """The folder of named configs: $RAAL_CONF_DIR, else ./conf, else the repository's conf/."""
    env = os.environ.get("RAAL_CONF_DIR")
    if env:
        return Path(env)
    cwd = Path.cwd() / "conf"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parents[2] / "conf"  # raal/config/_load.py -> the repository


def is_sweep_config(path: Path) -> bool:
    """A Ray Tune sweep file (top-level `tune:`), run by `python -m raal.tune`, not by `raal.run`."""
    return any(line.startswith("tune:") for line in path.read_text().splitlines())


def available_configs(sweeps: bool = False) -> list[str]:
    """Run configs in conf/ (or, with `sweeps`, the sweep files)."""
    d = conf_dir()
    return sorted(p.stem for p in d.glob("*.yaml") if is_sweep_config(p) == sweeps) if d.is_dir() else []


def parse_overrides(overrides: list[str], schema: DictConfig | None = None) -> DictConfig:
    """`a.b=c` strings -> a config. Values are YAML scalars/lists, except for string-typed keys, which take the
    text as written (so `al.schedule=[200]*10+[500]*8` needs no quoting)."""

    schema = schema if schema is not None else OmegaConf.structured(RunConfig)
    out = OmegaConf.create()
    for item in overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        if key in ("track", "log"):  # `track=none`, `log=DEBUG`: the section's main key
            key = {"track": "track.kind", "log": "log.level"}[key]
        if not key or not _:
            raise ConfigError(f"{item!r}: overrides must look like key=value (e.g. al.seed=1)")
        check_yaml_text(text, key)
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
    check_yaml_text(path.read_text(encoding="utf-8", errors="replace"), f"conf={name}: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # malformed YAML
        raise ConfigError(f"conf={name}: {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"conf={name}: {path} must hold a mapping of keys")
    base = cfg.pop("base", None)
    if base:
        cfg = cast(DictConfig, OmegaConf.merge(_load_named(str(base), seen + [name]), cfg))  # a dict merged onto a dict
    return cfg


def _one_line(err: OmegaConfBaseException) -> str:
    msg = str(err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {msg}" if key and not msg.startswith(str(key)) else msg


def load_config(name: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load `conf/NAME.yaml` over the schema, then `apply_overrides` (which validates); return a typed RunConfig.

    Raises ConfigError with one line naming the key for anything wrong.
    """
    name = name or "demo"
    if name in available_configs(sweeps=True):
        raise ConfigError(f"conf={name!r} is a Ray Tune sweep; run it with: python -m raal.tune conf={name}")
    file_cfg = _load_named(name, [])
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"{item!r}: overrides must look like key=value (e.g. al.seed=1)")
    try:
        cfg: RunConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), file_cfg))  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    cfg.name = name  # a config derived with `base:` is still known by its own name (a `name=` override wins)
    return apply_overrides(cfg, overrides)


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_yaml(text: str) -> RunConfig:
    """Read back a resolved config written by `to_yaml` (for resume checks and the report).

    A stored config is input too (a run dir may be damaged or hand-edited): anything that is not a mapping of known,
    well-typed keys is a one-line ConfigError."""

    check_yaml_text(text, "the stored config")
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


def apply_overrides(cfg: RunConfig, overrides: list[str] | Mapping[str, Any], *, where: str = "") -> RunConfig:
    """`cfg` with overrides applied and the result validated: the one way a RunConfig is changed (a new run's
    command line, a resume with changed settings, a Ray Tune trial's parameters).

    `overrides` is either `key=value` text (values read as YAML, string keys as written) or a mapping of dotted keys
    to values that are typed already (a sweep's parameters); `where` prefixes the keys in error messages (e.g.
    "tune.params."). Anything wrong is one ConfigError naming the key."""
    dc = OmegaConf.structured(cfg)
    try:
        if isinstance(overrides, Mapping):
            _set_typed(dc, overrides, where)
        else:
            dc = OmegaConf.merge(dc, parse_overrides(list(overrides)))
        out: RunConfig = OmegaConf.to_object(dc)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}{_one_line(err)}" if where else _one_line(err)) from err
    validate(out)
    return out


def _set_typed(dc: DictConfig, values: Mapping[str, Any], where: str) -> None:
    """Set each dotted key of `dc` to its (already typed) value; the schema checks the type, naming the key."""
    for key, value in values.items():
        if isinstance(value, str) and "${" in value:  # a sweep's values are typed already; strings stay literal
            raise ConfigError(f"{where}{key}: interpolations (${{...}}) are not supported in a config; "
                              "write the value out")
        try:
            node = OmegaConf.select(dc, key, throw_on_missing=False)
        except OmegaConfBaseException:
            node = None
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(dc, parent_key) if parent_key else dc
        if not isinstance(parent, DictConfig) or leaf not in parent:
            raise ConfigError(f"{where}{key}: no such config key")
        if isinstance(node, DictConfig):
            raise ConfigError(f"{where}{key}: names a whole section; set its keys one by one")
        try:
            OmegaConf.update(dc, key, ListConfig(value) if isinstance(value, list) else value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}{key}={value!r}: {str(err).strip().splitlines()[0]}") from err


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
