"""Video readers behind one small interface: decord (resize at decode time) and folders of JPEG frames.

`source.open(path, short_side)` returns an `OpenedVideo` that knows its frame count and original size and
decodes only the frames asked for, already resized so that the short side equals `short_side`
(aspect kept; `short_side <= 0` keeps the original resolution). Problems raise `BadVideoError`, which
names the file and says what is wrong (missing, unreadable, empty, too short).
"""
from __future__ import annotations

import glob
import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from PIL import Image

from utils.errors import UserError


class BadVideoError(UserError, RuntimeError):
    """A video that cannot be used; `reason` is one of missing, unreadable, empty, too short, gaps."""

    exit_code = 5
    family = "video"

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason} video" + (f" ({detail})" if detail else ""))


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side equal to `short_side` and the aspect ratio kept."""
    if short_side <= 0:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class OpenedVideo(ABC):
    """An open video: `num_frames`, original `width`/`height`, decoded `size` (w, h)."""

    path: str
    num_frames: int
    width: int
    height: int
    size: tuple[int, int]

    @abstractmethod
    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames [len(indices), h, w, 3] at `size`."""


class VideoSource(ABC):
    """Opens videos; implementations decide how frames are decoded and resized."""

    min_frames: int = 1

    @abstractmethod
    def open(self, path: str, short_side: int) -> OpenedVideo:
        ...

    def check_length(self, path: str, num_frames: int) -> None:
        if num_frames <= 0:
            raise BadVideoError(path, "empty", "0 frames")
        if num_frames < self.min_frames:
            raise BadVideoError(path, "too short", f"{num_frames} frames < DATA.MIN_VIDEO_FRAMES {self.min_frames}")


# ---------------------------------------------------------------------------------------------
# decord


def probe_size(path: str) -> tuple[int, int]:
    """Original (width, height) from the container header, without decoding a frame."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise BadVideoError(path, "unreadable", "no video stream")
            ctx = container.streams.video[0].codec_context
            width, height = int(ctx.width), int(ctx.height)
    except BadVideoError:
        raise
    except Exception as e:  # PyAV raises many error types for broken files
        raise BadVideoError(path, "unreadable", _first_line(e)) from None
    if width <= 0 or height <= 0:
        raise BadVideoError(path, "unreadable", f"frame size {width}x{height}")
    return width, height


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [T, h, w, 3] -> [T, size[1], size[0], 3], bilinear with antialiasing.

    torch's uint8 channels-last kernel (what torchvision uses for uint8 tensors): about 15x faster than
    converting to float first, and within 1 grey level of it.
    """
    import torch
    import torch.nn.functional as F

    if (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NCHW view, channels-last memory
    video = F.interpolate(video, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    return video.permute(0, 2, 3, 1).contiguous().numpy()


def _open_decord(path: str, size: tuple[int, int] | None, num_threads: int):
    import decord

    try:
        if size is None:
            return decord.VideoReader(path, num_threads=num_threads)
        return decord.VideoReader(path, width=size[0], height=size[1], num_threads=num_threads)
    except Exception as e:  # decord raises DECORDError / RuntimeError for files it cannot open
        raise BadVideoError(path, "unreadable", _first_line(e)) from None


class _DecordVideo(OpenedVideo):
    def __init__(self, path: str, width: int, height: int, size: tuple[int, int], num_threads: int):
        self.path, self.num_threads = path, num_threads
        self.width, self.height, self.size = width, height, size
        self.reader = _open_decord(path, None if size == (width, height) else size, num_threads)
        self.num_frames = len(self.reader)

    def _get_batch(self, indices: list[int]) -> np.ndarray:
        try:
            batch = self.reader.get_batch(indices).asnumpy()
        except Exception as e:  # decord raises DECORDError / RuntimeError on corrupt streams
            raise BadVideoError(self.path, "unreadable", f"decoding frames {indices}: {_first_line(e)}") from None
        if batch.shape[0] != len(indices):
            raise BadVideoError(self.path, "too short", f"decoded {batch.shape[0]} of {len(indices)} frames")
        return batch

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        try:
            return self._get_batch(indices)
        except BadVideoError as err:
            if err.reason != "unreadable":
                raise
            decord_error = err
        # decord 0.6 fails a buffer-size check for a few small frame widths (16, 24, 48 and 72 px, at
        # decode or output size); PyAV decodes those, so a readable video is not called bad.
        return resize_frames(decode_with_pyav(self.path, indices, decord_error), self.size)


def decode_with_pyav(path: str, indices: Sequence[int], decord_error: BadVideoError) -> np.ndarray:
    """Full-resolution RGB frames at `indices` by decoding sequentially with PyAV (fallback path)."""
    import av

    wanted, last = set(indices), max(indices)
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    found[k] = frame.to_ndarray(format="rgb24")
                if k >= last:
                    break
    except Exception:  # PyAV raises many error types for broken files; decord's message is the useful one
        raise decord_error from None
    if len(found) != len(wanted):
        raise decord_error
    return np.stack([found[i] for i in indices])


class DecordSource(VideoSource):
    """decord `VideoReader(path, width=, height=)` sized at decode time, then `get_batch(indices)`."""

    def __init__(self, num_threads: int = 1, min_frames: int = 1):
        self.num_threads = num_threads  # 1 per DataLoader worker: workers already use the cores
        self.min_frames = min_frames
        self._sizes: dict[str, tuple[int, int]] = {}  # path -> original (w, h): videos recur across episodes

    def open(self, path: str, short_side: int) -> OpenedVideo:
        if not os.path.isfile(path):
            raise BadVideoError(path, "missing")
        if os.path.getsize(path) == 0:
            raise BadVideoError(path, "empty", "0 bytes")
        if path not in self._sizes:
            self._sizes[path] = probe_size(path)
        width, height = self._sizes[path]
        video = _DecordVideo(path, width, height, resized_size(width, height, short_side), self.num_threads)
        self.check_length(path, video.num_frames)
        return video


# ---------------------------------------------------------------------------------------------
# pre-extracted frames: <video>/img_00001.jpg ...


class _FramesFolderVideo(OpenedVideo):
    def __init__(self, path: str, files: list[str], width: int, height: int, size: tuple[int, int]):
        self.path, self.files = path, files
        self.num_frames = len(files)
        self.width, self.height, self.size = width, height, size

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), self.size[1], self.size[0], 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            try:
                with Image.open(self.files[i]) as img:
                    # JPEG draft mode decodes at a reduced DCT scale (>= the target), the cheap part of resizing.
                    img.draft("RGB", self.size)
                    img = img.convert("RGB")
                    if img.size != self.size:
                        img = img.resize(self.size, Image.BILINEAR)
                    out[k] = np.asarray(img)
            except (OSError, ValueError) as e:
                raise BadVideoError(self.path, "unreadable", f"{self.files[i]}: {_first_line(e)}") from None
        return out


class FramesFolderSource(VideoSource):
    """A folder of `img_%05d.jpg` frames (1-based, the TSN/CLIP-FSAR convention) per video."""

    pattern = "img_[0-9][0-9][0-9][0-9][0-9].jpg"

    def __init__(self, min_frames: int = 1):
        self.min_frames = min_frames

    def open(self, path: str, short_side: int) -> OpenedVideo:
        if not os.path.isdir(path):
            raise BadVideoError(path, "missing", "frames folder not found")
        files = sorted(glob.glob(os.path.join(path, self.pattern)))
        self.check_length(path, len(files))
        numbers = [int(os.path.basename(f)[4:9]) for f in files]
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing:
            # Frames would silently shift in time: sampled segment positions no longer match the video.
            shown = ", ".join(f"img_{n:05d}.jpg" for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise BadVideoError(path, "gaps", f"{len(missing)} missing frame(s): {shown}")
        try:
            with Image.open(files[0]) as img:
                width, height = img.size
        except (OSError, ValueError) as e:
            raise BadVideoError(path, "unreadable", f"{files[0]}: {_first_line(e)}") from None
        return _FramesFolderVideo(path, files, width, height, resized_size(width, height, short_side))


def build_video_source(frames_folder: bool, num_threads: int = 1, min_frames: int = 1) -> VideoSource:
    """The reader for DATA.FRAMES_FOLDER (True: JPEG folders, False: decord)."""
    if frames_folder:
        return FramesFolderSource(min_frames=min_frames)
    return DecordSource(num_threads=num_threads, min_frames=min_frames)
