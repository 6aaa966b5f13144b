"""Typed hierarchical config: defaults declared in code, YAML files and `KEY VALUE` pairs override.

Every component declares its keys (with a type, a default, a comment and, where it has one, a rule) in an
`add_<x>_config(cfg)` function beside the code that reads them. `build_defaults(hooks)` builds the default tree from
an ordered list of those hooks (the project's list: runs/config.py); `merge_config(defaults, path, opts)` merges a
YAML file (with `_BASE_` inheritance) and command-line pairs, type- and range-checks every value and freezes the
result. This module is the mechanism only: it imports nothing of the project above utils/.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode

from utils.errors import UserError
from utils.textfiles import read_text

# `_BASE_` is ours (and detectron2's); the other three are CLIP-FSAR's spellings of the same thing.
BASE_KEYS = ("_BASE_", "_BASE", "_BASE_RUN", "_BASE_MODEL")

class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names the file and key."""

    exit_code = 3
    family = "config"


class CfgNode(_FvcoreCfgNode):
    """fvcore's CfgNode (yacs) with our loading rules; see `merge_config`."""


def section(cfg: CfgNode, name: str) -> CfgNode:
    """Return `cfg.<name>`, creating an empty section when a component is the first to add to it."""
    if name not in cfg:
        cfg[name] = CfgNode()
    return cfg[name]


# ---------------------------------------------------------------------------------------------
# Value rules: ranges and normalisations declared beside the keys, checked with the types.


@dataclass(frozen=True)
class Rule:
    """What a key's value must satisfy beyond its type (`text` completes "must be ..."), and an optional
    normalisation applied after the check (paths expand `~`)."""

    text: str
    ok: Callable[[Any], bool]
    normalise: Callable[[Any], Any] | None = None


POSITIVE = Rule("> 0", lambda v: v > 0)
NON_NEGATIVE = Rule(">= 0", lambda v: v >= 0)
PROBABILITY = Rule("in [0, 1]", lambda v: 0 <= v <= 1)
SEED = Rule("in [0, 2**63)", lambda v: 0 <= v < 2**63)  # what torch.manual_seed and a torch.Generator accept
# Paths: `~` expands as in `_BASE_`; a value that starts with '-' is a forgotten value followed by a flag.
PATH = Rule("a path (not a flag)", lambda v: not v.startswith("-"), os.path.expanduser)
RUN_FOLDER = Rule("a non-empty folder path (not a flag)", lambda v: bool(v.strip()) and not v.startswith("-"),
                  os.path.expanduser)


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in choices)


def length(n: int) -> Rule:
    return Rule(f"a list of {n} values", lambda v: len(v) == n)


def each(rule: Rule) -> Rule:
    """Apply `rule` to every element of a list value."""
    return Rule(f"a list whose values are {rule.text}", lambda v: all(rule.ok(x) for x in v))


def both(*rules: Rule) -> Rule:
    return Rule(" and ".join(r.text for r in rules), lambda v: all(r.ok(v) for r in rules))


_RULES: dict[str, Rule] = {}


def rules(section_name: str, **key_rules: Rule) -> None:
    """Declare rules for keys of `section_name` ("" for top-level keys), next to their defaults."""
    prefix = f"{section_name}." if section_name else ""
    for key, rule in key_rules.items():
        _RULES[prefix + key] = rule


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
    rules("", NUM_GPUS=POSITIVE, NUM_SHARDS=POSITIVE, OUTPUT_DIR=RUN_FOLDER, RANDOM_SEED=SEED,
          LOG_PERIOD=POSITIVE, DIST_BACKEND=one_of("auto", "nccl", "gloo"), DEVICE=one_of("auto", "cpu", "cuda"))
    return _C


def build_defaults(hooks: Iterable[Callable[[CfgNode], None]]) -> CfgNode:
    """The full default tree (unfrozen): base keys plus each hook's section, in the order given.

    The project's one ordered list of hooks lives at the top of the stack (runs/config.py); this module only
    provides the mechanism and imports nothing of the project."""
    cfg = _base_defaults()
    for hook in hooks:
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


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"{line}: duplicate key {key!r} (first on line {first_line}; YAML would keep the last "
                         f"silently)")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """Explicit keys given twice are refused; a key merged in by `<<` is overridden by an explicit one, as YAML says
    (so the check runs before the merge is flattened in)."""
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            if key in first:
                raise _DuplicateKey(key, line, first[key])
            first[key] = line
        except TypeError:  # an unhashable key: the base constructor reports it
            pass
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates)


class _NoAliasLoader(_Loader):
    """What config files and command-line values are read with: an alias (`*a`) is refused where it is met, before
    anything is expanded, so a billion-laughs file costs nothing (and settings are shared with `_BASE_`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML alias *{event.anchor}: config files do not use anchors and aliases; write the "
                f"value out, or share settings between files with _BASE_", event.start_mark)
        return super().compose_node(parent, index)


def parse_literal(text: str, aliases: bool = False) -> Any:
    """Parse one YAML scalar/list literal as the command line and YAML files do (aliases refused unless allowed)."""
    return yaml.load(text, Loader=_Loader if aliases else _NoAliasLoader)


def _yaml_error(path: str, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return ConfigError(f"{where}: invalid YAML ({problem})")


def _read_yaml(path: str) -> dict:
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file (pass a .yaml file)")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    text = read_text(path, "config file", ConfigError)
    try:
        data = parse_literal(text)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except _DuplicateKey as e:
        raise ConfigError(f"{path}:{e}") from None
    if data is None:
        raise ConfigError(f"{path}: config file is empty (a config sets at least one key or names a _BASE_)")
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


def all_sections(cfg: CfgNode, prefix: str = "") -> list[str]:
    """Every section's dotted name (`VIDEO`, `VIDEO.HEAD`, ...)."""
    out = []
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            out += [f"{prefix}{key}", *all_sections(value, f"{prefix}{key}.")]
    return out


def _parent(key: str) -> str:
    return key.rpartition(".")[0]


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def _close_leaf(leaf: str, known: str) -> bool:
    """`known` is what `leaf` was likely meant to be: the same words but for a typo in one of them (`SHOTS`,
    `WARMUP_EPOCH`), the same letters but for underscores (`BASELR`), or one word left out or added after the first
    (`DATA_ROOT`, `NUM_FRAMES`). A different word (`TEST_SET` / `CACHE_SIZE`, `BATCH_SIZE` / `CACHE_SIZE`,
    `SAMPLING_MODE` / `SAMPLING_RATE`) is another key, not a typo of this one."""
    if leaf.replace("_", "") == known.replace("_", ""):
        return True
    a, b = leaf.split("_"), known.split("_")
    if len(a) == len(b):
        differ = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        return len(differ) == 1 and difflib.SequenceMatcher(None, *differ[0]).ratio() >= 0.8
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    if len(long_) - len(short) != 1:
        return False
    return any(long_[:i] + long_[i + 1:] == short for i in range(1, len(long_)))


def close_key(full_key: str, keys: list[str]) -> str | None:
    """The known key an unknown one was probably meant to be, or None (a hint only when it is close).

    Within the key's own section (or a section name one typo away, `SOVLER`); a key written in the wrong place
    (`WAY` at the top level, `DATA_LOADER.NUM_WORKERS`) gets the one known key with exactly its last part, if that
    part is not a generic word (`MODEL.NAME`)."""
    parent, leaf = _parent(full_key), _leaf(full_key)
    sections = {_parent(k) for k in keys}
    if parent in sections:
        candidates = [parent]
    else:
        candidates = difflib.get_close_matches(parent, [s for s in sections if s], n=1, cutoff=0.8)
    for section_name in candidates:
        close = [k for k in keys if _parent(k) == section_name and _close_leaf(leaf, _leaf(k))]
        if close:  # the most similar, then the first declared
            return max(close, key=lambda k: difflib.SequenceMatcher(None, leaf, _leaf(k)).ratio())
    if parent and (candidates or "_" not in leaf):
        return None  # a known section without a close key, or a generic name (MODEL.NAME): no guess from
        # elsewhere (TRAIN.BATCH_SIZE is not PRETRAIN.BATCH_SIZE)
    same_leaf = [k for k in keys if _leaf(k) == leaf]
    return same_leaf[0] if len(same_leaf) == 1 else None


def _unknown_key_error(root: CfgNode, unknown: list[tuple[str, str]]) -> ConfigError:
    """One error for every unknown `(key, source)`, grouped by source, each with a hint where one is close."""
    keys = all_keys(root) + all_sections(root)
    by_source: dict[str, list[str]] = {}
    for full_key, source in unknown:
        close = close_key(full_key, keys)
        by_source.setdefault(source, []).append(full_key + (f" (did you mean {close}?)" if close else ""))
    parts = []
    for source, names in by_source.items():
        shown = names[:_SHOWN_UNKNOWN] + ([f"and {len(names) - _SHOWN_UNKNOWN} more"]
                                          if len(names) > _SHOWN_UNKNOWN else [])
        parts.append(f"{source}: unknown config key{'s' if len(names) > 1 else ''} {', '.join(shown)}")
    err = ConfigError("; ".join(parts))
    err.unknown_keys = [k for k, _ in unknown]
    return err


_SHOWN_UNKNOWN = 8  # unknown keys named per file in the one-line error (the rest are counted)


def _section_error(node: CfgNode, full_key: str, source: str, value: Any) -> ConfigError:
    shown = ", ".join(list(node)[:4]) + (", ..." if len(node) > 4 else "")
    return ConfigError(f"{source}: {full_key} is a section ({shown}), got a value {value!r}; set one of its keys, "
                       f"e.g. {full_key}.{next(iter(node), 'KEY')}")


def coerce(default: Any, value: Any, full_key: str, source: str) -> Any:
    """`value` converted to the type of `default` and checked against the key's rule (floats must be finite),
    or a ConfigError naming the key."""
    value = _coerce_type(default, value, full_key, source)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {full_key} must be a finite number, got {value!r}")
    rule = _RULES.get(full_key)
    if rule is None:
        return value
    if not rule.ok(value):
        raise ConfigError(f"{source}: {full_key} must be {rule.text}, got {value!r}")
    return rule.normalise(value) if rule.normalise else value


def _coerce_type(default: Any, value: Any, full_key: str, source: str) -> Any:
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


def merge_dict(cfg: CfgNode, data: dict, prefix: str = "", root: CfgNode | None = None,
               unknown: list[tuple[str, str]] | None = None) -> None:
    """Merge `{key: (value, source)}` leaves into `cfg` with key and type checks; every unknown key is named in one
    error after the known ones are merged."""
    top = unknown is None
    root = cfg if root is None else root
    unknown = [] if unknown is None else unknown
    invalid: list[ConfigError] = []  # a bad value is reported after the unknown keys, which may explain it
    for key, item in data.items():
        full_key = f"{prefix}{key}"
        if isinstance(item, dict):
            if key not in cfg or not isinstance(cfg[key], CfgNode):
                unknown.extend(_leaves(item, full_key) or [(full_key, "<config>")])
                continue
            try:
                merge_dict(cfg[key], item, full_key + ".", root, unknown)
            except ConfigError as e:
                invalid.append(e)
            continue
        value, source = item
        if key not in cfg:
            unknown.append((full_key, source))
            continue
        try:
            if isinstance(cfg[key], CfgNode):
                raise _section_error(cfg[key], full_key, source, value)
            cfg[key] = coerce(cfg[key], value, full_key, source)
        except ConfigError as e:
            invalid.append(e)
    if top and unknown:
        raise _unknown_key_error(root, unknown)
    if invalid:
        raise invalid[0]


def _leaves(item: dict, prefix: str) -> list[tuple[str, str]]:
    """`(full key, source)` of every leaf under an unknown section."""
    out = []
    for key, value in item.items():
        full_key = f"{prefix}.{key}"
        out.extend(_leaves(value, full_key) if isinstance(value, dict) else [(full_key, value[1])])
    return out


def merge_opts(cfg: CfgNode, opts: Iterable[str]) -> None:
    """Merge command-line `KEY VALUE` pairs, each value parsed as a YAML literal; unknown keys are named together."""
    opts = list(opts)
    _refuse_split_lists(opts)
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs, got an odd count: {opts}")
    unknown = []
    for full_key, text in zip(opts[0::2], opts[1::2], strict=True):
        node, parts = cfg, full_key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CfgNode):
                node = None
                break
            node = node[part]
        leaf = parts[-1]
        if node is None or leaf not in node:
            unknown.append((full_key, "command line"))
            continue
        if isinstance(node[leaf], CfgNode):
            raise _section_error(node[leaf], full_key, "command line", text)
        if text.startswith("--"):
            raise ConfigError(f"command line: {full_key} has no value ({text!r} is a flag); write {full_key} VALUE")
        try:
            value = parse_literal(text)
        except (yaml.YAMLError, _DuplicateKey) as e:
            raise ConfigError(f"command line: {full_key}: cannot parse {text!r} ({str(e).splitlines()[0]})") from None
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text  # a string key given `2024` or `true` means the text
        node[leaf] = coerce(node[leaf], value, full_key, "command line")
    if unknown:
        raise _unknown_key_error(cfg, unknown)


def _refuse_split_lists(opts: list[str]) -> None:
    """An unquoted `[72, 80]` reaches us as `[72,` and `80]`: say so, instead of calling `80]` a key."""
    for i in range(1, len(opts), 2):  # value positions, up to the first split list
        text = opts[i]
        if text.startswith(("[", "{")) and not text.endswith(("]", "}")):
            closing = "]" if text.startswith("[") else "}"
            end = next((j for j in range(i + 1, len(opts)) if opts[j].endswith(closing)), None)
            if end is not None:
                whole = " ".join(opts[i:end + 1])
                raise ConfigError(f"command line: {opts[i - 1]}: cannot parse {text!r} (the shell split a list at "
                                  f"its spaces: quote it, {opts[i - 1]} '{whole}', or write it without spaces, "
                                  f"{whole.replace(' ', '')})")


def merge_config(defaults: CfgNode, path: str | None = None, opts: Iterable[str] = (),
                 freeze: bool = True) -> CfgNode:
    """`defaults` <- YAML file (with bases) <- command-line pairs; frozen unless asked otherwise."""
    cfg = defaults
    if path:
        merge_dict(cfg, load_yaml_with_bases(path))
    merge_opts(cfg, opts)
    if freeze:
        cfg.freeze()
    return cfg


def config_from_text(defaults: CfgNode, text: str) -> CfgNode:
    """Rebuild a frozen config from `cfg.dump()` output (e.g. the copy stored in a checkpoint)."""
    data = parse_literal(text, aliases=True) or {}  # written by cfg.dump(), not by a user
    merge_dict(defaults, _origin_tag(data, "<stored config>"))
    defaults.freeze()
    return defaults
