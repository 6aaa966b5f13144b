"""Decoded frames kept in memory between episodes (DATA.FRAME_CACHE_MB), in front of any video reader.

Episodes draw the same videos again and again (a 200-episode run of the synthetic demo decodes each training video
about 11 times), and small videos cost more to open and decode than to train on: on 2 cores the demo's workers spent
0.58 s of CPU per episode decoding next to a 0.9 s training step. The cache keeps each decoded frame (uint8, at the
size the reader returned it) under its (path, short side, frame index) and evicts the least recently used frames past
the budget. It is exact: a frame comes from the reader once and is handed out unchanged after that (stored read-only,
copied into every returned array). Each loading process (main, every DataLoader worker) holds its own cache, so the
memory is the budget times the processes. Videos seen once per run (large benchmarks) gain nothing: keep it off there.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from datasets.video import OpenedVideo, VideoSource
from utils.config import NON_NEGATIVE, CfgNode, rules, section


def add_frame_cache_config(cfg: CfgNode) -> None:
    # MiB of decoded frames each loading process keeps between episodes; 0 = off (the lineage decodes every video
    # each time it is drawn). Exact; pays where videos are small and drawn often (the synthetic benchmarks).
    section(cfg, "DATA").FRAME_CACHE_MB = 0
    rules("DATA", FRAME_CACHE_MB=NON_NEGATIVE)


class FrameCache(VideoSource):
    """`source` with the frames it decoded kept in memory, up to `max_bytes` (least recently used go first)."""

    def __init__(self, source: VideoSource, max_bytes: int):
        self.source, self.max_bytes = source, max_bytes
        self.min_frames = source.min_frames
        self._frames: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        # num_frames, w, h, size, fps
        self._videos: dict[tuple[str, int], tuple[int, int, int, tuple[int, int], float | None]] = {}
        self.bytes = 0

    def open(self, path: str, short_side: int) -> OpenedVideo:
        key = (path, short_side)
        opened = None
        if key not in self._videos:  # first sight: the reader checks the file and reports its shape
            opened = self.source.open(path, short_side)
            self._videos[key] = (opened.num_frames, opened.width, opened.height, opened.size, opened.fps)
        return _CachedVideo(self, path, short_side, *self._videos[key], opened)

    def _get(self, key: tuple[str, int, int]) -> np.ndarray | None:
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
        return frame

    def _put(self, key: tuple[str, int, int], frame: np.ndarray) -> None:
        if frame.nbytes > self.max_bytes:
            return
        frame = frame.copy()  # its own memory (not a view of the decoded batch), never written again
        frame.setflags(write=False)
        self._frames[key] = frame
        self.bytes += frame.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._frames.popitem(last=False)
            self.bytes -= old.nbytes


class _CachedVideo(OpenedVideo):
    def __init__(self, cache: FrameCache, path: str, short_side: int, num_frames: int, width: int, height: int,
                 size: tuple[int, int], fps: float | None, opened: OpenedVideo | None):
        self.cache, self.path, self.short_side = cache, path, short_side
        self.num_frames, self.width, self.height, self.size, self.fps = num_frames, width, height, size, fps
        self._opened = opened  # the reader's video, opened on the first frame the cache lacks

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        keys = [(self.path, self.short_side, int(i)) for i in indices]
        found = {k: f for k in set(keys) if (f := self.cache._get(k)) is not None}
        missing = sorted({k[2] for k in keys if k not in found})
        if missing:
            if self._opened is None:
                self._opened = self.cache.source.open(self.path, self.short_side)
            for i, frame in zip(missing, self._opened.frames(missing), strict=True):
                key = (self.path, self.short_side, i)
                found[key] = frame
                self.cache._put(key, frame)
        return np.stack([found[k] for k in keys])


def with_frame_cache(source: VideoSource, cache_mb: int) -> VideoSource:
    """`source` behind a FrameCache of `cache_mb` MiB (DATA.FRAME_CACHE_MB), or unchanged for 0."""
    return FrameCache(source, cache_mb << 20) if cache_mb > 0 else source
