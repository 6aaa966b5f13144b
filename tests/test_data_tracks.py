"""Track files: validation errors name the file, ranking, interpolation, masks, and boxes in episodes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets.few_shot import FewShotDataset
from datasets.sampling import EpisodeSampler
from datasets.splits import load_split
from datasets.synthetic import ACTOR_COLOURS
from datasets.tracks import TrackFileError, TrackReader, boxes_at_frames, load_track_file, rank_tracks, track_path
from datasets.transforms import ViewSampler
from datasets.video import PyAVSource


def _track(tid, frames, boxes, scores=None, label="person"):
    return {"id": tid, "label": label, "frames": frames, "boxes": boxes, "scores": scores or [0.9] * len(frames)}


def _file(tracks, video="v1", num_frames=10, width=100, height=50):
    return {"video": video, "num_frames": num_frames, "width": width, "height": height, "tracks": tracks,
            "detector": "test", "tracker": "test"}


def _write(tmp_path, data, name="v1.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_valid_file_loads(tmp_path):
    path = _write(tmp_path, _file([_track(3, [0, 4], [[0, 0, 10, 10], [10, 0, 20, 10]])]))
    track_file = load_track_file(path, "v1")
    assert (track_file.num_frames, track_file.width, track_file.height) == (10, 100, 50)
    assert track_file.tracks[0].id == 3 and track_file.tracks[0].boxes.shape == (2, 4)


@pytest.mark.parametrize("data, message", [
    ("{not json", "invalid JSON"),
    (_file([], video="other"), "'video' is 'other', expected 'v1'"),
    (_file([], num_frames=0), "'num_frames' must be a positive integer"),
    (_file([_track(1, [0, 1], [[0, 0, 1, 1]])]), r"tracks\[0\]: frames/boxes/scores lengths differ"),
    (_file([_track(1, [0, 12], [[0, 0, 1, 1]] * 2)]), r"tracks\[0\]: 'frames' must increase strictly within 0..9"),
    (_file([_track(1, [3, 2], [[0, 0, 1, 1]] * 2)]), "'frames' must increase strictly"),
    (_file([_track(1, [0], [[5, 0, 1, 1]])]), r"tracks\[0\]: boxes\[0\] \[5, 0, 1, 1\] is inverted"),
    ('{"video": "v1", "num_frames": 10, "width": 100, "height": 50, "tracks": [{"id": 1, "frames": [0], '
     '"boxes": [[NaN, 0, 1, 1]], "scores": [0.9]}]}', r"NaN in the file \(boxes and scores must be finite"),
    (_file([_track(1, [0, 1], [[0, 0, 1, 1], [120, 0, 130, 10]])]), r"boxes\[1\] .* lies outside the 100x50 frame"),
    (_file([_track(1, [0], [[0, -20, 10, -5]])]), r"boxes\[0\] .* lies outside the 100x50 frame"),
    (_file([_track(1, [0], [[0, 0, 1]])]), r"each box must be \[x1, y1, x2, y2\]"),
    (_file([_track(1, [0], [[0, 0, 1, 1]]), _track(1, [1], [[0, 0, 1, 1]])]), "track ids are not unique"),
    (_file("nope"), "'tracks' must be a list"),
])
def test_malformed_or_mismatched_files_give_one_line_errors_naming_the_file(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(TrackFileError, match=message) as info:
        load_track_file(path, "v1")
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


def test_tracks_rank_by_length_times_area_times_score(tmp_path):
    long_small = _track(0, list(range(10)), [[0, 0, 10, 10]] * 10)  # 10 x 100 x 0.9
    short_big = _track(1, [0, 1], [[0, 0, 40, 40]] * 2)  # 2 x 1600 x 0.9
    mid_unsure = _track(2, list(range(10)), [[0, 0, 20, 20]] * 10, scores=[0.1] * 10)  # 10 x 400 x 0.1
    track_file = load_track_file(_write(tmp_path, _file([long_small, short_big, mid_unsure])))
    assert [t.id for t in rank_tracks(track_file, 3)] == [1, 0, 2]
    assert [t.id for t in rank_tracks(track_file, 2)] == [1, 0]


def test_boxes_interpolate_between_detections_and_mask_outside_the_span(tmp_path):
    a = _track(7, [2, 6], [[0, 0, 20, 10], [40, 20, 60, 30]])
    b = _track(9, [0, 9], [[50, 0, 60, 50], [50, 0, 60, 50]], scores=[0.1, 0.1])
    track_file = load_track_file(_write(tmp_path, _file([b, a])))
    boxes, mask = boxes_at_frames(track_file, [0, 2, 4, 6, 8], k=3)
    assert boxes.shape == (5, 3, 4) and mask.shape == (5, 3)
    # Slot 0 is track 7 (larger), slot 1 track 9, slot 2 empty; identity fixed across frames.
    assert mask[:, 0].tolist() == [False, True, True, True, False]
    assert mask[:, 1].all() and not mask[:, 2].any()
    assert torch.allclose(boxes[2, 0], torch.tensor([20 / 100, 10 / 50, 40 / 100, 20 / 50]))  # halfway, frame 4
    assert torch.allclose(boxes[1, 0], torch.tensor([0.0, 0.0, 0.2, 0.2]))
    assert boxes[0, 0].abs().sum() == 0 and boxes[:, 2].abs().sum() == 0
    none_boxes, none_mask = boxes_at_frames(None, [0, 1], k=4)
    assert none_boxes.shape == (2, 4, 4) and not none_mask.any()


def _test_dataset(root, track_dir, split="test", flip=False, crop_size=64, **kwargs) -> FewShotDataset:
    """A dataset handed its strategies by hand (as from_config does): 3-way 1-shot 1-query, 8 frames."""
    loaded = load_split(str(root), split)
    train = split == "train"
    args = dict(split=loaded, episode_indices=range(4),
                sampler=EpisodeSampler(loaded.videos_by_class(), loaded.class_names, 3, 1, 1),
                views=ViewSampler(train, (64, 80), 64, crop_size, flip), source=PyAVSource(),
                tracks=TrackReader(str(track_dir), 4) if track_dir else None, data_root=str(root), num_frames=8)
    args.update(kwargs)
    return FewShotDataset(**args)


def test_episode_boxes_match_the_track_files(synthetic_root):
    dataset = _test_dataset(synthetic_root, synthetic_root / "tracks")
    episode = dataset[0]
    assert episode.support_boxes.shape == (3, 8, 4, 4) and episode.target_box_mask.shape == (3, 8, 4)
    assert episode.missing_tracks == []
    for k, video_id in enumerate(episode.support_ids):
        track_file = load_track_file(track_path(str(synthetic_root / "tracks"), video_id), video_id)
        centres = [int((i + 0.5) * track_file.num_frames / 8) for i in range(8)]
        expected, mask = boxes_at_frames(track_file, centres, 4)  # test view on 64-px videos: identity geometry
        assert torch.equal(episode.support_box_mask[k], mask)
        assert torch.allclose(episode.support_boxes[k], expected, atol=1e-6)
        assert mask.all()  # every synthetic entity is tracked in every frame


def test_episode_boxes_mark_the_actor_pixels(synthetic_root):
    """Train view with flip on (generic entry): the actor's colour fills its transformed box."""
    dataset = _test_dataset(synthetic_root, synthetic_root / "tracks", split="train",
                            flip=True, crop_size=56, mean=(0, 0, 0), std=(1, 1, 1))
    meta = json.loads((synthetic_root / "meta.json").read_text())
    actors = {c["name"]: c["actor"] for c in meta["catalogue"]}
    checked = 0
    for i in range(2):
        episode = dataset[i]
        for k, video_id in enumerate(episode.support_ids):
            actor = actors[episode.class_names[k]]
            track_file = load_track_file(track_path(str(synthetic_root / "tracks"), video_id))
            slot = [t.label for t in rank_tracks(track_file, 4)].index(actor)
            colour = torch.tensor(ACTOR_COLOURS[actor.split()[0]], dtype=torch.float32) / 255
            for t in range(8):
                if not episode.support_box_mask[k, t, slot]:
                    continue
                x1, y1, x2, y2 = (episode.support_boxes[k, t, slot] * 56).tolist()
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                pixel = episode.support_set[k, t, :, cy, cx].float() / 255  # uint8 pixels: an exact crop
                assert (pixel - colour).abs().max() < 0.25, (video_id, t)
                checked += 1
    assert checked > 20


def test_missing_track_files_mask_everything_and_are_counted(synthetic_root, tmp_path):
    episode = _test_dataset(synthetic_root, tmp_path)[1]
    assert not episode.support_box_mask.any() and not episode.target_box_mask.any()
    assert episode.support_boxes.abs().sum() == 0
    assert sorted(episode.missing_tracks) == sorted(episode.support_ids + episode.target_ids)


def test_track_file_that_does_not_match_its_video_is_an_error(synthetic_root, tmp_path):
    dataset = _test_dataset(synthetic_root, tmp_path)
    episode_ids = dataset[0].support_ids + dataset[0].target_ids
    bad = tmp_path / (episode_ids[0] + ".json")
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(json.dumps(_file([_track(0, [0], [[0, 0, 5, 5]])], video=episode_ids[0], num_frames=99,
                                    width=64, height=64)))
    with pytest.raises(TrackFileError, match="num_frames 99 does not match the video's 24"):
        _test_dataset(synthetic_root, tmp_path)[0]


def test_no_track_dir_means_no_boxes(synthetic_root):
    episode = _test_dataset(synthetic_root, "")[0]
    assert episode.support_boxes is None and episode.target_boxes is None and not episode.missing_tracks
    assert np.isfinite(episode.support_set.numpy()).all()


def test_boxes_past_the_border_are_clamped_and_counted(tmp_path):
    path = _write(tmp_path, _file([_track(1, [0, 1, 2], [[-3, 0, 10, 10], [0, 0, 104, 52], [5, 5, 9, 9]])]))
    track_file = load_track_file(path, "v1")
    np.testing.assert_array_equal(track_file.tracks[0].boxes, [[0, 0, 10, 10], [0, 0, 100, 50], [5, 5, 9, 9]])
    assert track_file.clamped_boxes == 2


@pytest.mark.parametrize("content, message", [
    (json.dumps(_file([])).encode("utf-16"), "track file is UTF-16-encoded"),
    (b"\x00\x01binary", "track file is binary, not text"),
])
def test_non_utf8_track_files_are_named(tmp_path, content, message):
    path = tmp_path / "v1.json"
    path.write_bytes(content)
    with pytest.raises(TrackFileError, match=rf"^{path}: {message}"):
        load_track_file(str(path), "v1")
