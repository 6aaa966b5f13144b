"""Video readers behind one small interface: PyAV (frame-exact seeking), decord, torchcodec, JPEG frame folders.

`source.open(path, short_side)` returns an `OpenedVideo` that knows its frame count, frame rate and original size
and decodes only the frames asked for, already resized so that the short side equals `short_side`
(aspect kept; `short_side <= 0` keeps the original resolution). Problems raise `BadVideoError`, which
names the file and says what is wrong (missing, unreadable, empty, too short).

Frame `k` of a video is the k-th picture in presentation order from the start of its stream, which is what
decoding the whole stream sequentially yields. PyAV's reader finds it by timestamp (an index of the stream's
packets), seeks only to key frames and verifies every decoded frame against that index; decord 0.6 returns
other frames than asked in AVI files with inter-frame codecs (MPEG-4 part 2, H.264), so `DecordSource` hands
those files to PyAV (tests/test_decoders.py proves both on clips whose pixels carry their frame number).
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from datasets.prepared import FRAMES_RECORD, read_frames_fps
from utils.config import CfgNode, ConfigError, one_of, rules, section
from utils.errors import UserError
from utils.logger import get_logger, log_once

logger = get_logger(__name__)

DECODERS = ("decord", "pyav", "torchcodec")
DEFAULT_DECODER = "pyav"  # exact everywhere, as fast as decord or faster (runs/benchmark.py data; docs/performance.md)


def add_video_config(cfg: CfgNode) -> None:
    # decord: the lineage's (AVI with inter-frame codecs goes to PyAV, logged once); pyav: the exact reference;
    # torchcodec: where it imports (needs system FFmpeg shared libraries). JPEG folders (FRAMES_FOLDER) ignore it.
    section(cfg, "DATA").DECODER = DEFAULT_DECODER
    rules("DATA", DECODER=one_of(*DECODERS))


class BadVideoError(UserError, RuntimeError):
    """A video that cannot be used; `reason` is one of missing, unreadable, empty, too short, gaps, wrong size."""

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
    """An open video: `num_frames`, original `width`/`height`, decoded `size` (w, h), and `fps`: the average frame
    rate the file records (the container's, as decord's `get_avg_fps` reads it; None where it records none)."""

    path: str
    num_frames: int
    width: int
    height: int
    size: tuple[int, int]
    fps: float | None = None

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
# shared by the decoders


def check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise BadVideoError(path, "missing")
    if os.path.getsize(path) == 0:
        raise BadVideoError(path, "empty", "0 bytes")


@dataclass(frozen=True)
class StreamInfo:
    """What the container header says about the first video stream."""

    width: int
    height: int
    container: str  # FFmpeg demuxer name, e.g. "avi", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # FFmpeg decoder name, e.g. "mpeg4", "h264", "vp9", "mjpeg"
    fps: float | None = None  # the stream's average frame rate (FFmpeg's avg_frame_rate); None if it has none


def average_fps(stream) -> float | None:
    """A PyAV stream's average frame rate as FFmpeg records it (decord's `get_avg_fps` reads the same field)."""
    rate = stream.average_rate
    return float(rate) if rate else None


def probe(path: str) -> StreamInfo:
    """Size, container and codec from the header, without decoding a frame."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise BadVideoError(path, "unreadable", "no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            info = StreamInfo(int(ctx.width), int(ctx.height), container.format.name, ctx.name, average_fps(stream))
    except BadVideoError:
        raise
    except Exception as e:  # PyAV raises many error types for broken files
        raise BadVideoError(path, "unreadable", _first_line(e)) from None
    if info.width <= 0 or info.height <= 0:
        raise BadVideoError(path, "unreadable", f"frame size {info.width}x{info.height}")
    return info


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


def _log_once(key, message: str, *args) -> None:
    log_once(logger, key, logging.INFO, message, *args)


# ---------------------------------------------------------------------------------------------
# PyAV: the exact reference

_REFORMATTER = threading.local()  # .owner = (pid, VideoReformatter): one per thread of each process


def rgb24(frame, width: int | None = None, height: int | None = None, interpolation: str | None = None) -> np.ndarray:
    """A decoded PyAV frame as uint8 RGB [h, w, 3] (optionally resized by swscale), safe across fork.

    PyAV 18.1.1 keeps one swscale context per thread for every `frame.to_ndarray(format=...)`, with FFmpeg's
    automatic slice threads; a forked child (a DataLoader or pool worker) inherits that context without its threads
    and its first conversion waits forever. Ours is owned by one process and thread and runs single-threaded (the
    workers already use the cores), so a child creates its own and nothing it inherits holds a thread pool
    (tests/test_decoders.py decodes in the main process, then in forked loader workers).
    """
    from av.video.reformatter import VideoReformatter

    owner = getattr(_REFORMATTER, "owner", None)
    if owner is None or owner[0] != os.getpid():
        owner = _REFORMATTER.owner = (os.getpid(), VideoReformatter())
    return owner[1].reformat(frame, width=width, height=height, format="rgb24", interpolation=interpolation,
                             threads=1).to_ndarray()



class _IndexMismatch(Exception):
    """Decoded frames disagree with the packet index: decode sequentially instead."""


@dataclass(frozen=True)
class FrameIndex:
    """Presentation timestamps of a stream's frames (sorted: entry k is frame k) and of its key frames."""

    pts: np.ndarray  # int64 [num_frames]
    key_pts: np.ndarray  # int64 [num_key_frames], sorted
    exact: bool  # False: timestamps missing or repeated, frames are found by decoding from the start


def index_frames(container, stream) -> FrameIndex:
    """Demux (no decoding) every packet of `stream`: one frame per non-empty packet.

    Frame counts come from here, never from the header (webm has none, AVI's counts dropped frames).
    """
    pts, keys, complete = [], [], True
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # end-of-stream flush, AVI "dropped frame" chunks, and
            continue  # mp4 edit-list cuts: none of them is a presented picture
        if packet.pts is None:
            complete = False
            pts.append(len(pts))
            continue
        pts.append(int(packet.pts))
        if packet.is_keyframe:
            keys.append(int(packet.pts))
    ordered = np.sort(np.asarray(pts, dtype=np.int64))
    exact = complete and bool(keys) and len(np.unique(ordered)) == len(ordered)
    return FrameIndex(ordered, np.sort(np.asarray(keys, dtype=np.int64)), exact)


# Where packet timestamps are presentation timestamps (tests/test_decoders.py). AVI has none: FFmpeg derives them
# from the decode order, which its MPEG-4 part 2 parser reorders correctly and H.264 does not.
TIMESTAMP_CONTAINERS = ("mov", "mp4", "matroska", "webm")
TIMESTAMP_CODECS_ANY_CONTAINER = ("mpeg4", "mjpeg")


def timestamps_are_exact(info: StreamInfo) -> bool:
    return (any(name in TIMESTAMP_CONTAINERS for name in info.container.split(","))
            or info.codec in TIMESTAMP_CODECS_ANY_CONTAINER)


def check_stream_size(path: str, index: int, frame: np.ndarray, info: StreamInfo) -> None:
    """A decoded frame [h, w, 3] must have the stream's size: a resolution that changes mid-stream is a bad video."""
    if frame.shape[:2] != (info.height, info.width):
        raise BadVideoError(path, "wrong size", f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the stream's "
                            f"frames {info.width}x{info.height}: its resolution changes mid-stream; re-encode it at "
                            f"one size, e.g. with runs/prepare_videos.py")


class _PyAVVideo(OpenedVideo):
    def __init__(self, path: str, container, index: FrameIndex, info: StreamInfo, size: tuple[int, int]):
        self.path, self.container, self.index, self.info = path, container, index, info
        self.stream = container.streams.video[0]
        self.num_frames = len(index.pts)
        self.width, self.height, self.size, self.fps = info.width, info.height, size, info.fps

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise BadVideoError(self.path, "too short", f"frame {i} asked of {self.num_frames}")
        wanted = sorted(set(indices))
        try:
            try:
                if not self.index.exact:
                    raise _IndexMismatch("packet timestamps missing or repeated")
                if not timestamps_are_exact(self.info):
                    raise _IndexMismatch("this container's timestamps follow the decode order")
                found = self._decode_seeking(wanted)
            except _IndexMismatch as why:
                _log_once(("sequential", self.info.container, self.info.codec),
                          "%s (%s in %s): %s; decoding such videos from their first frame", self.path,
                          self.info.codec, self.info.container, why)
                found = self._decode_sequential(wanted)
        except BadVideoError:
            raise
        except Exception as e:  # PyAV raises many error types for corrupt streams
            raise BadVideoError(self.path, "unreadable", f"decoding frames {wanted}: {_first_line(e)}") from None
        for i in indices:
            check_stream_size(self.path, i, found[i], self.info)
        # Resized by us, not by swscale: its scaled YUV->RGB path shifted colours by up to 0.29 at a 64 -> 72 px
        # upscale (tests/test_data_tracks.py), while at the original size it equals decord.
        return resize_frames(np.stack([found[i] for i in indices]), self.size)

    def _decode_seeking(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Seek to the key frame before each wanted frame unless decoding on reaches it sooner."""
        pts, keys = self.index.pts, self.index.key_pts
        wanted_set, found = set(wanted), {}
        decoded, floor, last = None, 0, None
        for i in wanted:
            target = int(pts[i])
            key = int(keys[max(0, np.searchsorted(keys, target, side="right") - 1)])
            if decoded is None or last is None or key > last:
                self.container.seek(key, stream=self.stream, backward=True, any_frame=False)
                decoded, floor, last = self.container.decode(self.stream), key, None
            for frame in decoded:
                if frame.pts is None:
                    raise _IndexMismatch("a decoded frame has no timestamp")
                if frame.pts < floor:  # leading frames of an open GOP lean on the GOP before the key frame
                    continue
                if last is not None and frame.pts <= last:
                    raise _IndexMismatch(f"decoded timestamps go back ({last} then {frame.pts})")
                k = int(np.searchsorted(pts, frame.pts))
                if k >= len(pts) or pts[k] != frame.pts:
                    raise _IndexMismatch(f"decoded timestamp {frame.pts} is not in the packet index")
                last = int(frame.pts)
                if k in wanted_set and k not in found:
                    found[k] = rgb24(frame)
                if last >= target:
                    break
            if i not in found:
                raise _IndexMismatch(f"frame {i} (timestamp {target}) was not decoded after seeking")
        return found

    def _decode_sequential(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Frame k is the k-th decoded picture from the start (the definition; slow for late frames)."""
        import av

        wanted_set, found = set(wanted), {}
        # A fresh container: after a seek, FFmpeg's H.264 decoder in AVI was seen to emit frames out of place.
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self.stream.codec_context.thread_count
            for k, frame in enumerate(container.decode(stream)):
                if k in wanted_set:
                    found[k] = rgb24(frame)
                if k >= wanted[-1]:
                    break
        if len(found) != len(wanted_set):
            missing = sorted(wanted_set - set(found))
            raise BadVideoError(self.path, "too short", f"frames {missing[:3]} not decodable of {self.num_frames}")
        return found


class PyAVSource(VideoSource):
    """PyAV (FFmpeg): a packet index per video, key-frame seeks, decoded timestamps checked against the index."""

    def __init__(self, num_threads: int = 1, min_frames: int = 1, cache_size: int = 4096):
        self.num_threads = num_threads  # 1 per DataLoader worker: workers already use the cores
        self.min_frames = min_frames
        # path -> (info, index): videos recur across episodes; the index costs a demux pass over the file.
        self._cache: OrderedDict[str, tuple[StreamInfo, FrameIndex]] = OrderedDict()
        self.cache_size = cache_size

    def open(self, path: str, short_side: int) -> OpenedVideo:
        import av

        check_file(path)
        try:
            container = av.open(path)
            if not container.streams.video:
                raise BadVideoError(path, "unreadable", "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self.num_threads
            if path in self._cache:
                self._cache.move_to_end(path)
                info, index = self._cache[path]
            else:
                ctx = stream.codec_context
                info = StreamInfo(int(ctx.width), int(ctx.height), container.format.name, ctx.name,
                                  average_fps(stream))
                index = index_frames(container, stream)
                self._cache[path] = info, index
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        except BadVideoError:
            raise
        except Exception as e:  # PyAV raises many error types for broken files
            raise BadVideoError(path, "unreadable", _first_line(e)) from None
        if info.width <= 0 or info.height <= 0:
            raise BadVideoError(path, "unreadable", f"frame size {info.width}x{info.height}")
        self.check_length(path, len(index.pts))
        return _PyAVVideo(path, container, index, info, resized_size(info.width, info.height, short_side))


# ---------------------------------------------------------------------------------------------
# decord (the lineage's), with AVI inter-frame codecs handed to PyAV

# Containers/codecs where decord 0.6 returned exactly the frames asked for (tests/test_decoders.py); in AVI with
# MPEG-4 part 2 or H.264 it returned neighbouring or much earlier frames, and sometimes different ones per run.
DECORD_EXACT_CONTAINERS = ("mov", "mp4", "matroska", "webm")
DECORD_EXACT_CODECS = ("mjpeg",)  # intra-only: any container


def decord_is_exact(info: StreamInfo) -> bool:
    return (any(name in DECORD_EXACT_CONTAINERS for name in info.container.split(","))
            or info.codec in DECORD_EXACT_CODECS)


def _open_decord(path: str, size: tuple[int, int] | None, num_threads: int):
    import decord

    try:
        if size is None:
            return decord.VideoReader(path, num_threads=num_threads)
        return decord.VideoReader(path, width=size[0], height=size[1], num_threads=num_threads)
    except Exception as e:  # decord raises DECORDError / RuntimeError for files it cannot open
        raise BadVideoError(path, "unreadable", _first_line(e)) from None


class _DecordVideo(OpenedVideo):
    def __init__(self, path: str, info: StreamInfo, size: tuple[int, int], num_threads: int):
        self.path, self.num_threads = path, num_threads
        self.width, self.height, self.size = info.width, info.height, size
        self.reader = _open_decord(path, None if size == (info.width, info.height) else size, num_threads)
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps()) or None  # the lineage's frame rate (its _decode_video)

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
        try:
            video = PyAVSource(self.num_threads).open(self.path, 0)
            return resize_frames(video.frames(indices), self.size)
        except BadVideoError:
            raise decord_error from None


class DecordSource(VideoSource):
    """decord `VideoReader(path, width=, height=)` sized at decode time, then `get_batch(indices)`.

    `exact_only` (default) sends videos in containers/codecs where decord returns wrong frames to PyAV
    (logged once per container/codec); False reads everything with decord (benchmarks, the tests that show why).
    """

    def __init__(self, num_threads: int = 1, min_frames: int = 1, exact_only: bool = True):
        self.num_threads = num_threads  # 1 per DataLoader worker: workers already use the cores
        self.min_frames, self.exact_only = min_frames, exact_only
        self._info: dict[str, StreamInfo] = {}  # path -> header facts: videos recur across episodes
        self.pyav = PyAVSource(num_threads=num_threads, min_frames=min_frames)

    def open(self, path: str, short_side: int) -> OpenedVideo:
        check_file(path)
        if path not in self._info:
            self._info[path] = probe(path)
        info = self._info[path]
        if self.exact_only and not decord_is_exact(info):
            _log_once(("decord", info.container, info.codec), "DATA.DECODER decord returns wrong frames for %s "
                      "in %s (e.g. %s); decoding those videos with PyAV", info.codec, info.container, path)
            return self.pyav.open(path, short_side)
        video = _DecordVideo(path, info, resized_size(info.width, info.height, short_side), self.num_threads)
        self.check_length(path, video.num_frames)
        return video


# ---------------------------------------------------------------------------------------------
# torchcodec (optional: needs FFmpeg's shared libraries on the system)


class _TorchcodecVideo(OpenedVideo):
    def __init__(self, path: str, decoder, size: tuple[int, int]):
        self.path, self.decoder = path, decoder
        meta = decoder.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.width, self.height, self.size = int(meta.width), int(meta.height), size
        self.fps = float(meta.average_fps) if meta.average_fps else None

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        try:
            batch = self.decoder.get_frames_at(indices=indices).data  # uint8 [N, H, W, 3] (NHWC)
        except Exception as e:  # torchcodec raises RuntimeError / IndexError on corrupt streams or bad indices
            raise BadVideoError(self.path, "unreadable", f"decoding frames {indices}: {_first_line(e)}") from None
        return resize_frames(batch.numpy(), self.size)


class TorchcodecSource(VideoSource):
    """torchcodec `VideoDecoder(seek_mode="exact")`: full-resolution frames, then resized."""

    def __init__(self, num_threads: int = 1, min_frames: int = 1):
        self.num_threads, self.min_frames = num_threads, min_frames

    def open(self, path: str, short_side: int) -> OpenedVideo:
        from torchcodec.decoders import VideoDecoder

        check_file(path)
        try:
            decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=self.num_threads)
        except Exception as e:  # torchcodec raises ValueError / RuntimeError for files it cannot open
            raise BadVideoError(path, "unreadable", _first_line(e)) from None
        meta = decoder.metadata
        video = _TorchcodecVideo(path, decoder, resized_size(int(meta.width), int(meta.height), short_side))
        self.check_length(path, video.num_frames)
        return video


def decoder_available(name: str) -> str:
    """'' when DATA.DECODER `name` can be used here, else why not."""
    if name == "torchcodec":
        if importlib.util.find_spec("torchcodec") is None:
            return "torchcodec is not installed (pip install 'mcdp-fsar[torchcodec]')"
        try:
            import torchcodec.decoders  # noqa: F401  (loads FFmpeg's shared libraries)
        except Exception as e:  # a missing libavcodec surfaces as RuntimeError or OSError
            return f"torchcodec cannot load FFmpeg's shared libraries ({_first_line(e)})"
    return ""

# ---------------------------------------------------------------------------------------------
# pre-extracted frames: <video>/img_00001.jpg ...


class _FramesFolderVideo(OpenedVideo):
    def __init__(self, path: str, files: list[str], width: int, height: int, size: tuple[int, int],
                 fps: float | None):
        self.path, self.files = path, files
        self.num_frames = len(files)
        self.width, self.height, self.size, self.fps = width, height, size, fps

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), self.size[1], self.size[0], 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            try:
                with open(self.files[i], "rb") as f:
                    data = io.BytesIO(f.read())  # one read, not PIL's many small ones
                with Image.open(data) as img:
                    self._check_size(self.files[i], img.size)
                    # JPEG draft mode decodes at a reduced DCT scale (>= the target), the cheap part of resizing.
                    img.draft("RGB", self.size)
                    img = img.convert("RGB")
                    if img.size != self.size:
                        img = img.resize(self.size, Image.BILINEAR)
                    out[k] = np.asarray(img)
            except (OSError, ValueError) as e:
                raise BadVideoError(self.path, "unreadable", f"{self.files[i]}: {_first_line(e)}") from None
        return out

    def _check_size(self, file: str, size: tuple[int, int]) -> None:
        """Every frame must have frame 1's size: one resampled from another size would pass unseen."""
        if size != (self.width, self.height):
            raise BadVideoError(self.path, "wrong size", f"{file} is {size[0]}x{size[1]}, frame 1 is {self.width}x"
                                f"{self.height}; all frames of a video share one size: prepare this video again")


class FramesFolderSource(VideoSource):
    """A folder of `img_%05d.jpg` frames (1-based, the TSN/CLIP-FSAR convention) per video; its frame rate is the
    source video's where the folder records it (datasets/prepared.py: FRAMES_RECORD), else None."""

    pattern = re.compile(r"img_(\d{5})\.jpg")

    def __init__(self, min_frames: int = 1):
        self.min_frames = min_frames

    def open(self, path: str, short_side: int) -> OpenedVideo:
        if not os.path.isdir(path):
            raise BadVideoError(path, "missing", "frames folder not found")
        listed = os.listdir(path)
        names = sorted(name for name in listed if self.pattern.fullmatch(name))  # 6x faster than glob
        self.check_length(path, len(names))
        files = [os.path.join(path, name) for name in names]
        numbers = [int(name[4:9]) for name in names]
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
        try:
            fps = read_frames_fps(path) if FRAMES_RECORD in listed else None
        except ValueError as e:
            raise BadVideoError(path, "unreadable", _first_line(e)) from None
        return _FramesFolderVideo(path, files, width, height, resized_size(width, height, short_side), fps)


def build_video_source(frames_folder: bool, num_threads: int = 1, min_frames: int = 1,
                       decoder: str = DEFAULT_DECODER) -> VideoSource:
    """The reader for DATA.FRAMES_FOLDER (True: JPEG folders) and DATA.DECODER (decord, pyav, torchcodec)."""
    if frames_folder:
        return FramesFolderSource(min_frames=min_frames)
    if decoder not in DECODERS:
        raise ConfigError(f"DATA.DECODER: unknown decoder {decoder!r} (use one of {', '.join(DECODERS)})")
    why_not = decoder_available(decoder)
    if why_not:
        raise ConfigError(f"DATA.DECODER {decoder}: {why_not} (use DATA.DECODER pyav or decord)")
    sources = {"decord": DecordSource, "pyav": PyAVSource, "torchcodec": TorchcodecSource}
    return sources[decoder](num_threads=num_threads, min_frames=min_frames)
