"""Typed hierarchical config: defaults declared in code, YAML files and `KEY VALUE` pairs override.

Every component declares its keys (with a type, a default and a comment) in an `add_<x>_config(cfg)`
function beside the code that reads them and registers it with `@register_config`. `get_cfg()`
builds the full default tree; `load_config(path, opts)` merges a YAML file (with `_BASE_` inheritance)
and command-line pairs, type-checks every value against its default and freezes the result.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Callable, Iterable

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode

from utils.errors import UserError

# `_BASE_` is ours (and detectron2's); the other three are CLIP-FSAR's spellings of the same thing.
BASE_KEYS = ("_BASE_", "_BASE", "_BASE_RUN", "_BASE_MODEL")

_CONFIG_HOOKS: list[Callable[["CfgNode"], None]] = []


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names the file and key."""

    exit_code = 3
    family = "config"


class CfgNode(_FvcoreCfgNode):
    """fvcore's CfgNode (yacs) with our loading rules; see `load_config`."""


def register_config(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Register an `add_<x>_config(cfg)` hook; `get_cfg` calls all hooks in import order."""
    if fn not in _CONFIG_HOOKS:
        _CONFIG_HOOKS.append(fn)
    return fn


def section(cfg: CfgNode, name: str) -> CfgNode:
    """Return `cfg.<name>`, creating an empty section when a component is the first to add to it."""
    if name not in cfg:
        cfg[name] = CfgNode()
    return cfg[name]


def _base_defaults() -> CfgNode:
    _C = CfgNode()
    _C.NUM_GPUS = 1  # processes per node; > 1 without torchrun/SLURM spawns them (one per GPU, or CPU gloo)
    _C.NUM_SHARDS = 1  # nodes (for information; torchrun/SLURM variables are authoritative)
    _C.OUTPUT_DIR = "output/default"  # run folder: config.yaml, log.txt, metrics.jsonl, checkpoints/, results.json
    _C.RANDOM_SEED = 0  # seeds model init and, with (split, index), every episode
    _C.LOG_PERIOD = 10  # training iterations between console/metrics log lines
    _C.DIST_BACKEND = "auto"  # auto (nccl with CUDA, gloo otherwise), nccl or gloo
    _C.DEVICE = "auto"  # auto (cuda if available), cpu or cuda
    _C.DETERMINISTIC = False  # torch.use_deterministic_algorithms; bit-exact resume on CPU needs no more
    return _C


def get_cfg() -> CfgNode:
    """The full default config (unfrozen): base keys plus every registered component's section."""
    # Importing the packages registers their config hooks (plain imports; failures are loud).
    import datasets  # noqa: F401
    import models  # noqa: F401
    import runs  # noqa: F401

    cfg = _base_defaults()
    for hook in _CONFIG_HOOKS:
        hook(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# YAML reading: safe_load only, with YAML-1.2 floats (`5e-4` is a float, PyYAML 1.1 says string).


class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_literal(text: str) -> Any:
    """Parse one YAML scalar/list literal as the command line and YAML files do."""
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _origin_tag(d: dict, path: str) -> dict:
    """Remember which file set each leaf, so errors name the right file after merging."""
    out = {}
    for key, value in d.items():
        out[key] = _origin_tag(value, path) if isinstance(value, dict) else (value, path)
    return out


def load_yaml_with_bases(path: str, _stack: tuple[str, ...] = ()) -> dict:
    """Read `path`, resolve its bases (relative to the file naming them), deep-merge, child wins.

    Leaves are returned as `(value, file)` pairs.
    """
    path = os.path.abspath(path)
    if path in _stack:
        chain = " -> ".join(os.path.relpath(p) for p in (*_stack, path))
        raise ConfigError(f"{path}: _BASE_ cycle: {chain}")
    data = _read_yaml(path)
    merged: dict = {}
    for base_key in BASE_KEYS:
        if base_key not in data:
            continue
        bases = data.pop(base_key)
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str):
                raise ConfigError(f"{path}: {base_key} entries must be paths, got {base!r}")
            base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
            if not os.path.isfile(base_path):
                raise ConfigError(f"{path}: {base_key} file not found: {base} (looked at {base_path})")
            merged = _deep_merge(merged, load_yaml_with_bases(base_path, (*_stack, path)))
    return _deep_merge(merged, _origin_tag(data, path))


# ---------------------------------------------------------------------------------------------
# Merging values into the typed defaults.


def all_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.extend(all_keys(value, full + ".") if isinstance(value, CfgNode) else [full])
    return keys


def _unknown_key_error(root: CfgNode, full_key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(full_key, all_keys(root), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}: unknown config key {full_key}{hint}")


def coerce(default: Any, value: Any, full_key: str, source: str) -> Any:
    """Return `value` converted to the type of `default`, or raise a ConfigError naming the key."""
    def fail() -> ConfigError:
        return ConfigError(
            f"{source}: {full_key} expects {type(default).__name__} (default {default!r}), got {value!r}"
        )

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise fail()
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if default:  # typed elements: follow the first default element
            value = [coerce(default[0], v, f"{full_key}[{i}]", source) for i, v in enumerate(value)]
        return type(default)(value)
    raise fail()


def merge_dict(cfg: CfgNode, data: dict, prefix: str = "", root: CfgNode | None = None) -> None:
    """Merge `{key: (value, source)}` leaves into `cfg` with key and type checks."""
    root = cfg if root is None else root
    for key, item in data.items():
        full_key = f"{prefix}{key}"
        if isinstance(item, dict):
            if key not in cfg or not isinstance(cfg[key], CfgNode):
                source = _first_source(item)
                raise _unknown_key_error(root, full_key, source)
            merge_dict(cfg[key], item, full_key + ".", root)
            continue
        value, source = item
        if key not in cfg:
            raise _unknown_key_error(root, full_key, source)
        if isinstance(cfg[key], CfgNode):
            raise ConfigError(f"{source}: {full_key} is a section, got a value {value!r}")
        cfg[key] = coerce(cfg[key], value, full_key, source)


def _first_source(item: dict) -> str:
    for value in item.values():
        return _first_source(value) if isinstance(value, dict) else value[1]
    return "<config>"


def merge_opts(cfg: CfgNode, opts: Iterable[str]) -> None:
    """Merge command-line `KEY VALUE` pairs, each value parsed as a YAML literal."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs, got an odd count: {opts}")
    for full_key, text in zip(opts[0::2], opts[1::2], strict=True):
        node, parts = cfg, full_key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CfgNode):
                raise _unknown_key_error(cfg, full_key, "command line")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], CfgNode):
            raise _unknown_key_error(cfg, full_key, "command line")
        value = parse_literal(text)
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text  # a string key given `2024` or `true` means the text
        node[leaf] = coerce(node[leaf], value, full_key, "command line")


def load_config(path: str | None = None, opts: Iterable[str] = (), freeze: bool = True) -> CfgNode:
    """Defaults <- YAML file (with bases) <- command-line pairs; frozen unless asked otherwise."""
    cfg = get_cfg()
    if path:
        merge_dict(cfg, load_yaml_with_bases(path))
    merge_opts(cfg, opts)
    if freeze:
        cfg.freeze()
    return cfg


def config_from_yaml_text(text: str) -> CfgNode:
    """Rebuild a frozen config from `cfg.dump()` output (e.g. the copy stored in a checkpoint)."""
    cfg = get_cfg()
    data = parse_literal(text) or {}
    merge_dict(cfg, _origin_tag(data, "<stored config>"))
    cfg.freeze()
    return cfg
