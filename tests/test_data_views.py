"""The lineage's views as config keys: squash resize, K-100 clip frames, query-only augmentation, random test frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import build_dataset
from datasets.sampling import FrameSampler, clip_indices, segment_indices
from datasets.synthetic_render import write_mp4
from datasets.transforms import (
    ColourJitter,
    QueryAugment,
    ViewParams,
    adjust_hue,
    frames_to_tensor,
    sample_view,
    transform_boxes,
)
from datasets.video import DECODERS, decoder_available
from runs.config import load_config

LEFT, BRIGHT = 20, 230  # frame k of the clip benchmark: grey 20 + 3k on the left, bright right quarter


def _level(k: int) -> int:
    return LEFT + 3 * k


# ---------------------------------------------------------------------------------------------
# squash view


def test_squash_resizes_both_sides_to_the_scale_then_crops():
    ramp = np.tile((10 * np.arange(8)).astype(np.uint8)[None, :, None], (4, 1, 3))  # 8 wide, 4 high: 10 * x
    view = ViewParams(short_side=0, crop_size=2, x_frac=0.5, y_frac=0.5, flip=False, squash=4)
    out = frames_to_tensor(ramp[None], view, mean=(0, 0, 0), std=(1, 1, 1)) * 255  # [1, 3, 2, 2]
    # 8 -> 4 columns: source x = 2 d + 0.5, the mean of columns 2d and 2d + 1 -> 5, 25, 45, 65; crop x 1..2, y 1..2.
    assert torch.allclose(out[0, 0], torch.tensor([[25.0, 45.0], [25.0, 45.0]]), atol=1e-4)
    flipped = frames_to_tensor(ramp[None], ViewParams(0, 2, 0.5, 0.5, True, 4), (0, 0, 0), (1, 1, 1)) * 255
    assert torch.allclose(flipped[0, 0], torch.tensor([[45.0, 25.0], [45.0, 25.0]]), atol=1e-4)


def test_squash_matches_torch_bilinear_interpolation_as_the_lineage_used():
    frames = np.random.default_rng(0).integers(0, 256, (3, 30, 50, 3), dtype=np.uint8)
    view = ViewParams(0, 16, 1.0, 0.25, False, 20)  # crop x0 = 4, y0 = 1 inside 20 x 20
    ours = frames_to_tensor(frames, view, (0, 0, 0), (1, 1, 1)) * 255
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(video, size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.allclose(ours, ref[:, :, 1:17, 4:20], atol=1e-2)


def test_sample_view_squash_keeps_the_original_resolution_for_the_reader():
    test = sample_view(torch.Generator().manual_seed(0), False, (256, 256), 256, 224, flip=False, resize_mode="squash")
    assert test == ViewParams(0, 224, 0.5, 0.5, False, 256)
    train = sample_view(torch.Generator().manual_seed(0), True, (256, 256), 256, 224, True, "squash")
    same_draws = sample_view(torch.Generator().manual_seed(0), True, (256, 256), 256, 224, True, "short_side")
    assert (train.short_side, train.squash, same_draws.short_side, same_draws.squash) == (0, 256, 256, 0)
    assert (train.x_frac, train.y_frac, train.flip) == (same_draws.x_frac, same_draws.y_frac, same_draws.flip)
    with pytest.raises(ValueError, match="DATA.RESIZE_MODE"):
        sample_view(torch.Generator(), True, (256, 256), 256, 224, True, "stretch")


def test_boxes_follow_the_squash():
    # Original 96 x 48; a box on the right quarter. Squash to 64 x 64, crop 64: the box is x 48..64 of the crop.
    boxes = torch.tensor([[[0.75, 0.0, 1.0, 1.0]]])
    out, mask = transform_boxes(boxes, torch.tensor([[True]]), (96, 48), ViewParams(0, 64, 0.5, 0.5, False, 64))
    assert mask.tolist() == [[True]] and torch.allclose(out, torch.tensor([[[0.75, 0.0, 1.0, 1.0]]]))
    # The short-side view of the same frame (128 x 64, centre crop x 32..96) loses the box entirely.
    _, short_mask = transform_boxes(boxes, torch.tensor([[True]]), (128, 64), ViewParams(64, 64, 0.5, 0.5, False))
    assert short_mask.tolist() == [[False]]
    # Crop 32 at (32, 8) of the 64 x 64 square, flipped: x 48..64 -> 0.5..1 -> flipped 0..0.5; y -0.25..1.75 -> 0..1.
    out, mask = transform_boxes(boxes, torch.tensor([[True]]), (96, 48), ViewParams(0, 32, 1.0, 0.25, True, 64))
    assert mask.tolist() == [[True]] and torch.allclose(out, torch.tensor([[[0.0, 0.0, 0.5, 1.0]]]))
    # At (16, 8) the box starts where the crop ends: nothing left, masked.
    _, mask = transform_boxes(boxes, torch.tensor([[True]]), (96, 48), ViewParams(0, 32, 0.5, 0.25, True, 64))
    assert mask.tolist() == [[False]]


# ---------------------------------------------------------------------------------------------
# K-100 clip sampling


@pytest.mark.parametrize("num_frames, expected", [
    (300, [10, 45, 80, 115, 150, 185, 220, 255]),  # window 280 fits: start 21 / 2 = 10.5, every 35 frames
    (250, [1, 31, 62, 92, 123, 153, 184, 214]),  # window cut to 248: start 1.5, end 1.5 + 248 - 35 = 214.5
    (50, [1, 3, 5, 7, 8, 10, 12, 14]),  # window 48: start 1.5, end 14.5 (the lineage ignores most of the video)
    # window 24: the lineage's end 0.5 + 24 - 35 < start would run backwards onto frame 0; we spread 0.5..23.5.
    (24, [0, 3, 7, 10, 13, 16, 20, 23]),
    (5, [3] * 8),  # window 5 // 8 * 8 = 0: free 6, start 3, nothing to spread over (the lineage: 3, 0, 0, ...)
])
def test_clip_sampling_test_indices_match_hand_computed_values(num_frames, expected):
    assert clip_indices(num_frames, 8, 35, train=False, generator=None) == expected


def test_clip_sampling_train_start_is_uniform_in_the_free_frames():
    starts = set()
    for seed in range(60):
        picks = clip_indices(300, 8, 35, train=True, generator=torch.Generator().manual_seed(seed))
        start = picks[0]
        assert 0 <= start <= 21 and all(b - a in (34, 35, 36) for a, b in zip(picks, picks[1:], strict=False))
        starts.add(start)
    assert len(starts) > 10
    again = clip_indices(300, 8, 35, True, torch.Generator().manual_seed(5))
    assert again == clip_indices(300, 8, 35, True, torch.Generator().manual_seed(5))


def test_frame_sampler_selects_the_policy():
    assert FrameSampler("clip", 35)(300, 8, False, None) == clip_indices(300, 8, 35, False, None)
    assert FrameSampler()(16, 8, False, None) == [1, 3, 5, 7, 9, 11, 13, 15]
    with pytest.raises(ValueError, match="DATA.FRAME_SAMPLING"):
        FrameSampler("interval")


def test_random_test_frames_are_random_within_segments_and_reproducible():
    sampler = FrameSampler(random_test=True)
    draws = [sampler(80, 8, False, torch.Generator().manual_seed(s)) for s in range(20)]
    for picks in draws:
        assert all(10 * k <= p < 10 * (k + 1) for k, p in enumerate(picks))
    assert len({tuple(d) for d in draws}) > 1
    assert draws[3] == segment_indices(80, 8, True, torch.Generator().manual_seed(3))


# ---------------------------------------------------------------------------------------------
# datasets on real videos


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    """One class of two 96 x 48 videos of 60 frames whose left part carries the frame number."""
    root = tmp_path_factory.mktemp("clip_bench")
    (root / "videos").mkdir()
    lines = []
    for v in range(2):
        frames = np.empty((60, 48, 96, 3), dtype=np.uint8)
        for k in range(60):
            frames[k] = _level(k)
            frames[k, :, 72:] = BRIGHT
        write_mp4(str(root / "videos" / f"v{v}.mp4"), frames)
        lines.append(f"{{split}}0//videos/v{v}.mp4")
    for split in ("train", "val", "test"):
        (root / f"{split}_few_shot.txt").write_text("\n".join(line.format(split=split) for line in lines) + "\n")
        (root / f"{split}_class_names.txt").write_text("counting frames\n")
    return root


def _clip_cfg(root, *opts):
    return load_config(None, [
        "DATA.DATASET", "Kinetics100_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root),
        "DATA.TRAIN_JITTER_SCALES", "[64, 64]", "DATA.TEST_SCALE", "64", "DATA.TRAIN_CROP_SIZE", "64",
        "DATA.TEST_CROP_SIZE", "64", "DATA.MEAN", "[0, 0, 0]", "DATA.STD", "[1, 1, 1]", "DATA.NUM_WORKERS", "0",
        "TRAIN.WAY", "1", "TRAIN.SHOT", "1", "TRAIN.QUERY_PER_CLASS", "1", *map(str, opts)])


def _frame_numbers(video: torch.Tensor) -> list[int]:
    """[T, 3, H, W] in 0..1 -> the frame number each frame carries on its left."""
    grey = video[:, :, :, :20].mean(dim=(1, 2, 3)) * 255
    return [round((g - LEFT) / 3) for g in grey.tolist()]


def test_dataset_clip_sampling_reads_the_hand_computed_frames(clip_root):
    episode = build_dataset(_clip_cfg(clip_root, "DATA.FRAME_SAMPLING", "clip"), "test", [0])[0]
    # 60 frames: window 56, free 5, start 2.5, end 2.5 + 56 - 35 = 23.5 -> every 3 frames from 2.
    for video in (episode.support_set[0], episode.target_set[0]):
        assert _frame_numbers(video) == [2, 5, 8, 11, 14, 17, 20, 23]
    centres = build_dataset(_clip_cfg(clip_root), "test", [0])[0]  # segment default: centres of 7.5-frame segments
    assert _frame_numbers(centres.support_set[0]) == [3, 11, 18, 26, 33, 41, 48, 56]


def test_dataset_squash_view_shows_the_whole_width(clip_root):
    squash = build_dataset(_clip_cfg(clip_root), "test", [0])[0].support_set[0]  # [T, 3, 64, 64]
    assert squash[:, :, :, 50:].mean().item() * 255 == pytest.approx(BRIGHT, abs=3)  # right quarter -> x 48..64
    short = build_dataset(_clip_cfg(clip_root, "DATA.RESIZE_MODE", "short_side"), "test", [0])[0].support_set[0]
    assert short.dtype == torch.uint8  # short side: the reader resized, the crop is exact, pixels travel as bytes
    assert short[:, :, :, 50:].float().mean().item() < BRIGHT - 50  # centre crop of 128 x 64: the quarter is cut off


def test_random_test_frames_are_selectable_and_reproducible(clip_root):
    cfg = _clip_cfg(clip_root, "DATA.TEST_FRAMES", "random")
    draws = [_frame_numbers(build_dataset(cfg, "test", [i])[0].support_set[0]) for i in range(6)]
    assert any(d != [3, 11, 18, 26, 33, 41, 48, 56] for d in draws)
    for picks in draws:  # one frame in each 7.5-frame segment
        assert all(7.5 * k - 0.5 <= p < 7.5 * (k + 1) + 0.5 for k, p in enumerate(picks))
    assert _frame_numbers(build_dataset(cfg, "test", [2])[0].support_set[0]) == draws[2]
    centred = _clip_cfg(clip_root, "DATA.TEST_FRAMES", "random", "DATA.DETERMINISTIC_TRAIN", True)
    train = [_frame_numbers(build_dataset(centred, "train", [i])[0].support_set[0]) for i in range(3)]
    assert all(t == [3, 11, 18, 26, 33, 41, 48, 56] for t in train)  # never reaches fixed training views


# ---------------------------------------------------------------------------------------------
# K-100 clip window at the video's frame rate (CLIP-FSAR: window = 8 * SAMPLING_RATE * fps / TARGET_FPS)

FPS_CLIPS = {12: 600, 25: 600, 30: 300}  # frame rate -> frames (Kinetics files run 25-30 fps)


def _fps_frame(k: int) -> np.ndarray:
    """Frame k of 64 x 48: grey 20 + 3 (k mod 64) on the left half, 20 + 25 (k div 64) on the right half."""
    frame = np.empty((48, 64, 3), dtype=np.uint8)
    frame[:, :32], frame[:, 32:] = LEFT + 3 * (k % 64), LEFT + 25 * (k // 64)
    return frame


def _fps_numbers(video: torch.Tensor) -> list[int]:
    """[T, 3, 64, 64] in 0..1 (the squash view of a 64 x 48 frame) -> the frame number each frame carries."""
    low = video[:, :, :, 4:28].mean(dim=(1, 2, 3)) * 255
    high = video[:, :, :, 36:60].mean(dim=(1, 2, 3)) * 255
    return [64 * round((h - LEFT) / 25) + round((g - LEFT) / 3) for g, h in zip(low.tolist(), high.tolist(),
                                                                              strict=True)]


@pytest.fixture(scope="module")
def fps_root(tmp_path_factory):
    """Kinetics' layout (train_256/<class>/<id>_<start>_<end>.mp4, H.264) with one clip per frame rate."""
    root = tmp_path_factory.mktemp("fps_bench")
    folder = root / "train_256" / "counting_frames"
    folder.mkdir(parents=True)
    for fps, count in FPS_CLIPS.items():
        write_mp4(str(folder / f"fps{fps}_000000_000010.mp4"), np.stack([_fps_frame(k) for k in range(count)]), fps)
    return root


def _lineage_clip(num_frames: int, fps: float, u: float | None) -> list[int]:
    """CLIP-FSAR's `_interval_based_sampling` (datasets/base/base_dataset.py, SAMPLING_RATE 35, TARGET_FPS 12,
    8 frames), `u` the draw of its random.uniform(0, max_idx) (None: the middle start of a test clip)."""
    clip_length = 8 * 35 * fps / 12
    if clip_length > num_frames:
        clip_length = num_frames // 8 * 8
    max_idx = max(num_frames - clip_length + 1, 0)
    start_idx = max_idx / 2 if u is None else 0 + (max_idx - 0) * u
    end_idx = start_idx + clip_length - 35
    return torch.clamp(torch.linspace(start_idx, end_idx, 8), 0, num_frames - 1).long().tolist()


# By hand: 12 fps, 600 frames: window 280, max_idx 321, start 160.5, every 35 frames. 25 fps, 600 frames: window
# 583.33, max_idx 17.67, start 8.83, end 557.17, every 78.33 frames. 30 fps, 300 frames (the clip): window 700
# cut to 296, max_idx 5, start 2.5, end 263.5, every 37.29 frames.
LINEAGE_TEST_FRAMES = {12: [160, 195, 230, 265, 300, 335, 370, 405], 25: [8, 87, 165, 243, 322, 400, 478, 557],
                       30: [2, 39, 77, 114, 151, 188, 226, 263]}


@pytest.mark.parametrize("decoder", [pytest.param(name, marks=pytest.mark.skipif(
    bool(decoder_available(name)), reason=decoder_available(name) or "available")) for name in DECODERS])
@pytest.mark.parametrize("fps", sorted(FPS_CLIPS))
def test_clip_window_scales_with_the_frame_rate_the_reader_reports_as_clip_fsar(fps_root, fps, decoder):
    from datasets.video import build_video_source

    path = str(fps_root / "train_256" / "counting_frames" / f"fps{fps}_000000_000010.mp4")
    video = build_video_source(False, decoder=decoder).open(path, 0)
    assert (video.num_frames, video.fps) == (FPS_CLIPS[fps], fps)
    sampler = FrameSampler("clip", 35, target_fps=12)
    assert sampler(video.num_frames, 8, False, None, video.fps) == LINEAGE_TEST_FRAMES[fps]
    assert _lineage_clip(video.num_frames, fps, None) == LINEAGE_TEST_FRAMES[fps]
    for seed in range(5):  # training: the start is the generator's uniform draw times max_idx
        u = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        drawn = sampler(video.num_frames, 8, True, torch.Generator().manual_seed(seed), video.fps)
        assert drawn == _lineage_clip(video.num_frames, fps, u)
    assert FrameSampler("clip", 35, target_fps=0)(300, 8, False, None, 30.0) == [10, 45, 80, 115, 150, 185, 220, 255]


def test_dataset_reads_the_lineage_frames_of_a_30_fps_kinetics_clip(fps_root):
    lines = "\n".join(f"{{split}}0//train_256/counting_frames/fps{fps}_000000_000010.mp4" for fps in (30, 25)) + "\n"
    for split in ("train", "val", "test"):
        (fps_root / f"{split}_few_shot.txt").write_text(lines.format(split=split))
        (fps_root / f"{split}_class_names.txt").write_text("counting frames\n")
    episode = build_dataset(_clip_cfg(fps_root, "DATA.FRAME_SAMPLING", "clip"), "test", [0])[0]
    for video, video_id in ((episode.support_set[0], episode.support_ids[0]), (episode.target_set[0],
                                                                             episode.target_ids[0])):
        fps = int(video_id.split("/")[-1][3:5])
        assert _fps_numbers(video) == LINEAGE_TEST_FRAMES[fps]


def test_frames_folders_use_the_recorded_frame_rate_or_the_target_rate(tmp_path, caplog):
    from PIL import Image

    from datasets.prepared import write_frames_fps
    from datasets.video import BadVideoError, FramesFolderSource

    for name in ("recorded", "unrecorded"):
        (tmp_path / name).mkdir()
        for k in range(1, 301):
            Image.fromarray(_fps_frame(k - 1)).save(tmp_path / name / f"img_{k:05d}.jpg")
    write_frames_fps(str(tmp_path / "recorded"), 30.0)
    source = FramesFolderSource()
    assert source.open(str(tmp_path / "recorded"), 0).fps == 30.0
    assert source.open(str(tmp_path / "unrecorded"), 0).fps is None
    lines = "".join(f"{{split}}0//{name}.mp4\n" for name in ("recorded", "unrecorded"))
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}_few_shot.txt").write_text(lines.format(split=split))
        (tmp_path / f"{split}_class_names.txt").write_text("counting frames\n")
    cfg = _clip_cfg(tmp_path, "DATA.FRAME_SAMPLING", "clip", "DATA.FRAMES_FOLDER", True)
    with caplog.at_level("WARNING"):
        episode = build_dataset(cfg, "test", [0])[0]
    numbers = {i: _fps_numbers(v) for i, v in zip(episode.support_ids + episode.target_ids,
                                                   [episode.support_set[0], episode.target_set[0]], strict=True)}
    assert numbers == {"recorded": LINEAGE_TEST_FRAMES[30], "unrecorded": [10, 45, 80, 115, 150, 185, 220, 255]}
    assert "records no frame rate" in caplog.text and "DATA.TARGET_FPS 12" in caplog.text
    (tmp_path / "recorded" / "video.json").write_text("{\"rate\": 30}\n")
    with pytest.raises(BadVideoError, match="video.json: not a frames record"):
        source.open(str(tmp_path / "recorded"), 0)


# ---------------------------------------------------------------------------------------------
# query-only augmentation


def test_query_augment_draws_in_range_and_is_a_function_of_the_generator():
    aug = QueryAugment()
    base = ViewParams(0, 224, 0.3, 0.6, False, 256)
    views = [aug(base, torch.Generator().manual_seed(s)) for s in range(200)]
    assert views[7] == aug(base, torch.Generator().manual_seed(7))
    for v in views:
        j = v.jitter
        assert 0.5 <= j.brightness <= 1.5 and 0.5 <= j.contrast <= 1.5 and 0.5 <= j.saturation <= 1.5
        assert -0.25 <= j.hue <= 0.25 and sorted(j.order) == [0, 1, 2, 3]
        assert (v.x_frac, v.y_frac, v.squash) == (0.3, 0.6, 256)
    flips, greys = sum(v.flip for v in views), sum(v.jitter.grayscale for v in views)
    assert 70 < flips < 130 and 35 < greys < 85  # p 0.5 and 0.3
    assert not any(QueryAugment(flip=False)(base, torch.Generator().manual_seed(s)).flip for s in range(50))


def test_colour_jitter_identity_and_grey():
    video = torch.rand(2, 3, 8, 8)
    same = ColourJitter(1.0, 1.0, 1.0, 0.0, (0, 1, 2, 3), False)(video)
    assert torch.allclose(same, video, atol=1e-5)
    grey = ColourJitter(1.0, 1.0, 1.0, 0.0, (3, 2, 1, 0), True)(video)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    dark = ColourJitter(0.5, 1.0, 1.0, 0.0, (0, 1, 2, 3), False)(video)
    assert torch.allclose(dark, video * 0.5, atol=1e-6)


def test_hue_rotation_matches_torchvision():
    import torchvision.transforms.functional as TF

    video = torch.rand(2, 3, 16, 16)
    video[0, :, :4] = 0.5  # grey: no hue
    video[1, :, :4] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red
    for shift in (-0.25, -0.1, 0.0, 0.07, 0.25):
        assert torch.allclose(adjust_hue(video, shift), TF.adjust_hue(video, shift), atol=1e-5)
    assert not torch.allclose(adjust_hue(video, 0.1), video, atol=1e-2)


def _kinetics_cfg(root, *opts):
    return load_config(None, [
        "DATA.DATASET", "Kinetics100_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root),
        "DATA.TRAIN_CROP_SIZE", "56", "DATA.TEST_CROP_SIZE", "64", "DATA.TRAIN_JITTER_SCALES", "[64, 80]",
        "DATA.TEST_SCALE", "64", "DATA.NUM_WORKERS", "0", "DATA.FLIP", "False", "TRAIN.QUERY_PER_CLASS", "2",
        *map(str, opts)])


def test_query_augmentation_touches_training_queries_only_and_is_deterministic(synthetic_root):
    plain = build_dataset(_kinetics_cfg(synthetic_root), "train", [3])[0]
    aug_cfg = _kinetics_cfg(synthetic_root, "AUGMENTATION.SUPPORT_QUERY_DIFF", True)
    augmented = build_dataset(aug_cfg, "train", [3])[0]
    assert augmented.support_ids == plain.support_ids and augmented.target_ids == plain.target_ids
    assert torch.equal(augmented.support_set, plain.support_set)  # supports untouched
    changed = [not torch.equal(a, b) for a, b in zip(augmented.target_set, plain.target_set, strict=True)]
    assert all(changed)  # every query gets its own colour jitter
    again = build_dataset(aug_cfg, "train", [0, 3])[1]  # fresh dataset, other position: the same episode
    assert torch.equal(again.target_set, augmented.target_set)
    other = build_dataset(aug_cfg, "train", [4])[0]
    assert not torch.equal(other.target_set, augmented.target_set)
    test_plain = build_dataset(_kinetics_cfg(synthetic_root), "test", [1])[0]
    test_aug = build_dataset(aug_cfg, "test", [1])[0]  # val/test episodes never augmented
    assert torch.equal(test_plain.target_set, test_aug.target_set)


def test_query_augmentation_is_the_same_in_loader_workers(synthetic_root):
    from datasets import build_loader

    cfg = _kinetics_cfg(synthetic_root, "AUGMENTATION.SUPPORT_QUERY_DIFF", True, "DATA.NUM_WORKERS", 1)
    from_worker = next(iter(build_loader(cfg, "train", [6])))
    in_process = build_dataset(cfg, "train", [6])[0]
    assert torch.equal(from_worker.target_set, in_process.target_set)
