"""Pictures of runs and episodes: training curves from `metrics.jsonl`, an episode's frames with its track boxes.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so the engine can call `write_curves` at the
end of training without touching the process-wide backend or leaking figures.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from utils.episode import Episode
from utils.logger import read_metrics

MARKER_BELOW = 30  # series with fewer points get markers, so a single point (or isolated ones) stays visible
ID_CHARS = 40  # row labels show a video id's file name, shortened from the left past this length
SLOT_COLOURS = colormaps["tab10"]  # entity slot k of the track boxes is drawn in colour k mod 10


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str, dpi: int) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


# ---------------------------------------------------------------------------------------------- curves
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(iterations, values) of the records holding a finite `key`, and how many held it as null/NaN."""
    xs, ys, bad = [], [], 0
    for record in records:
        if key not in record:
            continue
        if not _finite(record[key]):
            bad += 1  # MetricsWriter writes NaN/inf as null
            continue
        xs.append(record["iteration"])
        ys.append(float(record[key]))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), bad


def _marker(xs: np.ndarray) -> str:
    return "o" if len(xs) < MARKER_BELOW else ""


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} records", transform=ax.transAxes, ha="center", va="center", color="grey")


def _draw_train(ax, records: Sequence[dict]) -> None:
    """Training loss on the left axis, learning rate on a twin right axis."""
    xs, ys, bad = _series(records, "train/loss")
    lr_x, lr_y, _ = _series(records, "lr")
    ax.set_ylabel("training loss")
    ax.set_title("training")
    ax.grid(alpha=0.3)
    handles = []
    if len(xs) or bad:  # an all-null loss still gets a legend entry saying so
        label = "train/loss" + (f" ({bad} non-finite not drawn)" if bad else "")
        handles += ax.plot(xs, ys, marker=_marker(xs), markersize=3, color="tab:blue", label=label)
    if len(lr_x):
        twin = ax.twinx()
        handles += twin.plot(lr_x, lr_y, marker=_marker(lr_x), markersize=2, color="tab:orange", alpha=0.8,
                             label="lr")
        twin.set_ylabel("learning rate")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    else:
        _no_data(ax, "training")


def _draw_val(ax, records: Sequence[dict]) -> None:
    """Validation accuracy with its 95% CI band, and the best accuracy so far."""
    val = [r for r in records if _finite(r.get("val/accuracy"))]
    xs = np.asarray([r["iteration"] for r in val], dtype=float)
    acc = np.asarray([r["val/accuracy"] for r in val], dtype=float)
    ci = np.asarray([r["val/ci95"] if _finite(r.get("val/ci95")) else 0.0 for r in val], dtype=float)
    ax.set_title("validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if len(xs) == 0:
        _no_data(ax, "validation")
        return
    if len(xs) > 1:
        ax.fill_between(xs, acc - ci, acc + ci, color="tab:green", alpha=0.2, label="95% CI")
    else:  # a band needs two points: show the single interval as an error bar
        ax.errorbar(xs, acc, yerr=ci, color="tab:green", alpha=0.5, capsize=4, label="95% CI")
    ax.plot(xs, acc, marker=_marker(xs), markersize=4, color="tab:green", label="val/accuracy")
    best_x, best, _ = _series(val, "val/best")
    if len(best_x):  # a one-point step is invisible: a marker keeps it on the plot
        ax.step(best_x, best, where="post", linestyle="--", marker="_" if len(best_x) == 1 else "", markersize=14,
                color="black", linewidth=1, label="val/best")
    ax.legend(loc="lower right", fontsize=8)


def write_curves(run_dir: str, out: str | None = None) -> str:
    """Draw `run_dir/metrics.jsonl` (training loss + lr, validation accuracy + CI) to `out` (default
    `run_dir/curves.png`); returns the path written."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: no metrics to plot (is {run_dir} a run's OUTPUT_DIR?)")
    try:
        records = read_metrics(path)
    except ValueError as err:
        raise ValueError(f"{path}: a line is not JSON ({err})") from err
    records = [r for r in records if isinstance(r, dict) and "iteration" in r]
    fig = _new_figure(8.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    _draw_train(top, records)
    _draw_val(bottom, records)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)) or run_dir, fontsize=10)
    return _save(fig, out or os.path.join(run_dir, "curves.png"), dpi=110)


# ---------------------------------------------------------------------------------------------- episode
def unnormalise(videos: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[N, T, 3, H, W] normalised frames (or uint8 pixels, as exact crops travel) -> uint8 [N, T, H, W, 3] RGB."""
    if videos.dtype == torch.uint8:
        return videos.permute(0, 1, 3, 4, 2).contiguous().numpy()
    mean_t = torch.tensor(mean, dtype=videos.dtype)[:, None, None]
    std_t = torch.tensor(std, dtype=videos.dtype)[:, None, None]
    images = (videos * std_t + mean_t).clamp(0.0, 1.0)
    return (images * 255.0).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


def _short_id(video_id: str) -> str:
    """The last path component of a video id ('//' split lines hold relative paths), shortened from the left."""
    name = video_id.rstrip("/").rsplit("/", 1)[-1] or video_id
    return name if len(name) <= ID_CHARS else "..." + name[-(ID_CHARS - 3):]


def episode_rows(episode: Episode, mean: Sequence[float], std: Sequence[float]) -> list[dict[str, Any]]:
    """One row per support video then per query video: frames, boxes (or None) and a human-readable label."""
    missing = set(episode.missing_tracks)
    rows = []
    for role, prefix in (("support", "support"), ("query", "target")):
        frames = unnormalise(getattr(episode, f"{prefix}_set"), mean, std)
        labels = getattr(episode, f"{prefix}_labels").tolist()
        boxes, mask = getattr(episode, f"{prefix}_boxes"), getattr(episode, f"{prefix}_box_mask")
        for n, video_id in enumerate(getattr(episode, f"{prefix}_ids")):
            short = _short_id(video_id)
            note = "\n(no track file)" if video_id in missing else ""
            rows.append({"role": role, "frames": frames[n],
                         "boxes": None if boxes is None else boxes[n].numpy(),  # [T, K, 4] in 0..1
                         "mask": None if mask is None else mask[n].numpy(),  # [T, K]
                         "label": f"{role} {n + 1}\n{episode.class_names[labels[n]]}\n{short}{note}"})
    return rows


def _draw_boxes(ax, boxes: np.ndarray, mask: np.ndarray, height: int, width: int) -> None:
    for k, ((x1, y1, x2, y2), ok) in enumerate(zip(boxes, mask, strict=True)):
        if ok:  # pixel centres sit at integers, so the crop spans -0.5 .. size - 0.5
            ax.add_patch(Rectangle((x1 * width - 0.5, y1 * height - 0.5), (x2 - x1) * width, (y2 - y1) * height,
                                   fill=False, edgecolor=SLOT_COLOURS(k % 10), linewidth=1.5))


def draw_episode(episode: Episode, mean: Sequence[float], std: Sequence[float], out: str) -> str:
    """Grid of the episode's frames (rows: supports then queries; columns: frames) with track boxes."""
    rows = episode_rows(episode, mean, std)
    num_frames, height, width = rows[0]["frames"].shape[:3]
    fig = _new_figure(1.6 + 1.25 * num_frames, 0.4 + 1.25 * len(rows) * height / width)
    axes = np.asarray(fig.subplots(len(rows), num_frames, squeeze=False))
    for r, row in enumerate(rows):
        for t in range(num_frames):
            ax = axes[r, t]
            ax.imshow(row["frames"][t])
            if row["boxes"] is not None:
                _draw_boxes(ax, row["boxes"][t], row["mask"][t], height, width)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t + 1}", fontsize=8)
        first = axes[r, 0]
        first.set_ylabel(row["label"], rotation=0, ha="right", va="center", fontsize=7,
                         color="tab:blue" if row["role"] == "support" else "tab:red")
    num_slots = 0 if rows[0]["boxes"] is None else rows[0]["boxes"].shape[1]
    if num_slots:
        fig.legend(handles=[Patch(edgecolor=SLOT_COLOURS(k % 10), fill=False, label=f"entity slot {k + 1}")
                            for k in range(num_slots)], loc="outside lower center", ncol=num_slots, fontsize=7)
    fig.suptitle(f"{episode.split} episode {episode.episode_index}: {episode.way}-way, "
                 f"{len(episode.support_ids)} supports, {len(episode.target_ids)} queries "
                 f"(query labels shown for people, never given to the model)", fontsize=8)
    return _save(fig, out, dpi=100)
