"""Pictures of models and runs: `python runs/visualize.py <command> [options] [KEY VALUE ...]`.

Commands:
  regions   a video's frames with AMCAP's Shapley regions, its salient regions for the best-matching class,
            and the class-name tokens each salient region aligns with:
            python runs/visualize.py regions --cfg <yaml> --video <mp4> --classes "a,b,c" --out regions.png
  region-stats  on the synthetic world, how often the salient regions land on the acting entity (ground-truth
            tracks) and their aligned tokens name it, query and support side, against chance:
            python runs/visualize.py region-stats --cfg <world yaml> [--split test] [--videos N] [--json out.json]
  vfam-stats  on the synthetic world, the attention mass VFAM gives the acting entity's track vs each distractor's:
            python runs/visualize.py vfam-stats --cfg <world yaml> [--checkpoint PTH] [--split test] [--videos N]
  curves    a run's training loss and learning rate, and validation accuracy with its 95% CI, vs iteration:
            python runs/visualize.py curves --run <OUTPUT_DIR> [--out curves.png]
  text-similarity  how alike the class texts are (cosine of "a photo of {name}" through the text tower; a tower
            that encodes two classes alike cannot tell them apart through text), closest pairs first:
            python runs/visualize.py text-similarity --cfg <yaml> [--split train] [--checkpoint PTH] [KEY VALUE ...]
  episode   one episode's support and query frames with their track boxes, labelled with class and video id:
            python runs/visualize.py episode --cfg <yaml> [--split test] [--index 0] [--out PNG] [KEY VALUE ...]

The curves and episode pictures are drawn by utils/plots.py (the engine calls write_curves itself).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # `python runs/visualize.py`: this repository's packages come first (a Hugging Face
    # `datasets` installed in the same environment must not shadow ours; see README, Layout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import build_dataset  # noqa: E402
from datasets.splits import read_class_names, split_files  # noqa: E402
from models.clip import CLIPBackbone  # noqa: E402
from runs.amcap_regions import (  # noqa: E402
    SETTINGS,
    analyse_video,
    read_frames,
    region_stats,
    region_token_lines,
    stats_table,
)
from runs.config import load_config  # noqa: E402
from utils.config import CfgNode  # noqa: E402
from utils.errors import ArgumentError, entry_point  # noqa: E402
from utils.plots import draw_episode, write_curves  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


# ---------------------------------------------------------------------------------------------- regions
def episode_class_names(cfg: CfgNode, classes: str, split: str) -> list[str]:
    """`--classes "a,b,c"`, or every class name of `split` in DATA.ANNO_DIR."""
    if classes.strip():
        names = [name.strip() for name in classes.split(",") if name.strip()]
    else:
        if not cfg.DATA.ANNO_DIR:
            raise ArgumentError("--classes: give \"a,b,c\" or set DATA.ANNO_DIR for the split's names")
        names = read_class_names(split_files(cfg.DATA.ANNO_DIR, split)[1])
    if not names:
        raise ArgumentError("--classes: names no class")
    return names


def draw_regions(frames: np.ndarray, frame_indices: Sequence[int], analysis: dict[str, Any],
                 class_names: list[str], out: str) -> None:
    """Frames with kept regions (tinted, outlined), salient ones outlined thick and tagged, tokens beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = analysis["info"]
    masks = info["regions"].token_masks[0].cpu().numpy()  # [R, h, w]
    valid = info["regions"].valid[0].cpu().tolist()
    lines = region_token_lines(analysis, class_names)
    salient = {slot: f"S{k + 1}" for k, (slot, _) in enumerate(lines)}
    t, height, width = frames.shape[:3]
    cols = math.ceil(t / 2)
    fig = plt.figure(figsize=(2.2 * cols + 5.0, 4.8))
    grid = fig.add_gridspec(2, cols + 1, width_ratios=[1] * cols + [2.3])
    colours = plt.get_cmap("tab10")
    scale_y, scale_x = height / masks.shape[1], width / masks.shape[2]
    for i in range(t):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(frames[i])
        for slot, mask in enumerate(masks):
            if not valid[slot]:
                continue
            big = np.kron(mask, np.ones((math.ceil(scale_y), math.ceil(scale_x))))[:height, :width]
            colour = colours(slot % 10)
            ax.imshow(np.dstack([np.broadcast_to(colour[:3], (*big.shape, 3)), big * 0.35]))
            ax.contour(big, levels=[0.5], colors=[colour], linewidths=2.5 if slot in salient else 0.8)
            if slot in salient:
                ys, xs = np.nonzero(big)
                ax.text(xs.mean(), ys.mean(), salient[slot], color="white", fontsize=8, ha="center",
                        va="center", bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
        key = " (key)" if i in analysis["key_frames"] else ""
        ax.set_title(f"frame {frame_indices[i]}{key}", fontsize=8)
        ax.axis("off")
    panel = fig.add_subplot(grid[:, cols])
    panel.axis("off")
    weights = analysis["class_weights"]  # label-free anchor (query side)
    top_classes = weights.topk(min(5, len(class_names)))
    summary = [f"best class: {class_names[analysis['best_class']]}", "", "anchor weights:"]
    summary += [f"  {class_names[c]}: {w:.2f}" for w, c in zip(top_classes.values.tolist(),
                                                                top_classes.indices.tolist(), strict=True)]
    summary += ["", f"regions kept: {sum(valid)} (outlined), salient (thick):"]
    summary += [line for _, line in lines]
    panel.text(0.0, 1.0, "\n".join(summary), va="top", ha="left", fontsize=8, family="monospace", wrap=True)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_regions(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.video):
        raise ArgumentError(f"{args.video}: --video file not found")
    if args.frames < 0:
        raise ArgumentError(f"--frames must be >= 0 (0 = DATA.NUM_INPUT_FRAMES), got {args.frames}")
    if args.classes and not all(name.strip() for name in args.classes.split(",")):
        raise ArgumentError(f"--classes {args.classes!r}: empty class name in the comma-separated list")
    cfg = load_config(args.cfg or None, args.opts)
    seed_everything(cfg.RANDOM_SEED)  # a random-init backbone (PRETRAINED "") is then the same on every call
    class_names = episode_class_names(cfg, args.classes, args.split)
    backbone = CLIPBackbone(**CLIPBackbone.from_config(cfg)).eval()
    num_frames = cfg.DATA.NUM_INPUT_FRAMES if args.frames <= 0 else args.frames
    frames, images, indices = read_frames(cfg, args.video, num_frames)
    analysis = analyse_video(cfg, backbone, images, class_names)
    draw_regions(frames, indices, analysis, class_names, args.out)
    kept = int(analysis["info"]["regions"].valid.sum())
    print(f"wrote {args.out}: {kept} regions kept, best class '{class_names[analysis['best_class']]}'")
    return 0


def add_regions_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("regions", help="AMCAP Shapley and salient regions of one video")
    p.add_argument("--cfg", default="", help="config YAML (defaults plus KEY VALUE pairs when omitted)")
    p.add_argument("--video", required=True, help="video file (decord)")
    p.add_argument("--classes", default="", help='comma-separated class names, e.g. "a,b,c"')
    p.add_argument("--split", default="test", help="without --classes: use this split's names from DATA.ANNO_DIR")
    p.add_argument("--frames", type=int, default=0, help="frames to sample (0 = DATA.NUM_INPUT_FRAMES)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    p.set_defaults(func=run_regions)


# ---------------------------------------------------------------------------------------------- region-stats
def world_config(args: argparse.Namespace) -> CfgNode:
    """The config of a world-statistics command (region-stats, vfam-stats), its arguments checked."""
    if args.videos < 0:
        raise ArgumentError(f"--videos must be >= 0 (videos per class; 0 = all), got {args.videos}")
    cfg = load_config(args.cfg or None, args.opts)
    if not cfg.DATA.ANNO_DIR:
        raise ArgumentError(f"{args.command}: set DATA.ANNO_DIR (the world's split lists and meta.json)")
    if cfg.DATA.FRAMES_FOLDER:
        raise ArgumentError(f"{args.command} reads video files; DATA.FRAMES_FOLDER True is not supported")
    return cfg


def write_json(path: str, result: dict) -> None:
    """`--json`: the measures as a file (nothing without a path)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {path}")


def run_region_stats(args: argparse.Namespace) -> int:
    cfg = world_config(args)
    result = {"config": args.cfg, "overrides": list(args.opts), **region_stats(cfg, args.split, args.videos)}
    a = cfg.AMCAP
    print(f"region-stats: {result['videos']} {args.split} videos, {len(result['classes'])} classes; AMCAP GRID "
          f"{a.GRID} NUM_REGIONS {a.NUM_REGIONS} TOP_K {a.TOP_K} MERGE_ON {a.MERGE_ON} MERGE_THRESHOLD "
          f"{a.MERGE_THRESHOLD} REGION_SCORE {a.REGION_SCORE}")
    print(stats_table(result["settings"], len(result["classes"])))
    print("regions per video (partition / kept / salient): " + "; ".join(
        f"{s} " + " / ".join(f"{v:.2f}" for v in result["regions_per_video"][s].values()) for s in SETTINGS))
    for setting in SETTINGS:
        print(f"{setting} side, adjacent-cell interactions (mean, share > 0, pairs): " + "; ".join(
            f"{kind} " + ("-" if v["n"] == 0 else f"{v['mean']:+.4f}, {v['positive']:.2f}, {v['n']}")
            for kind, v in result["pair_interactions"][setting].items()))
    write_json(args.json, result)
    return 0


def add_region_stats_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("region-stats", help="do AMCAP's salient regions land on the synthetic world's actor")
    p.add_argument("--cfg", default="", help="config YAML of a synthetic world (DATA.ANNO_DIR holds its meta.json)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to measure")
    p.add_argument("--videos", type=int, default=0, help="first N videos of each class (0 = all)")
    p.add_argument("--json", default="", help="also write the measures to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    p.set_defaults(func=run_region_stats)


# ---------------------------------------------------------------------------------------------- vfam-stats
def run_vfam_stats(args: argparse.Namespace) -> int:
    from runs.vfam_attention import VFAM_MEASURES, vfam_stats

    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ArgumentError(f"{args.checkpoint}: --checkpoint file not found")
    cfg = world_config(args)
    result = {"config": args.cfg, "checkpoint": args.checkpoint, "overrides": list(args.opts),
              **vfam_stats(cfg, args.split, args.videos, args.checkpoint)}
    gate = "none (FUSION replace)" if result["gate"] is None else f"{result['gate']:.4f}"
    print(f"vfam-stats: {result['videos']} {args.split} videos, VFAM.MODE {cfg.VFAM.MODE}, ATTEND {cfg.VFAM.ATTEND}, "
          f"gate |mean| {gate}; per frame with the actor and a distractor in view (mean over videos ± 95% CI):")
    for name in VFAM_MEASURES:
        entry = result["measures"][name]
        value = "-" if entry["mean"] is None else f"{entry['mean']:.3f}" + (
            f" ± {entry['ci95']:.3f}" if entry["ci95"] is not None else "")
        print(f"  {name}: {value}")
    actor, distractor = (result["measures"][k]["mean"] for k in ("actor_mass", "distractor_mass"))
    if actor is not None and distractor:
        print(f"  actor / distractor mass: {actor / distractor:.2f}x")
    write_json(args.json, result)
    return 0


def add_vfam_stats_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("vfam-stats", help="does VFAM's frame attention go to the synthetic world's actor")
    p.add_argument("--cfg", default="", help="config YAML of a synthetic world (DATA.ANNO_DIR holds its meta.json)")
    p.add_argument("--checkpoint", default="", help="a run's checkpoint (its trained VFAM); default: untrained")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to measure")
    p.add_argument("--videos", type=int, default=0, help="first N videos of each class (0 = all)")
    p.add_argument("--json", default="", help="also write the measures to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    p.set_defaults(func=run_vfam_stats)


# ---------------------------------------------------------------------------------------------- curves, episode
def run_curves(args: argparse.Namespace) -> int:
    if not os.path.isfile(os.path.join(args.run, "metrics.jsonl")):
        raise ArgumentError(f"{args.run}: --run holds no metrics.jsonl (pass a run's OUTPUT_DIR)")
    print(f"wrote {write_curves(args.run, args.out or None)}")
    return 0


def add_curves_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("curves", help="training and validation curves of a run (its metrics.jsonl)")
    p.add_argument("--run", required=True, help="the run's OUTPUT_DIR (holds metrics.jsonl)")
    p.add_argument("--out", default="", help="PNG to write (default: <run>/curves.png)")
    p.set_defaults(func=run_curves)


def run_episode(args: argparse.Namespace) -> int:
    cfg = load_config(args.cfg or None, args.opts)
    check_episode_index(cfg, args.split, args.index)
    out = args.out or os.path.join(cfg.OUTPUT_DIR, f"episode_{args.split}_{args.index}.png")
    print(f"wrote {write_episode(cfg, args.split, args.index, out)}")
    return 0


def write_episode(cfg: CfgNode, split: str, index: int, out: str) -> str:
    """Build episode `index` of `split` from `cfg` (the loader's own dataset and transforms) and draw it to `out`."""
    episode = build_dataset(cfg, split, [index])[0]
    return draw_episode(episode, cfg.DATA.MEAN, cfg.DATA.STD, out)


def check_episode_index(cfg, split: str, index: int) -> None:
    """Only episodes a run evaluates (val/test: 0..N-1) or trains on (train: >= 0) can be drawn."""
    if index < 0:
        raise ArgumentError(f"--index must be >= 0 (episodes are numbered from 0), got {index}")
    count = {"val": ("TRAIN.NUM_VAL_TASKS", cfg.TRAIN.NUM_VAL_TASKS),
             "test": ("TRAIN.NUM_TEST_TASKS", cfg.TRAIN.NUM_TEST_TASKS)}.get(split)
    if count is not None and index >= count[1]:
        raise ArgumentError(f"--index {index}: runs with this config evaluate {split} episodes 0..{count[1] - 1} "
                            f"({count[0]} {count[1]})")


def add_episode_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("episode", help="one episode's frames with track boxes, supports then queries")
    p.add_argument("--cfg", default="", help="config YAML (defaults plus KEY VALUE pairs when omitted)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to draw from")
    p.add_argument("--index", type=int, default=0, help="episode index (episodes are a pure function of it)")
    p.add_argument("--out", default="", help="PNG to write (default: OUTPUT_DIR/episode_<split>_<index>.png)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    p.set_defaults(func=run_episode)


# ---------------------------------------------------------------------------------------------- text-similarity
def class_text_similarity(cfg: CfgNode, names: list[str], checkpoint: str = "") -> torch.Tensor:
    """[N, N] cosines of the class texts the head would use: the head of `cfg` with the weights of `checkpoint`
    (a run's text tower, exactly), or, without one, with the tower VIDEO.HEAD.PRETRAINED builds (seeded)."""
    from models import build_model
    from runs.test_net_few_shot import load_weights_for_test

    seed_everything(cfg.RANDOM_SEED)
    model = build_model(cfg).eval()
    if checkpoint:
        load_weights_for_test(model, checkpoint)
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.class_text_features(names).float(), dim=1)
    return text @ text.t()


def run_text_similarity(args: argparse.Namespace) -> int:
    if args.top <= 0:
        raise ArgumentError(f"--top must be > 0, got {args.top}")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ArgumentError(f"{args.checkpoint}: --checkpoint file not found")
    cfg = load_config(args.cfg or None, args.opts)
    names = episode_class_names(cfg, args.classes, args.split)
    if len(names) < 2:
        raise ArgumentError(f"--classes: names {len(names)} class; similarity needs two or more")
    cosine = class_text_similarity(cfg, names, args.checkpoint)
    pairs = sorted(((cosine[i, j].item(), i, j) for i in range(len(names)) for j in range(i + 1, len(names))),
                   reverse=True)
    values = [c for c, _, _ in pairs]
    print(f"{len(names)} classes, {len(pairs)} pairs: class-text cosine mean {sum(values) / len(values):.3f}, "
          f"min {values[-1]:.3f}, max {values[0]:.3f}; closest pairs:")
    for c, i, j in pairs[:args.top]:
        print(f"  {c:.3f}  {names[i]}  |  {names[j]}")
    return 0


def add_text_similarity_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("text-similarity", help="cosines between the class texts, closest pairs first")
    p.add_argument("--cfg", default="", help="config YAML (defaults plus KEY VALUE pairs when omitted)")
    p.add_argument("--classes", default="", help='comma-separated class names, e.g. "a,b,c"')
    p.add_argument("--split", default="train", help="without --classes: use this split's names from DATA.ANNO_DIR")
    p.add_argument("--checkpoint", default="", help="a run's checkpoint (its text tower); default: the config's")
    p.add_argument("--top", type=int, default=10, help="closest pairs to list")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    p.set_defaults(func=run_text_similarity)


# ---------------------------------------------------------------------------------------------- dispatcher
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runs/visualize.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_regions_parser(commands)
    add_region_stats_parser(commands)
    add_vfam_stats_parser(commands)
    add_curves_parser(commands)
    add_text_similarity_parser(commands)
    add_episode_parser(commands)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
