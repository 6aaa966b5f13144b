"""Gather the results.json of many runs into one ablation table (Markdown and CSV).

`python runs/summarize.py RUNS_DIR [--out table] [--over RANDOM_SEED]`: every run folder below RUNS_DIR that holds
a results.json becomes a row; the config keys whose values differ between runs become columns, next to benchmark,
shot and test accuracy ± 95% CI. With `--over KEY` the runs that differ only in KEY (seeds, say) become one row: the
mean accuracy over them ± the 95% CI of that mean (Student t over the runs), how many there are, their lowest and
highest accuracy and the mean of their own per-episode CIs. With `--paired KEY=VALUE[,KEY=VALUE...]` each run is
also compared with its baseline, the run whose config is the same but for those keys set to those values (same seed,
hence the same test episodes): the mean per-episode accuracy difference ± 1.96 standard errors, pooled over the
merged runs.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from typing import Any

import pandas as pd
import simplejson as json
import yaml

if __package__ in (None, ""):  # `python runs/summarize.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.textfiles import read_text  # noqa: E402

# Keys that always differ between runs and say nothing about the method.
IGNORED_KEYS = {"OUTPUT_DIR", "TEST.CHECKPOINT_FILE_PATH"}


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def find_results(root: str) -> list[str]:
    """Every path named results.json below `root`, folders too: those are then listed as skipped, not ignored."""
    found = []
    for folder, dirs, files in os.walk(root):
        if "results.json" in files or "results.json" in dirs:
            found.append(os.path.join(folder, "results.json"))
    return sorted(found)


def read_run(path: str) -> dict:
    """One run's results and flattened config; an unreadable file is an ArgumentError naming it."""
    try:
        result = json.loads(read_text(path, "results file", ArgumentError))
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}; half written?)") from None
    missing = [key for key in ("accuracy", "ci95", "config") if not isinstance(result, dict) or key not in result]
    if missing:
        raise ArgumentError(f"{path}: not a results.json of this framework (no '{missing[0]}')")
    for key in ("accuracy", "ci95"):
        value = result[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgumentError(f"{path}: {key} is {value!r}, not a finite number (a run that did not finish its "
                                f"test; rerun it)")
    try:
        config = yaml.safe_load(result["config"])
    except yaml.YAMLError as e:
        raise ArgumentError(f"{path}: its stored config is not valid YAML ({str(e).splitlines()[0]})") from None
    return {"path": path, "result": result, "config": flatten(config)}


def load_runs(root: str) -> tuple[list[dict], list[str]]:
    """The readable runs below `root` and one line for each results.json that could not be read."""
    if not os.path.isdir(root):
        raise ArgumentError(f"{root}: runs folder not found")
    runs, unreadable = [], []
    for path in find_results(root):
        try:
            runs.append(read_run(path))
        except ArgumentError as e:
            unreadable.append(str(e))
    return runs, unreadable


def fill_defaults(runs: list[dict]) -> None:
    """Keys a run's saved config lacks (it predates them) take today's default, so they do not look changed."""
    from runs.config import get_cfg

    defaults = flatten(yaml.safe_load(get_cfg().dump()))
    for run in runs:
        run["config"] = {**defaults, **run["config"]}


def parse_paired(spec: str) -> dict[str, Any]:
    """`KEY=VALUE[,KEY=VALUE...]` -> {KEY: VALUE parsed as YAML (False, 0.5, a string)}."""
    pairs = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ArgumentError(f"--paired {spec!r}: expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        pairs[key.strip()] = yaml.safe_load(value)
    if not pairs:
        raise ArgumentError(f"--paired {spec!r}: names no KEY=VALUE")
    return pairs


def paired_differences(runs: list[dict], keys: list[str], baseline: dict[str, Any]) -> list[list[float] | None]:
    """Per run, its per-episode accuracies minus its baseline's (the run equal on `keys` once `baseline` is
    applied); None where there is no such run or no per-episode accuracies. The baseline's own entry is zeros."""
    unknown = [k for k in baseline if all(k not in run["config"] for run in runs)]
    if unknown:
        raise ArgumentError(f"--paired: no run's config has the key {unknown[0]}")

    def ident(cfg: dict) -> tuple:
        return tuple(repr(cfg.get(k)) for k in keys)

    by_ident = {ident(run["config"]): run for run in runs}
    out = []
    for run in runs:
        base = by_ident.get(ident({**run["config"], **baseline}))
        mine, theirs = run["result"].get("episode_accuracies"), (base or {}).get("result", {}).get("episode_accuracies")
        if base is None or not mine or not theirs:
            out.append(None)
        elif len(mine) != len(theirs):
            raise ArgumentError(f"{run['path']}: {len(mine)} test episodes, its --paired baseline {base['path']} "
                                f"{len(theirs)}; paired differences need the same episodes")
        else:
            out.append([a - b for a, b in zip(mine, theirs, strict=True)])
    return out


def paired_cell(diffs: list[float] | None) -> str:
    if not diffs:
        return "-"
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.fmean(diffs):+.2f} ± {half:.2f}"


def build_table(runs: list[dict], over: str = "", paired: str = "") -> pd.DataFrame:
    """One row per run: run name, benchmark, shot, differing config keys, accuracy and CI; with `over`, one row per
    group of runs that differ only in that key (`merge_over`); with `paired`, the difference to each run's baseline
    (`paired_differences`)."""
    if not runs:
        raise ArgumentError("no readable results.json found")
    fill_defaults(runs)
    keys = sorted({k for run in runs for k in run["config"]} - IGNORED_KEYS)
    differing = [k for k in keys if len({run["config"].get(k) for run in runs}) > 1]
    diffs = paired_differences(runs, differing, parse_paired(paired)) if paired else [None] * len(runs)
    rows = []
    for run, diff in zip(runs, diffs, strict=True):
        cfg, res = run["config"], run["result"]
        row = {"run": os.path.basename(os.path.dirname(run["path"])),
               "benchmark": cfg.get("DATA.DATASET", "?"),
               "shot": cfg.get("TRAIN.SHOT_TEST") or cfg.get("TRAIN.SHOT"),
               "head": cfg.get("VIDEO.HEAD.NAME", "?")}
        row.update({k: cfg.get(k) for k in differing if k not in ("DATA.DATASET", "VIDEO.HEAD.NAME")})
        row["accuracy"] = f"{res['accuracy']:.2f} ± {res['ci95']:.2f}"
        row["episodes"] = res.get("episodes")
        if paired:
            row["_diffs"] = diff
        rows.append(row)
    if over:
        rows = merge_over(rows, runs, over)
    if paired:
        for row in rows:
            row[f"paired vs {paired}"] = paired_cell(row.pop("_diffs"))
    return pd.DataFrame(rows).sort_values(["benchmark", "shot", "run"]).reset_index(drop=True)


# Two-sided 95% Student t quantiles by degrees of freedom; beyond the table the normal 1.96.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def merge_over(rows: list[dict], runs: list[dict], key: str) -> list[dict]:
    """Rows (one per run, in `runs` order) that differ only in config `key` merged: "accuracy" becomes the mean over
    the group ± the 95% CI of that mean (t over the runs; none for one run), with `runs`, `min-max` and the group's
    mean per-episode CI; the run name is the group's first (sorted) run name, `key` is dropped."""
    if all(key not in run["config"] for run in runs):
        raise ArgumentError(f"--over {key}: no run's config has that key")
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        ident = tuple(sorted((k, str(v)) for k, v in row.items() if k not in ("run", "accuracy", "_diffs", key)))
        groups.setdefault(ident, []).append(i)
    merged = []
    for members in groups.values():
        accs = [runs[i]["result"]["accuracy"] for i in members]
        mean = statistics.fmean(accs)
        half = T95.get(len(accs) - 1, 1.96) * statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else None
        row = {k: v for k, v in rows[members[0]].items() if k not in (key, "accuracy")}
        row["run"] = min(rows[i]["run"] for i in members)
        row["accuracy"] = f"{mean:.2f} ± {half:.2f}" if half is not None else f"{mean:.2f}"
        row["runs"] = len(accs)
        row["min-max"] = f"{min(accs):.2f}-{max(accs):.2f}"
        row["mean episode CI"] = f"{statistics.fmean(runs[i]['result']['ci95'] for i in members):.2f}"
        if "_diffs" in row:  # pooled over the group's runs, when every one has a baseline
            parts = [rows[i]["_diffs"] for i in members]
            row["_diffs"] = None if any(p is None for p in parts) else [d for p in parts for d in p]
        merged.append(row)
    return merged


@entry_point
def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default="", help="write OUT.md and OUT.csv (default: RUNS_DIR/summary)")
    parser.add_argument("--over", default="", metavar="KEY",
                        help="merge runs that differ only in this config key (e.g. RANDOM_SEED): mean ± 95%% CI")
    parser.add_argument("--paired", default="", metavar="KEY=VALUE[,...]",
                        help="compare each run episode by episode with the run that has these values instead")
    args = parser.parse_args(argv)
    runs, unreadable = load_runs(args.runs_dir)
    for line in unreadable:
        print(f"skipped: {line}", file=sys.stderr)
    if not runs:
        raise ArgumentError(f"{args.runs_dir}: no readable results.json below it"
                            + (f" ({len(unreadable)} unreadable, listed above)" if unreadable else ""))
    table = build_table(runs, args.over, args.paired)
    out = args.out or os.path.join(args.runs_dir, "summary")
    table.to_csv(out + ".csv", index=False)
    markdown = table.to_markdown(index=False)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown + "\n")
    print(markdown)
    print(f"\nwrote {out}.md and {out}.csv", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
