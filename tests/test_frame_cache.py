"""DATA.FRAME_CACHE_MB: decoded frames kept between episodes are exactly the reader's frames, within the budget."""
from __future__ import annotations

import numpy as np
import pytest
from test_data_episodes import _assert_same_episode, _cfg

from datasets import build_dataset
from datasets.frame_cache import FrameCache, with_frame_cache
from datasets.video import BadVideoError, PyAVSource


class CountingPyAV(PyAVSource):
    """The real PyAV reader, counting how often a video is opened and how many frames it decodes."""

    def __init__(self):
        super().__init__(num_threads=1)
        self.opens = self.decoded = 0

    def open(self, path, short_side):
        self.opens += 1
        video = super().open(path, short_side)
        frames = video.frames

        def counted(indices):
            self.decoded += len(indices)
            return frames(indices)

        video.frames = counted
        return video


@pytest.fixture
def video_path(synthetic_root):
    return str(next((synthetic_root / "videos").rglob("*.mp4")))


def test_cached_frames_equal_the_readers_and_are_decoded_once(video_path):
    reference = PyAVSource(num_threads=1).open(video_path, 0)
    reader = CountingPyAV()
    cache = FrameCache(reader, 64 << 20)
    for indices in ([0, 3, 7], [3, 3, 0], [7, 1, 23], [23, 0, 3, 7, 1]):
        got = cache.open(video_path, 0).frames(indices)
        np.testing.assert_array_equal(got, reference.frames(indices))
    assert reader.opens == 2  # the first sight, then once more for the new frames 1 and 23
    assert reader.decoded == 5  # 0, 3, 7, then 1, 23; repeats come from memory
    video = cache.open(video_path, 0)
    assert (video.num_frames, video.width, video.height, video.size) == (24, 64, 64, (64, 64))


def test_returned_frames_are_copies(video_path):
    cache = FrameCache(PyAVSource(num_threads=1), 64 << 20)
    first = cache.open(video_path, 0).frames([2])
    first[:] = 0  # a consumer writing into its array must not change what the cache hands out next
    again = cache.open(video_path, 0).frames([2])
    np.testing.assert_array_equal(again, PyAVSource(num_threads=1).open(video_path, 0).frames([2]))


def test_budget_evicts_least_recently_used(video_path):
    frame_bytes = 64 * 64 * 3
    reader = CountingPyAV()
    cache = FrameCache(reader, 3 * frame_bytes)
    video = cache.open(video_path, 0)
    video.frames([0, 1, 2])
    video.frames([0])  # 0 is now the most recently used
    video.frames([3])  # evicts 1, the least recently used
    assert cache.bytes == 3 * frame_bytes
    decoded = reader.decoded
    video.frames([0, 2, 3])
    assert reader.decoded == decoded  # all three kept
    video.frames([1])
    assert reader.decoded == decoded + 1  # 1 was evicted and is decoded again


def test_bad_videos_still_fail_on_first_sight(synthetic_root):
    cache = with_frame_cache(PyAVSource(num_threads=1), 16)
    with pytest.raises(BadVideoError, match="missing"):
        cache.open(str(synthetic_root / "videos" / "no_such_video.mp4"), 0)
    video = cache.open(str(next((synthetic_root / "videos").rglob("*.mp4"))), 0)
    with pytest.raises(BadVideoError, match="too short"):
        video.frames([0, 24])  # past the end: the reader's own check still runs


def test_off_by_default_and_episodes_identical_with_the_cache(synthetic_root):
    plain = build_dataset(_cfg(synthetic_root), "train", range(12))
    cached = build_dataset(_cfg(synthetic_root, "DATA.FRAME_CACHE_MB", 64), "train", range(12))
    assert not isinstance(plain.source, FrameCache) and isinstance(cached.source, FrameCache)
    for i in range(12):  # jittered crops and random frames, drawn again per episode: hits and misses alike
        _assert_same_episode(plain[i], cached[i])
    assert cached.source.bytes > 0
