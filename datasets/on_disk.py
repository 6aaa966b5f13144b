"""Runs on the videos you have (DATA.ON_MISSING_VIDEO drop): a partial download as a recorded choice.

Most Kinetics copies miss YouTube-removed videos and many people start with part of SSv2. With `drop`, every split
the run reads keeps the listed videos that are on disk, then the classes that still hold that split's SHOT + QUERY
videos; kept classes are renumbered in list order and keep their names. The result is a pure function of the lists
and the files present, computed the same way by the start-up check and by every dataset, so episodes stay a pure
function of (RANDOM_SEED, split, index) given these effective lists; the run writes them into OUTPUT_DIR/splits/ and
`results.json` says what share of the benchmark was tested.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from typing import Sequence

from datasets.splits import Split
from utils.config import CfgNode, one_of, rules, section

ON_MISSING_VIDEO = ("error", "drop")


def add_on_disk_config(cfg: CfgNode) -> None:
    # A listed video that is not on disk (or a zero-byte file), found by the start-up check. error: refuse the run,
    # naming the files (the lineage's lists are the benchmark). drop: run on what is there: such videos leave the
    # split, then classes with fewer than the split's SHOT + QUERY videos (val/test: SHOT_TEST, QUERY_PER_CLASS_TEST);
    # counts per split in the log, the effective lists in OUTPUT_DIR/splits/, the share tested in results.json.
    # (CLIP-FSAR has no start-up check: a missing video fails at its first draw, and its loader retries others.)
    section(cfg, "DATA").ON_MISSING_VIDEO = "error"
    rules("DATA", ON_MISSING_VIDEO=one_of(*ON_MISSING_VIDEO))


def scan_videos(paths: Sequence[str], folders: bool = False) -> tuple[list[int], list[int]]:
    """(indices of missing, indices of empty) entries: one `os.stat` each, symlinks followed.

    A video must be a regular file (an empty one is unusable too); with `folders` a folder of frames.
    """
    missing: list[int] = []
    empty: list[int] = []
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError:
            missing.append(i)
            continue
        if folders:
            if not stat.S_ISDIR(st.st_mode):
                missing.append(i)
        elif not stat.S_ISREG(st.st_mode):
            missing.append(i)
        elif st.st_size == 0:
            empty.append(i)
    return missing, empty


@dataclass(frozen=True)
class OnDisk:
    """A split restricted to the videos on disk, and what that cost."""

    split: Split  # the effective split: kept videos, kept classes renumbered 0..k-1
    listed_videos: int
    listed_classes: int
    missing: int  # listed videos not on disk
    empty: int  # listed videos that are zero-byte files
    short_classes: list[str]  # classes dropped for holding fewer than SHOT + QUERY videos on disk

    def counts(self) -> dict[str, int]:
        """The share of the listed benchmark this split keeps (results.json, the log)."""
        return {"videos": len(self.split.videos), "listed_videos": self.listed_videos,
                "classes": self.split.num_classes, "listed_classes": self.listed_classes}


def video_paths(split: Split, data) -> list[str]:
    """Where each listed video of `split` lives under the DATA section's root, extension and form."""
    return [e.video_path(data.DATA_ROOT_DIR, data.VIDEO_EXT, data.FRAMES_FOLDER) for e in split.videos]


def keep_videos(split: Split, unusable: set[int], need: int) -> tuple[Split, list[str]]:
    """`split` without the entries at `unusable` and then without classes left with fewer than `need` videos;
    returns it with the names of the classes dropped that way."""
    by_class: list[list] = [[] for _ in split.class_names]
    for i, entry in enumerate(split.videos):
        if i not in unusable:
            by_class[entry.class_id].append(entry)
    kept_ids = [c for c, videos in enumerate(by_class) if len(videos) >= need]
    renumber = {old: new for new, old in enumerate(kept_ids)}
    videos = [dataclasses.replace(e, class_id=renumber[e.class_id]) for i, e in enumerate(split.videos)
              if i not in unusable and e.class_id in renumber]
    short = [name for c, name in enumerate(split.class_names) if by_class[c] and c not in renumber]
    return Split(split.name, [split.class_names[c] for c in kept_ids], videos, split.list_file), short


def on_disk(split: Split, data, need: int) -> OnDisk:
    """`split` restricted to the videos present under the DATA section's root (one `stat` per listed video)."""
    missing, empty = scan_videos(video_paths(split, data), data.FRAMES_FOLDER)
    kept, short = keep_videos(split, set(missing) | set(empty), need)
    return OnDisk(kept, len(split.videos), split.num_classes, len(missing), len(empty), short)


def describe(found: OnDisk, need: int) -> str:
    """One log line: what a split keeps of its list."""
    lost = found.listed_classes - found.split.num_classes
    share = 100.0 * len(found.split.videos) / max(found.listed_videos, 1)
    return (f"{found.split.list_file}: DATA.ON_MISSING_VIDEO drop keeps {len(found.split.videos)} of "
            f"{found.listed_videos} listed videos ({share:.1f} %; {found.missing} missing, {found.empty} empty) and "
            f"{found.split.num_classes} of {found.listed_classes} classes ({lost} dropped, {len(found.short_classes)} "
            f"of them left with fewer than SHOT + QUERY = {need} videos)")
