"""Gather the results.json of many runs into one ablation table (Markdown and CSV).

`python runs/summarize.py RUNS_DIR [--out table]`: every run folder below RUNS_DIR that holds a results.json
becomes a row; the config keys whose values differ between runs become columns, next to benchmark, shot and
test accuracy ± 95% CI.
"""
from __future__ import annotations

import argparse
import os
import sys

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
    found = []
    for folder, _, files in os.walk(root):
        if "results.json" in files:
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


def build_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run: run name, benchmark, shot, differing config keys, accuracy and CI."""
    if not runs:
        raise ArgumentError("no readable results.json found")
    fill_defaults(runs)
    keys = sorted({k for run in runs for k in run["config"]} - IGNORED_KEYS)
    differing = [k for k in keys if len({run["config"].get(k) for run in runs}) > 1]
    rows = []
    for run in runs:
        cfg, res = run["config"], run["result"]
        row = {"run": os.path.basename(os.path.dirname(run["path"])),
               "benchmark": cfg.get("DATA.DATASET", "?"),
               "shot": cfg.get("TRAIN.SHOT_TEST") or cfg.get("TRAIN.SHOT"),
               "head": cfg.get("VIDEO.HEAD.NAME", "?")}
        row.update({k: cfg.get(k) for k in differing if k not in ("DATA.DATASET", "VIDEO.HEAD.NAME")})
        row["accuracy"] = f"{res['accuracy']:.2f} ± {res['ci95']:.2f}"
        row["episodes"] = res.get("episodes")
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["benchmark", "shot", "run"]).reset_index(drop=True)


@entry_point
def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default="", help="write OUT.md and OUT.csv (default: RUNS_DIR/summary)")
    args = parser.parse_args(argv)
    runs, unreadable = load_runs(args.runs_dir)
    for line in unreadable:
        print(f"skipped: {line}", file=sys.stderr)
    if not runs:
        raise ArgumentError(f"{args.runs_dir}: no readable results.json below it"
                            + (f" ({len(unreadable)} unreadable, listed above)" if unreadable else ""))
    table = build_table(runs)
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
