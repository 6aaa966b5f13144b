"""Fail fast: before the first training step, every split the run uses is loaded and checked (docs/design.md §4).

Without this, a val split with fewer classes than WAY, or a wrong DATA_ROOT_DIR, is found at the first
validation or the first episode that draws a missing video, hours into a run. The checks: the split list
and its class names parse (datasets/splits.py), classes >= WAY and videos per class >= SHOT + QUERY with
each split's own shot and query (datasets/sampling.py), and every referenced video (with
DATA.FRAMES_FOLDER: its folder) exists and is not an empty file: one `os.stat` per entry, so SSv2-Full's
67,013 training videos take well under a second on a local disk.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from datasets.few_shot import episode_shape
from datasets.on_disk import describe, on_disk, scan_videos
from datasets.prepared import squash_prepared_scale
from datasets.sampling import EpisodeSampler
from datasets.splits import SplitError, load_split, split_files, write_split
from datasets.tracks import track_path
from datasets.video import BadVideoError
from utils.config import ConfigError
from utils.logger import get_logger

logger = get_logger(__name__)

NAMED = 3  # paths quoted in a message


class MissingVideosError(BadVideoError):
    """Videos of a split list that are not on disk (DATA.ON_BAD_VIDEO error); the message counts them."""

    def __init__(self, list_file: str, message: str):
        self.path, self.reason, self.detail = list_file, "missing", ""
        RuntimeError.__init__(self, message)


def run_splits(cfg) -> list[str]:
    """The splits a run reads: train and val when TRAIN.ENABLE (validation selects the checkpoint), test when
    TEST.ENABLE."""
    return (["train", "val"] if cfg.TRAIN.ENABLE else []) + (["test"] if cfg.TEST.ENABLE else [])


def _named(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:NAMED])
    return shown + (f" and {len(paths) - NAMED} more" if len(paths) > NAMED else "")


def check_split(cfg, split: str) -> dict[str, Any]:
    """Load and check one split; returns its counts. Raises SplitError, EpisodeConfigError or
    MissingVideosError (a UserError each) with a one-line message."""
    data = cfg.DATA
    loaded = load_split(data.ANNO_DIR, split)
    way, shot, query = episode_shape(cfg, split)
    source = f"{loaded.list_file} ({split} episodes)"
    EpisodeSampler(loaded.videos_by_class(), loaded.class_names, way, shot, query, source=source)

    if data.ON_MISSING_VIDEO == "drop":
        return check_on_disk(cfg, loaded, (way, shot, query), source)
    paths = [e.video_path(data.DATA_ROOT_DIR, data.VIDEO_EXT, data.FRAMES_FOLDER) for e in loaded.videos]
    missing, empty = scan_videos(paths, data.FRAMES_FOLDER)
    bad = sorted(missing + empty)
    counts: dict[str, Any] = {"classes": loaded.num_classes, "videos": len(paths), "missing": len(missing),
                              "empty": len(empty), "missing_tracks": None}
    if bad:
        what = "folders of frames" if data.FRAMES_FOLDER else "videos"
        kinds = ", ".join(f"{n} {kind}" for n, kind in ((len(missing), "missing"), (len(empty), "empty")) if n)
        summary = (f"{loaded.list_file}: {len(bad)} of {len(paths)} listed {what} are unusable ({kinds}) under "
                   f"DATA.DATA_ROOT_DIR {data.DATA_ROOT_DIR!r}: {_named([paths[i] for i in bad])}")
        if data.ON_BAD_VIDEO == "error":
            raise MissingVideosError(loaded.list_file, f"{summary} (check DATA.DATA_ROOT_DIR and DATA.VIDEO_EXT; "
                                                       f"to run on the videos you have, set DATA.ON_MISSING_VIDEO "
                                                       f"drop; DATA.ON_BAD_VIDEO resample replaces them by other "
                                                       f"videos of their class)")
        logger.warning("%s; DATA.ON_BAD_VIDEO resample replaces them by other videos of their class", summary)
        unusable = {loaded.videos[i] for i in bad}
        usable = [[e for e in videos if e not in unusable] for videos in loaded.videos_by_class()]
        EpisodeSampler(usable, loaded.class_names, way, shot, query,
                       source=f"{source}, counting only usable videos")

    counts["missing_tracks"] = count_missing_tracks(cfg, loaded)
    return counts


def check_on_disk(cfg, loaded, shape: tuple[int, int, int], source: str) -> dict[str, Any]:
    """DATA.ON_MISSING_VIDEO drop: the split keeps its videos on disk and the classes with SHOT + QUERY of them
    (`shape` = the split's WAY, SHOT, QUERY); logs what it keeps and checks that WAY classes remain."""
    way, shot, query = shape
    found = on_disk(loaded, cfg.DATA, shot + query)
    logger.warning("%s", describe(found, shot + query))
    kept = found.split
    EpisodeSampler(kept.videos_by_class(), kept.class_names, way, shot, query,
                   source=f"{source}, counting only videos on disk (DATA.ON_MISSING_VIDEO drop)")
    counts: dict[str, Any] = {"classes": found.listed_classes, "videos": found.listed_videos,
                              "missing": found.missing, "empty": found.empty, "kept_classes": kept.num_classes,
                              "kept_videos": len(kept.videos)}
    counts["missing_tracks"] = count_missing_tracks(cfg, kept)
    return counts


def check_track_dir(cfg) -> None:
    """With VFAM on, DATA.TRACK_DIR must be a folder: a mistyped one would mask every entity of every video."""
    track_dir = cfg.DATA.TRACK_DIR
    if cfg.VFAM.ENABLE and track_dir and not os.path.isdir(track_dir):
        raise ConfigError(f"DATA.TRACK_DIR {track_dir}: no such folder, and VFAM.ENABLE needs its track files "
                          f"(check the path, write them with runs/extract_tracks.py, or set VFAM.ENABLE False)")


def count_missing_tracks(cfg, loaded) -> int | None:
    """Videos without a track file (None without VFAM tracks): counted and logged, never refused."""
    data = cfg.DATA
    if not (cfg.VFAM.ENABLE and data.TRACK_DIR):
        return None
    without = [e.video_id for e in loaded.videos if not os.path.exists(track_path(data.TRACK_DIR, e.video_id))]
    if without:  # a video without tracks takes the baseline path (masked entities), never an error
        logger.info("%s: %d of %d videos have no track file in DATA.TRACK_DIR %r (their entities are masked): "
                    "%s", loaded.list_file, len(without), len(loaded.videos), data.TRACK_DIR, _named(without))
    return len(without)


def write_effective_lists(cfg, folder: str) -> None:
    """DATA.ON_MISSING_VIDEO drop: the lists each split of the run reads (videos on disk, classes kept, renumbered),
    written into `folder` in the CLIP-FSAR format, so the run records which part of the benchmark it used."""
    for split in run_splits(cfg):
        _, shot, query = episode_shape(cfg, split)
        write_split(folder, on_disk(load_split(cfg.DATA.ANNO_DIR, split), cfg.DATA, shot + query).split)


def tested_share(counts: dict[str, Any] | None) -> dict[str, Any] | None:
    """What part of a split's listed benchmark its episodes could draw (results.json `benchmark`), from its
    start-up counts: videos on disk (or kept by DATA.ON_MISSING_VIDEO drop) and classes kept, of those listed."""
    if not counts:
        return None
    videos = counts.get("kept_videos", counts["videos"] - counts["missing"] - counts["empty"])
    classes = counts.get("kept_classes", counts["classes"])
    return {"videos": videos, "listed_videos": counts["videos"], "classes": classes,
            "listed_classes": counts["classes"], "share_of_videos": round(videos / max(counts["videos"], 1), 4),
            "partial": videos < counts["videos"] or classes < counts["classes"]}


def check_run_data(cfg) -> dict[str, Any]:
    """Check every split the run will use (`run_splits`) before the first step; returns
    {split: {classes, videos, missing, empty, missing_tracks}, "seconds": float}."""
    start = time.perf_counter()
    squash_prepared_scale(cfg.DATA)  # prepared frames fit the view (no second resampling)
    check_track_dir(cfg)
    result: dict[str, Any] = {split: check_split(cfg, split) for split in run_splits(cfg)}
    result["seconds"] = round(time.perf_counter() - start, 3)
    described = "; ".join(f"{s} {c['classes']} classes, {c['videos']} videos" for s, c in result.items()
                          if s != "seconds")
    logger.info("data checked in %.2f s: %s", result["seconds"], described or "no split used")
    return result


def check_same_data(cfg, reference: dict[str, Any], seen: dict[str, Any]) -> None:
    """A node's `check_run_data` counts must equal rank 0's: with node-local data (each node's own copy, or a relative
    DATA.DATA_ROOT_DIR read from each node's working folder) a node that lacks videos would otherwise draw other
    episodes (DATA.ON_BAD_VIDEO resample, DATA.ON_MISSING_VIDEO drop) or fail mid-run on its own."""
    for split in run_splits(cfg):
        ref, here = reference.get(split, {}), seen.get(split, {})
        differ = [k for k in ref if ref[k] != here.get(k)]
        if differ:
            list_file = split_files(cfg.DATA.ANNO_DIR, split)[0]
            shown = ", ".join(f"{k} {here.get(k)} here, {ref[k]} on rank 0" for k in differ)
            message = (f"{list_file}: this node sees other data than rank 0 ({shown}) (every node must read the "
                       f"same split lists and videos under DATA.ANNO_DIR and DATA.DATA_ROOT_DIR; copy what this "
                       f"node lacks)")
            if set(differ) & {"classes", "videos"}:
                raise SplitError(message)
            raise MissingVideosError(list_file, message)
