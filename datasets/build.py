"""Dataset registry, data config keys, and the engine's entry points `build_dataset` / `build_loader`."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.loader_watch import DecodingStatus
from utils.config import (
    NON_NEGATIVE,
    PATH,
    POSITIVE,
    PROBABILITY,
    CfgNode,
    Rule,
    both,
    each,
    length,
    one_of,
    rules,
    section,
)
from utils.registry import Registry
from utils.seeding import episode_seed

DATASET_REGISTRY = Registry("DATASET")
DATASET_REGISTRY.__doc__ = "Episodic datasets by name (DATA.DATASET); thin entries over one generic class."

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def add_data_config(cfg: CfgNode) -> None:
    _D = section(cfg, "DATA")
    _D.DATASET = "Ssv2_few_shot"  # registered dataset entry (DATASET_REGISTRY), e.g. Synthetic_few_shot
    _D.DATA_ROOT_DIR = ""  # videos: <root>/<video id><VIDEO_EXT> ('/' lines) or <root>/<relative path> ('//')
    _D.ANNO_DIR = ""  # folder of {train,val,test}_few_shot.txt and {train,val,test}_class_names.txt
    _D.VIDEO_EXT = ".mp4"  # extension for '<split><id>/<video id>' lines (SSv2 downloads are often .webm)
    _D.FRAMES_FOLDER = False  # videos are folders of img_%05d.jpg frames (path without extension)
    _D.NUM_INPUT_FRAMES = 8  # frames per video (where they come from: FRAME_SAMPLING, TEST_FRAMES)
    # Frame positions. segment: one frame per equal segment of the video (CLIP-FSAR's path for SAMPLING_RATE > 40,
    # its SSv2/UCF/HMDB configs). clip: CLIP-FSAR's window for SAMPLING_RATE <= 40 (its K-100 configs): 8 frames
    # evenly from start to start + window - SAMPLING_RATE, window = NUM_INPUT_FRAMES x SAMPLING_RATE frames cut to the
    # video (datasets/sampling.py clip_indices), start random in train and in the middle in val/test.
    _D.FRAME_SAMPLING = "segment"
    _D.SAMPLING_RATE = 35  # clip: frames between samples at TARGET_FPS (CLIP-FSAR K-100: 35)
    # clip: the frame rate SAMPLING_RATE counts at; the window is NUM_INPUT_FRAMES x SAMPLING_RATE x the video's
    # average fps / TARGET_FPS frames (CLIP-FSAR's, TARGET_FPS 12: 700 frames of a 30-fps file). JPEG frame folders
    # use the fps their video.json records (datasets/prepared.py); without one, and with 0 here, the window is
    # NUM_INPUT_FRAMES x SAMPLING_RATE frames of the file (exact for 12-fps files only).
    _D.TARGET_FPS = 12.0
    # val/test frames. centre: each segment's centre, or the clip's middle start (ours: every run sees the same
    # test set). random: drawn like training frames, from the episode's generator (CLIP-FSAR's SSv2/UCF/HMDB test
    # frames; disable TEST.FEATURE_CACHE with it, a cached video would keep one draw).
    _D.TEST_FRAMES = "centre"
    # Spatial view. squash: every frame resized to SCALE x SCALE, aspect ratio ignored, then cropped (CLIP-FSAR's
    # KineticsResizedCropFewshot: 256x256, crop 224); videos decode at their original resolution and are resized
    # here (bilinear, no antialiasing, as the lineage). short_side: the reader resizes the short side to SCALE,
    # aspect kept (ours; sees the whole width of wide videos undistorted).
    _D.RESIZE_MODE = "squash"
    _D.TRAIN_JITTER_SCALES = [256, 320]  # train: SCALE drawn uniformly from [min, max] (short side, or squash side)
    _D.TRAIN_CROP_SIZE = 224  # train: random square crop
    _D.TEST_SCALE = 256  # val/test: SCALE (short side, or squash side) before the centre crop
    _D.TEST_CROP_SIZE = 224  # val/test: centre square crop (must equal the backbone's image size)
    _D.MEAN = list(CLIP_MEAN)  # per-channel normalisation mean (the backbone's; CLIP by default)
    _D.STD = list(CLIP_STD)  # per-channel normalisation std
    _D.FLIP = True  # random horizontal flip in train (the SSv2 and synthetic entries force it off; CLIP-FSAR: off)
    _D.ON_BAD_VIDEO = "error"  # missing/unreadable/empty/too-short video: error, or resample (same class, logged)
    _D.MIN_VIDEO_FRAMES = 1  # fewer decodable frames = "too short"; shorter than NUM_INPUT_FRAMES repeats frames
    _D.TRACK_DIR = ""  # folder of <video id>.json track files; "" = no boxes in the episode
    _D.DETERMINISTIC_TRAIN = False  # train episodes use test-style views (centre frames and crop, no flip/jitter)
    _D.NUM_WORKERS = 2  # DataLoader worker processes (persistent); 0 decodes in the main process
    # Seconds the main process waits for the next episode from its workers before it stops them and names the video
    # a worker is stuck on (datasets/loader_watch.py); 0 waits forever (torch's default, the lineage's).
    _D.LOADER_TIMEOUT = 300.0
    _D.PIN_MEMORY = True  # pin episode tensors when CUDA is available
    # VFAM's entity slots are read here, where the episode boxes are built.
    section(cfg, "VFAM").MAX_ENTITIES = 4  # entity slots per frame (top tracks by length x area x score)
    rules("DATA", DATA_ROOT_DIR=PATH, ANNO_DIR=PATH, TRACK_DIR=PATH,
          TRAIN_JITTER_SCALES=both(length(2), each(POSITIVE)), TRAIN_CROP_SIZE=POSITIVE, TEST_SCALE=POSITIVE,
          TEST_CROP_SIZE=POSITIVE, MEAN=length(3), TARGET_FPS=NON_NEGATIVE,
          STD=both(length(3), each(POSITIVE)), MIN_VIDEO_FRAMES=POSITIVE, NUM_WORKERS=NON_NEGATIVE,
          LOADER_TIMEOUT=NON_NEGATIVE)
    rules("VFAM", MAX_ENTITIES=POSITIVE)
    rules("DATA", NUM_INPUT_FRAMES=POSITIVE, FRAME_SAMPLING=one_of("segment", "clip"), SAMPLING_RATE=POSITIVE,
          TEST_FRAMES=one_of("centre", "random"), RESIZE_MODE=one_of("squash", "short_side"),
          ON_BAD_VIDEO=one_of("error", "resample"))
    # CLIP-FSAR's query-side augmentation (its K-100 configs); parameters are its defaults (configs/pool/base.yaml).
    _A = section(cfg, "AUGMENTATION")
    _A.SUPPORT_QUERY_DIFF = False  # training queries only: flip (p 0.5; not on SSv2/synthetic) + colour jitter below
    _A.BRIGHTNESS = 0.5  # factor uniform in [max(0, 1 - x), 1 + x], one per video (all frames alike)
    _A.CONTRAST = 0.5  # factor uniform in [max(0, 1 - x), 1 + x] (blend with the frame's mean grey)
    _A.SATURATION = 0.5  # factor uniform in [max(0, 1 - x), 1 + x] (blend with the grey image)
    _A.HUE = 0.25  # hue shift uniform in [-x, x] (x <= 0.5); the four adjustments run in a random order
    _A.GRAYSCALE = 0.3  # probability of a grey conversion before them
    rules("AUGMENTATION", BRIGHTNESS=NON_NEGATIVE, CONTRAST=NON_NEGATIVE, SATURATION=NON_NEGATIVE,
          HUE=Rule("in [0, 0.5]", lambda v: 0 <= v <= 0.5), GRAYSCALE=PROBABILITY)
    _T = section(cfg, "TRAIN")
    _T.WAY = 5  # classes per episode
    _T.SHOT = 1  # support videos per class (train episodes)
    _T.QUERY_PER_CLASS = 5  # query videos per class (train episodes)
    _T.SHOT_TEST = 0  # support videos per class in val/test episodes; 0 = same as TRAIN.SHOT
    _T.QUERY_PER_CLASS_TEST = 1  # query videos per class in val/test episodes
    rules("TRAIN", WAY=POSITIVE, SHOT=POSITIVE, QUERY_PER_CLASS=POSITIVE, SHOT_TEST=NON_NEGATIVE,
          QUERY_PER_CLASS_TEST=POSITIVE)


def build_dataset(cfg: CfgNode, split: str, episode_indices: Sequence[int], video_source=None,
                  skip_videos=None) -> Dataset:
    """The DATA.DATASET entry for `split`; item i is episode `episode_indices[i]`.

    `video_source` (a datasets.video.VideoSource) replaces the reader chosen by DATA.FRAMES_FOLDER
    (benchmarks, tests).
    """
    cls = DATASET_REGISTRY.get(cfg.DATA.DATASET, "DATA.DATASET")
    kwargs = cls.from_config(cfg, split, episode_indices)
    if video_source is not None:
        kwargs["source"] = video_source
    return cls(**kwargs, skip_videos=skip_videos)


class _WorkerInit:
    """Seeds a worker's global RNGs from (RANDOM_SEED, split, worker id): episodes never read them,
    but any library randomness inside a worker is then reproducible too."""

    def __init__(self, seed: int, split: str):
        self.seed, self.split = seed, split

    def __call__(self, worker_id: int) -> None:
        seed = episode_seed(self.seed, f"{self.split}/worker", worker_id)
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)
        torch.set_num_threads(1)  # workers already occupy the cores; avoid oversubscription


def build_loader(cfg: CfgNode, split: str, episode_indices: Sequence[int], video_source=None,
                 skip_videos=None) -> DataLoader:
    """One Episode (utils/episode.py) per item, in the order of `episode_indices` (batch_size=None: no collation).

    `skip_videos` (a container of video ids, e.g. models.feature_cache.VideoFeatureCache) is consulted while
    loading, so it forces loading in this process (workers would see a stale copy). Iterate it with
    `datasets.loader_watch.episodes` (the engine's `worker_episodes` does) to have a stalled worker named.
    """
    dataset = build_dataset(cfg, split, episode_indices, video_source, skip_videos)
    workers = cfg.DATA.NUM_WORKERS if len(dataset) > 0 and skip_videos is None else 0
    if workers > 0:
        dataset.decoding = DecodingStatus(workers)
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        timeout=float(cfg.DATA.LOADER_TIMEOUT) if workers > 0 else 0,
        pin_memory=cfg.DATA.PIN_MEMORY and torch.cuda.is_available(),
        worker_init_fn=_WorkerInit(cfg.RANDOM_SEED, split) if workers > 0 else None,
        generator=torch.Generator().manual_seed(episode_seed(cfg.RANDOM_SEED, f"{split}/loader", 0)),
    )
