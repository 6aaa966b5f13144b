"""Convert one of CLIP-FSAR's configs (alibaba-mmai-research/CLIP-FSAR) into a config of this project.

    python runs/convert_clipfsar_config.py CLIP-FSAR/configs/projects/CLIPFSAR/hmdb51/CLIPFSAR_HMDB51_1shot_v1.yaml \
        --out configs/mine/hmdb51_1shot.yaml [--anno-dir data/splits/hmdb51] [--benchmark hmdb51]
    python runs/run.py --cfg configs/mine/hmdb51_1shot.yaml

The lineage's file is read as its own `utils/config.py` reads it: the `_BASE` / `_BASE_RUN` / `_BASE_MODEL` chain
with its merge rules, over its implicit defaults `configs/pool/base.yaml` (found above the file in a CLIP-FSAR
checkout). Every key of the result is accounted for once, in one summary printed here and written as comments into
the output: mapped (the same meaning here, under our name), translated (what its code computes, in our keys:
epoch-based schedules, the frame sampling its SAMPLING_RATE selects, its dataset entries, class-name lists, its
test switch), or dropped with the reason (read by none of the code a CLIP-FSAR run executes, a GPU count that
torchrun gives here, a switch that is off). Keys this tool does not know, and values it cannot express, are named
all together in one error and nothing is written. The output inherits our CLIP-FSAR recipe
(configs/projects/CLIPFSAR/base.yaml: the lineage's views and model as this project computes them, with the
deliberate differences of docs/lineage.md) and sets every translated key explicitly; it is loaded before it is
written, and where we ship a config for the same benchmark, shot and backbone the keys in which the two differ
are named.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from typing import Any

import yaml

if __package__ in (None, ""):  # `python runs/convert_clipfsar_config.py`: this repository's packages come first
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runs.clipfsar_keys import BENCHMARKS, Conversion, convert, show, yaml_value  # noqa: E402
from runs.config import load_config  # noqa: E402
from utils.config import ConfigError, all_keys  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "projects", "CLIPFSAR", "base.yaml")
LINEAGE_BASE_KEYS = ("_BASE", "_BASE_RUN", "_BASE_MODEL")


# ---------------------------------------------------------------------------------------------- the lineage's reader
def _read_lineage_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ArgumentError(f"{path}: CLIP-FSAR config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # YAML 1.1, as the lineage reads it (`5e-5` is a string there, see _lineage_value)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a CLIP-FSAR config is a mapping of keys, got {type(data).__name__}")
    return data


def _lineage_merge(base: dict, new: dict, preserve_base: bool = False) -> dict:
    """CLIP-FSAR's `_merge_cfg_from_base`: child wins; a key containing "BASE" that the base lacks is dropped (kept
    only at the top level of a `_BASE_RUN` merge, so its `_BASE_MODEL` is followed next)."""
    for key, value in new.items():
        if key in base and isinstance(value, dict) and isinstance(base[key], dict):
            _lineage_merge(base[key], value)
        elif key in base or "BASE" not in key or preserve_base:
            base[key] = value
    return base


def _base_path(value: Any, including: str, top: str, root: str, key: str) -> str:
    """Where the lineage opens a base file: `../x` from the including file's folder, `./x` from the top file's."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{including}: {key} must be a path, got {value!r}")
    if value.startswith(".."):
        path = os.path.join(os.path.dirname(including), value)
    elif value.startswith("./"):
        path = os.path.join(os.path.dirname(top), value[2:])
    else:  # opened from the working directory, which for the lineage is its checkout
        path = os.path.join(root, value)
    path = os.path.normpath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{including}: {key} file not found: {value} (looked at {path})")
    return path


def _lineage_chain(path: str, top: str, root: str, files: list[str]) -> dict:
    """CLIP-FSAR's `_load_yaml`: `_BASE`, else `_BASE_RUN` then `_BASE_MODEL`, each merged under the file."""
    if path in files:
        raise ConfigError(f"{path}: base cycle: {' -> '.join(files + [path])}")
    files.append(path)
    cfg = _read_lineage_yaml(path)
    if "_BASE" in cfg:
        base = _lineage_chain(_base_path(cfg["_BASE"], path, top, root, "_BASE"), top, root, files)
        return _lineage_merge(base, cfg)
    if "_BASE_RUN" in cfg:
        base = _lineage_chain(_base_path(cfg["_BASE_RUN"], path, top, root, "_BASE_RUN"), top, root, files)
        cfg = _lineage_merge(base, cfg, preserve_base=True)
    if "_BASE_MODEL" in cfg:
        base = _lineage_chain(_base_path(cfg["_BASE_MODEL"], path, top, root, "_BASE_MODEL"), top, root, files)
        cfg = _lineage_merge(base, cfg)
    return cfg


def _checkout_root(path: str) -> str | None:
    """The CLIP-FSAR checkout holding `path`: the first folder above it with configs/pool/base.yaml."""
    folder = os.path.dirname(path)
    while True:
        if os.path.isfile(os.path.join(folder, "configs", "pool", "base.yaml")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _lineage_value(value: Any) -> Any:
    """The lineage's `_update_dict`: a string like `5e-5` becomes a float; nothing else is converted."""
    if isinstance(value, str) and value[1:3] == "e-":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in LINEAGE_BASE_KEYS and not prefix:
            continue
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _lineage_value(value)
    return out


def read_lineage_config(path: str) -> tuple[dict[str, Any], list[str]]:
    """(every leaf key of the config as CLIP-FSAR resolves it, the files read: the chain, then its defaults)."""
    path = os.path.abspath(path)
    root = _checkout_root(path)
    files: list[str] = []
    cfg = _lineage_chain(path, path, root or os.getcwd(), files)
    if root is not None:  # its Config() starts from ./configs/pool/base.yaml, merged under everything
        defaults = os.path.join(root, "configs", "pool", "base.yaml")
        cfg = _lineage_merge(_read_lineage_yaml(defaults), cfg)
        files.append(defaults)
    return _flatten(cfg), files


# ---------------------------------------------------------------------------------------------- output
SECTION_ORDER = ("", "TRAIN", "DATA", "AUGMENTATION", "VIDEO.HEAD", "TEST", "SOLVER")


def _summary(c: Conversion) -> list[str]:
    lines = [f"note: {note}" for note in c.notes]
    lines += [f"mapped with the same meaning ({len(c.mapped)}): " + ", ".join(
        f"{k} {show(c.lineage[k])}" + (f" -> {o}" if o != k else "") for k, o in c.mapped)]
    lines.append(f"translated ({sum(len(k) for k, _ in c.translated)} keys):")
    lines += [f"  {', '.join(keys) + ': ' if keys else ''}{text}" for keys, text in c.translated]
    by_reason: dict[str, list[str]] = {}
    for key, reason in c.dropped:
        by_reason.setdefault(reason, []).append(key)
    lines.append(f"dropped ({len(c.dropped)} keys):")
    lines += [f"  {', '.join(keys)}: {reason}" for reason, keys in by_reason.items()]
    return lines


def _yaml_text(c: Conversion, source: str, files: list[str], out: str, summary: list[str]) -> str:
    recipe = os.path.relpath(RECIPE, os.path.dirname(os.path.abspath(out)))
    head = [f"# Converted from CLIP-FSAR's {source} by runs/convert_clipfsar_config.py.",
            *_wrap(f"Lineage files read: {', '.join(files)}", "# "), "#",
            *(wrapped for line in summary for wrapped in _wrap(line, "# ")),
            "#", "# Our CLIP-FSAR recipe (the lineage's views and model as computed here; docs/lineage.md):",
            f"_BASE_: {recipe}"]
    body: list[str] = []
    opened: set[str] = set()
    for section_name in SECTION_ORDER:
        keys = sorted(k for k in c.ours if k.rpartition(".")[0] == section_name)
        parts = section_name.split(".") if section_name else []
        for i in range(len(parts) if keys else 0):
            if ".".join(parts[:i + 1]) not in opened:
                opened.add(".".join(parts[:i + 1]))
                body.append(f"{'  ' * i}{parts[i]}:")
        for key in keys:
            value, note = c.ours[key]
            body.append(f"{'  ' * len(parts)}{key.rpartition('.')[2]}: {yaml_value(value)}  # {note}")
    return "\n".join(head + body) + "\n"


def _wrap(line: str, prefix: str = "") -> list[str]:
    """One summary entry as lines of at most 118 characters, continuation lines indented."""
    indent = " " * (len(line) - len(line.lstrip()))
    return textwrap.wrap(line, width=118, initial_indent=prefix, subsequent_indent=prefix + indent + "    ",
                         break_long_words=False, break_on_hyphens=False)


def differences(path: str, shipped: str) -> dict[str, tuple[Any, Any]]:
    """{key: (value in `path`, value in `shipped`)} for every key whose loaded values differ."""
    mine, ours = load_config(path, freeze=False), load_config(shipped, freeze=False)
    values = {key: (_value(mine, key), _value(ours, key)) for key in all_keys(ours)}
    return {key: pair for key, pair in values.items() if pair[0] != pair[1]}


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, tuple) else cfg


def shipped_config(benchmark: str, c: Conversion) -> str:
    """Our shipped CLIP-FSAR config for the same benchmark, shot and backbone."""
    shots = c.get("TRAIN.SHOT_TEST") or c.get("TRAIN.SHOT", 1)
    backbone = str(c.get("VIDEO.HEAD.BACKBONE_NAME", "")).replace("/", "")
    name = f"CLIPFSAR_{BENCHMARKS[benchmark][2]}_{shots}shot_{backbone}.yaml"
    return os.path.join(REPO, "configs", "projects", "CLIPFSAR", benchmark, name)


def write_checked(text: str, out: str) -> None:
    """Load the text as our config system would, then put it at `out` (a file that does not load is never written)."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".convert-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_config(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a CLIP-FSAR config (inside a CLIP-FSAR checkout, so its bases are found)")
    p.add_argument("--out", required=True, help="the YAML to write (refused if it exists)")
    p.add_argument("--anno-dir", default="", help="DATA.ANNO_DIR to use (default data/splits/<benchmark>, where "
                                                  "runs/prepare_splits.py writes the same lists with class names)")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="when DATA.ANNO_DIR does not name it")
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        raise ArgumentError(f"{args.out}: --out exists (choose another path or remove it)")
    return args


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lineage, files = read_lineage_config(args.config)
    c, benchmark = convert(lineage, args.benchmark, args.anno_dir or None, args.out)
    shown = [os.path.relpath(f) for f in files]
    summary = [f"benchmark {benchmark}; {len(lineage)} lineage keys: {len(c.mapped)} mapped, "
               f"{sum(len(k) for k, _ in c.translated)} translated, {len(c.dropped)} dropped", *_summary(c)]
    if not any(f.endswith(os.path.join("pool", "base.yaml")) for f in files):
        summary.insert(0, "note: no configs/pool/base.yaml above the file (not in a CLIP-FSAR checkout): the keys "
                          "only the lineage's defaults set were not read")
    write_checked(_yaml_text(c, shown[0], shown[1:], args.out, summary), args.out)
    shipped = shipped_config(benchmark, c)
    if os.path.isfile(shipped):  # named in the file's summary too (the values do not depend on the comments)
        diff = differences(args.out, shipped)
        summary.append(f"differs from our {os.path.relpath(shipped)} in {len(diff)} keys: " + "; ".join(
            f"{key} ({show(a)}; shipped {show(b)})" for key, (a, b) in diff.items()))
        write_checked(_yaml_text(c, shown[0], shown[1:], args.out, summary), args.out)
    print(f"convert_clipfsar_config: {shown[0]} -> {args.out}")
    print("\n".join(wrapped for line in summary for wrapped in _wrap(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
