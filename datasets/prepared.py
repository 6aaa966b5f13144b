"""What `runs/prepare_videos.py` wrote into a prepared data root (`<root>/prepared.json`), read and written here.

The record says how the frames were made (format, short side, and the square side when they were squashed at
preparation). A folder of JPEG frames may also record its source video's frame rate (`<folder>/video.json`), which
the K-100 clip window scales with (datasets/sampling.py:clip_indices); prepared mp4 files carry it in their stream.

Frames squashed at preparation to the scale the lineage's squash view uses (CLIP-FSAR: every frame to 256 x 256)
need no resampling in the loader: each view is then an exact crop, which travels as uint8 pixels.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from utils.atomic import atomic_write
from utils.config import ConfigError
from utils.textfiles import read_text

RECORD = "prepared.json"


@dataclass(frozen=True)
class PreparedForm:
    format: str  # frames | mp4
    short_side: int  # larger videos were shrunk to this short side (0: kept); unused with squash
    squash: int = 0  # > 0: every frame was squashed to squash x squash (aspect ignored), the lineage's resize rule

    def __str__(self) -> str:
        return f"--format {self.format} --short-side {self.short_side} --squash {self.squash}"


def write_prepared_form(root: str, form: PreparedForm) -> None:
    atomic_write(os.path.join(root, RECORD), lambda f: f.write(json.dumps(asdict(form), indent=1) + "\n"),
                 binary=False)


def read_prepared_form(root: str) -> PreparedForm | None:
    """The record of a prepared data root, or None for raw videos (no record)."""
    path = os.path.join(root, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        return PreparedForm(**json.loads(read_text(path, "prepare_videos record", ConfigError)))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a prepare_videos record ({e}); rerun runs/prepare_videos.py") from None


def squash_prepared_scale(data) -> int:
    """The DATA section's prepared square side (0 when the frames were not squashed at preparation); refuses views
    that would resample squashed frames a second time (another scale, or the short-side view's aspect ratio)."""
    form = read_prepared_form(data.DATA_ROOT_DIR)
    if form is None or form.squash <= 0:
        return 0
    scales = {*data.TRAIN_JITTER_SCALES, data.TEST_SCALE}
    if data.RESIZE_MODE != "squash" or scales != {form.squash}:
        raise ConfigError(f"DATA.DATA_ROOT_DIR {data.DATA_ROOT_DIR} holds frames squashed to {form.squash}x"
                          f"{form.squash} (prepare_videos --squash), but DATA.RESIZE_MODE {data.RESIZE_MODE} with "
                          f"DATA.TRAIN_JITTER_SCALES {list(data.TRAIN_JITTER_SCALES)} and DATA.TEST_SCALE "
                          f"{data.TEST_SCALE} would resample them again; use RESIZE_MODE squash with every scale "
                          f"{form.squash}, or prepare without --squash")
    return form.squash


# A frames folder's own record: {"fps": <the source video's average frame rate>}, beside its img_%05d.jpg files.
FRAMES_RECORD = "video.json"


def write_frames_fps(folder: str, fps: float) -> None:
    """Record the frame rate of the video whose frames `folder` holds (written before the folder is renamed into
    place, so a finished folder always has it)."""
    atomic_write(os.path.join(folder, FRAMES_RECORD), lambda f: f.write(json.dumps({"fps": float(fps)}) + "\n"),
                 binary=False)


def read_frames_fps(folder: str) -> float | None:
    """The frame rate a frames folder records, None without a record; ValueError for a malformed one."""
    path = os.path.join(folder, FRAMES_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        fps = float(json.loads(read_text(path, "frames record", ConfigError))["fps"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: not a frames record ({e!r}); expected {{\"fps\": <frames per second>}}") from None
    if not fps > 0:
        raise ValueError(f"{path}: fps must be > 0, got {fps}")
    return fps
