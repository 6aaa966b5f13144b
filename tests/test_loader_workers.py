"""Loader workers after the main process decoded (issue 28: PyAV 18.1.1 left forked children waiting forever in
swscale's slice threads), and workers that stop answering: a one-line error naming the video, never a silent wait."""
from __future__ import annotations

import os
import time

import av
import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from datasets import build_dataset, build_loader
from datasets.loader_watch import DecodingStatus, LoaderStalledError
from datasets.video import DECODERS, build_video_source, decoder_available
from runs.config import load_config
from runs.engine_utils import worker_episodes
from utils.seeding import episode_generator


def _cfg(root, *opts, data_root=None):
    return load_config(None, [
        "DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(data_root or root),
        "DATA.TRAIN_CROP_SIZE", "56", "DATA.TEST_CROP_SIZE", "64", "DATA.TRAIN_JITTER_SCALES", "[64, 80]",
        "DATA.TEST_SCALE", "64", "DATA.NUM_WORKERS", "2", "DATA.LOADER_TIMEOUT", "15", "TRAIN.WAY", "5",
        "TRAIN.SHOT", "1", "TRAIN.QUERY_PER_CLASS", "1", *map(str, opts)])


def _first_video(root) -> str:
    return next(str(p) for p in sorted(root.rglob("*.mp4")))


@pytest.mark.parametrize("decoder", DECODERS)
def test_loader_workers_decode_after_the_main_process_decoded(synthetic_root, decoder):
    """Decode in the main process (through PyAV's own shared converter, as any library in the process may, and
    through the decoder under test), then fork 2 loader workers: they deliver the same episodes within the timeout
    (PyAV 18.1.1 with the shared converter: the workers never answered)."""
    if decoder_available(decoder):
        pytest.skip(decoder_available(decoder))
    path = _first_video(synthetic_root)
    with av.open(path) as container:
        shared = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(shared) == 24
    here = build_video_source(False, decoder=decoder).open(path, 0).frames([0, 5, 23])
    assert np.array_equal(here[0], shared[0])
    cfg = _cfg(synthetic_root, "DATA.DECODER", decoder)
    indices = [3, 1, 4, 0]
    expected = build_dataset(_cfg(synthetic_root, "DATA.DECODER", decoder, "DATA.NUM_WORKERS", 0), "train", indices)
    with worker_episodes(build_loader(cfg, "train", indices)) as episodes:
        for k, episode in enumerate(episodes):
            assert episode.episode_index == indices[k]
            assert torch.equal(episode.support_set, expected[k].support_set)
            assert torch.equal(episode.target_set, expected[k].target_set)
    assert k == len(indices) - 1


def _frames_root(synthetic_root, tmp_path) -> tuple:
    """The synthetic benchmark as folders of JPEG frames (the lineage's pre-extracted layout) under tmp_path."""
    for rel in sorted(synthetic_root.rglob("*.mp4")):
        folder = tmp_path / rel.relative_to(synthetic_root).with_suffix("")
        folder.mkdir(parents=True)
        for k in range(8):
            Image.fromarray(np.full((64, 64, 3), 30 * k, np.uint8)).save(folder / f"img_{k + 1:05d}.jpg")
    return synthetic_root, tmp_path


def test_a_worker_stuck_reading_a_video_is_named_and_stopped(synthetic_root, tmp_path):
    """A frame that is a FIFO without a writer blocks its reader forever, as a hung network file system does: the
    loader gives up after DATA.LOADER_TIMEOUT with the video's path, and the stuck worker is gone."""
    anno, frames = _frames_root(synthetic_root, tmp_path)
    cfg = _cfg(anno, "DATA.FRAMES_FOLDER", True, "DATA.LOADER_TIMEOUT", 3, data_root=frames)
    plan = build_dataset(cfg, "train", [0]).sampler(episode_generator(cfg.RANDOM_SEED, "train", 0))
    stuck = plan.support[0].video_path(str(frames), frames_folder=True)
    first = os.path.join(stuck, "img_00001.jpg")
    os.unlink(first)
    os.mkfifo(first)
    loader = build_loader(cfg, "train", [0])
    before = {p.pid for p in psutil.Process().children()}
    started = time.monotonic()
    with pytest.raises(LoaderStalledError) as info:
        with worker_episodes(loader) as episodes:
            workers = [p for p in psutil.Process().children() if p.pid not in before]
            next(episodes)
    assert time.monotonic() - started < 25 and len(workers) == 2
    assert str(info.value).startswith(f"{stuck}: no episode from the loader for 3 s; worker 0 is stuck decoding "
                                      "this video")
    assert "\n" not in str(info.value) and LoaderStalledError.exit_code == 12
    assert not psutil.wait_procs(workers, timeout=10)[1]  # killed, not left blocked in the read


def test_decoding_status_names_what_each_worker_decodes_and_forgets_it_after():
    status = DecodingStatus(2)
    loader = torch.utils.data.DataLoader(_Reports(status), batch_size=None, num_workers=2)
    assert list(loader) == ["video-0" + "x" * 1100, "video-1" + "x" * 1100]
    assert status.busy() == []  # cleared after each video
    status.buffer[:8] = b"abc\0\0\0\0\0"
    assert status.busy() == [(0, "abc")]


class _Reports(torch.utils.data.Dataset):
    """Each worker sets its slot and returns what the main process reads there (long paths keep their end)."""

    def __init__(self, status: DecodingStatus):
        self.status = status

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        text = f"video-{i}" + "x" * 1100
        self.status.set(text)
        seen = self.status.busy()
        self.status.clear()
        assert (torch.utils.data.get_worker_info().id, text[-(DecodingStatus.SLOT - 1):]) in seen
        return text
