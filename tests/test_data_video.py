"""Video readers (decord resized at decode time, JPEG frame folders), bad videos, frame sampling, transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.sampling import segment_indices
from datasets.synthetic_render import write_mp4
from datasets.transforms import ViewParams, frames_to_tensor, sample_view, transform_boxes
from datasets.video import BadVideoError, DecordSource, FramesFolderSource, resize_frames, resized_size


def _pattern_video(frames: int, width: int, height: int) -> np.ndarray:
    """Left half red, right half blue; frame t has a white bar whose brightness encodes t."""
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    video[:, :, : width // 2] = (255, 0, 0)
    video[:, :, width // 2:] = (0, 0, 255)
    for t in range(frames):
        video[t, : height // 4] = 10 + 20 * t
    return video


@pytest.fixture(scope="module")
def mp4_96x64(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_mp4(str(path), _pattern_video(12, 96, 64))
    return str(path)


def test_decord_resizes_at_decode_time_keeping_aspect(mp4_96x64):
    video = DecordSource().open(mp4_96x64, 48)
    assert (video.num_frames, video.width, video.height, video.size) == (12, 96, 64, (72, 48))
    frames = video.frames([0, 5, 11])
    assert frames.shape == (3, 48, 72, 3) and frames.dtype == np.uint8
    # The content survives: red on the left, blue on the right, the bar brightness follows the frame index.
    assert frames[0, 40, 5, 0] > 200 and frames[0, 40, 5, 2] < 60
    assert frames[0, 40, 66, 2] > 200 and frames[0, 40, 66, 0] < 60
    assert abs(int(frames[2, 3, 36].mean()) - (10 + 20 * 11)) < 12
    full = DecordSource().open(mp4_96x64, 0)
    assert full.size == (96, 64) and full.frames([1]).shape == (1, 64, 96, 3)
    baseline = resize_frames(full.frames([0, 5, 11]), (72, 48)).astype(int)
    assert np.abs(baseline - frames.astype(int)).mean() < 8  # same picture as decoding full size then resizing


def test_frame_widths_decord_cannot_produce_fall_back_to_pyav(tmp_path):
    path = tmp_path / "square.mp4"
    write_mp4(str(path), _pattern_video(4, 64, 64))
    frames = DecordSource().open(str(path), 72).frames([0, 3])  # decord 0.6 fails on 72-px-wide output
    assert frames.shape == (2, 72, 72, 3)
    assert abs(int(frames[1, 3, 36].mean()) - (10 + 20 * 3)) < 12


def test_short_video_repeats_frames_when_read(tmp_path):
    path = tmp_path / "three_frames.mp4"
    video = np.zeros((3, 32, 48, 3), dtype=np.uint8)
    video[1], video[2] = 100, 200
    write_mp4(str(path), video)
    source = DecordSource()
    opened = source.open(str(path), 32)
    frames = opened.frames(segment_indices(opened.num_frames, 8, train=False, generator=None))
    assert frames.shape == (8, 32, 48, 3)
    assert [round(v / 100) for v in frames.mean(axis=(1, 2, 3))] == [0, 0, 0, 1, 1, 2, 2, 2]


def test_frames_folder_reader_has_the_same_interface(tmp_path):
    folder = tmp_path / "video_a"
    folder.mkdir()
    for t, frame in enumerate(_pattern_video(5, 96, 64)):
        Image.fromarray(frame).save(folder / f"img_{t + 1:05d}.jpg", quality=95)
    video = FramesFolderSource().open(str(folder), 32)
    assert (video.num_frames, video.width, video.height, video.size) == (5, 96, 64, (48, 32))
    frames = video.frames([4, 0])
    assert frames.shape == (2, 32, 48, 3)
    assert frames[0, 2, 24].mean() > frames[1, 2, 24].mean() + 40  # frame 5's bar is brighter than frame 1's


@pytest.mark.parametrize("case, reason", [("missing", "missing"), ("garbage", "unreadable"), ("zero", "empty"),
                                          ("short", "too short")])
def test_bad_videos_raise_naming_the_file(tmp_path, mp4_96x64, case, reason):
    path = tmp_path / "bad.mp4"
    if case == "garbage":
        path.write_bytes(b"not a video at all" * 100)
    elif case == "zero":
        path.write_bytes(b"")
    elif case == "short":
        path = mp4_96x64
    source = DecordSource(min_frames=20)
    with pytest.raises(BadVideoError) as info:
        source.open(str(path), 48)
    assert info.value.reason == reason and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_frames_folder_is_bad(tmp_path):
    (tmp_path / "empty_video").mkdir()
    with pytest.raises(BadVideoError, match="empty_video: empty video"):
        FramesFolderSource().open(str(tmp_path / "empty_video"), 32)


def test_frames_folder_with_gaps_is_bad_and_names_the_missing_frames(tmp_path):
    from PIL import Image

    folder = tmp_path / "gappy"
    folder.mkdir()
    for n in (1, 2, 5, 6):
        Image.new("RGB", (40, 30)).save(folder / f"img_{n:05d}.jpg")
    expected = r"gappy: gaps video \(2 missing frame\(s\): img_00003\.jpg, img_00004\.jpg\)"
    with pytest.raises(BadVideoError, match=expected):
        FramesFolderSource().open(str(folder), 32)


def test_segment_sampling_centres_in_test_and_random_within_segments_in_train():
    assert segment_indices(16, 8, train=False, generator=None) == [1, 3, 5, 7, 9, 11, 13, 15]
    for seed in range(20):
        picks = segment_indices(80, 8, train=True, generator=torch.Generator().manual_seed(seed))
        assert all(10 * k <= p < 10 * (k + 1) for k, p in enumerate(picks))
    first = segment_indices(80, 8, True, torch.Generator().manual_seed(3))
    assert first == segment_indices(80, 8, True, torch.Generator().manual_seed(3))
    assert first != segment_indices(80, 8, True, torch.Generator().manual_seed(4))


def test_videos_shorter_than_the_frame_count_repeat_frames():
    for train in (False, True):
        picks = segment_indices(3, 8, train, torch.Generator().manual_seed(0))
        assert len(picks) == 8 and set(picks) == {0, 1, 2} and picks == sorted(picks)


def test_resized_size_keeps_the_aspect_ratio():
    assert resized_size(340, 256, 256) == (340, 256)
    assert resized_size(320, 240, 256) == (341, 256)
    assert resized_size(240, 427, 256) == (256, 455)
    assert resized_size(320, 240, 0) == (320, 240)


def test_views_train_random_test_centre_and_flip_only_when_enabled():
    test_view = sample_view(torch.Generator().manual_seed(0), False, (256, 320), 256, 224, flip=True)
    assert test_view == ViewParams(256, 224, 0.5, 0.5, False)
    views = [sample_view(torch.Generator().manual_seed(s), True, (256, 320), 256, 224, flip=True) for s in range(40)]
    assert all(256 <= v.short_side <= 320 for v in views) and len({v.short_side for v in views}) > 5
    assert 5 < sum(v.flip for v in views) < 35
    no_flip = [sample_view(torch.Generator().manual_seed(s), True, (256, 320), 256, 224, flip=False)
               for s in range(40)]
    assert not any(v.flip for v in no_flip)


@pytest.mark.parametrize("flip", [False, True])
def test_boxes_follow_the_crop_and_flip_of_the_frames(flip):
    """A white square drawn at a known box lands exactly where the transformed box says."""
    frames = np.zeros((1, 60, 100, 3), dtype=np.uint8)
    frames[0, 20:40, 60:80] = 255  # box (60, 20, 80, 40) in pixels
    view = ViewParams(short_side=60, crop_size=50, x_frac=1.0, y_frac=0.2, flip=flip)  # crop x 50..100, y 2..52
    video = frames_to_tensor(frames, view, mean=(0, 0, 0), std=(1, 1, 1))
    assert video.shape == (1, 3, 50, 50)
    boxes = torch.tensor([[[60 / 100, 20 / 60, 80 / 100, 40 / 60], [0.0, 0.0, 0.2, 0.2]]])  # second: left of crop
    out, mask = transform_boxes(boxes, torch.tensor([[True, True]]), (100, 60), view)
    assert mask.tolist() == [[True, False]] and out[0, 1].abs().sum() == 0
    x1, y1, x2, y2 = (out[0, 0] * 50).round().long().tolist()
    white = video[0, 0] > 0.5
    assert white[y1:y2, x1:x2].all() and white.sum() == (x2 - x1) * (y2 - y1)
    assert (x1, x2) == ((20, 40) if flip else (10, 30))


def test_boxes_partly_outside_the_crop_are_clipped():
    view = ViewParams(100, 50, 0.0, 0.0, False)
    boxes = torch.tensor([[[0.4, 0.1, 0.7, 0.3]]])  # x 40..70 on a 100-px frame, crop covers 0..50
    out, mask = transform_boxes(boxes, torch.tensor([[True]]), (100, 100), view)
    assert mask.item() and torch.allclose(out[0, 0], torch.tensor([0.8, 0.2, 1.0, 0.6]))
