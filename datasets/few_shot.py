"""The generic episodic dataset: one item = one few-shot episode (docs/design.md §4), decoded on demand.

Item `i` is episode `episode_indices[i]`; everything about it (classes, videos, frames, crop, flip, query colour,
replacements of bad videos) comes from `episode_generator(RANDOM_SEED, split, episode index)`, so the
same tuple gives identical tensors in any process, worker or rank.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Container, Sequence

import numpy as np
import torch

from datasets.build import CLIP_MEAN, CLIP_STD, DATASET_REGISTRY
from datasets.frame_cache import with_frame_cache
from datasets.loader_watch import DecodingStatus
from datasets.on_disk import on_disk
from datasets.prepared import squash_prepared_scale
from datasets.sampling import EpisodeSampler, FrameSampler, child_seed
from datasets.splits import Split, VideoEntry, load_split
from datasets.tracks import TrackReader
from datasets.transforms import QueryAugment, ViewParams, ViewSampler, frames_to_tensor, transform_boxes
from datasets.video import BadVideoError, OpenedVideo, VideoSource, build_video_source
from utils.episode import Episode, Videos, build_episode
from utils.logger import get_logger, log_once
from utils.seeding import episode_generator, episode_seed

logger = get_logger(__name__)

BAD_VIDEO_POLICIES = ("error", "resample")


@dataclass
class Clip:
    """One decoded, transformed video of an episode."""

    video_id: str
    frames: torch.Tensor | None  # [T, 3, crop, crop]; None when skipped (features cached by the consumer)
    boxes: torch.Tensor | None = None  # [T, K, 4] in 0..1 of the crop
    box_mask: torch.Tensor | None = None  # [T, K] bool
    missing_tracks: bool = False


@dataclass
class ViewedClip:
    """One video as an episode shows it to the model, with the geometry that maps its pixels to the input."""

    decoded: np.ndarray  # uint8 [T, h, w, 3] as read (resized to the view's short side, or squashed when prepared)
    images: torch.Tensor  # [T, 3, crop, crop] the model's input: normalised float32, or uint8 pixels (exact crops)
    indices: list[int]  # the sampled frame numbers
    view: ViewParams  # scale, crop and flip of this clip
    video: OpenedVideo  # frame count, original width/height and decoded size


@dataclass(frozen=True)
class ClipReader:
    """How an episode reads one video: the reader (DATA.DECODER, DATA.FRAMES_FOLDER), the frame sampler
    (DATA.FRAME_SAMPLING, DATA.TEST_FRAMES, DATA.TARGET_FPS), the view's crop and normalisation, and the size check of
    prepared squashed frames. The loader and the tools (pictures, region statistics, benchmarks) read clips only
    through it, so they show what the model saw."""

    source: VideoSource
    frames: FrameSampler
    num_frames: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    prepared_squash: int = 0  # side of the prepared square frames (0: not squashed at preparation)

    def __call__(self, path: str, view: ViewParams, random: bool, generator: torch.Generator | None,
                 out: torch.Tensor | None = None) -> ViewedClip:
        """Frames of `path` drawn like training ones when `random` (else as the frame sampler's test policy says),
        through `view`; written into `out` when given (an episode's slot)."""
        video = self.source.open(path, view.short_side)
        if video.fps is None and self.frames.mode == "clip" and self.frames.target_fps > 0:
            log_once(logger, ("no fps",), logging.WARNING, "%s records no frame rate: its clip window is "
                     "DATA.NUM_INPUT_FRAMES x DATA.SAMPLING_RATE frames, as if it ran at DATA.TARGET_FPS %s (a "
                     "frames folder records it in video.json; logged once, other such videos follow the same rule)",
                     path, self.frames.target_fps)
        indices = self.frames(video.num_frames, self.num_frames, random, generator, video.fps)
        decoded = video.frames(indices)  # uint8 [T, h, w, 3]
        if self.prepared_squash and (decoded.shape[2], decoded.shape[1]) != (self.prepared_squash,) * 2:
            raise BadVideoError(path, "wrong size", f"{decoded.shape[2]}x{decoded.shape[1]} frames in a data root "
                                f"prepared at {self.prepared_squash}x{self.prepared_squash} (its prepared.json)")
        images = frames_to_tensor(decoded, view, self.mean, self.std, out=out)
        return ViewedClip(decoded, images, indices, view, video)


def clip_reader(cfg, split: str, num_frames: int = 0) -> ClipReader:
    """The ClipReader of `split`'s episodes from the DATA keys (`num_frames` 0: DATA.NUM_INPUT_FRAMES); no frame
    cache (from_config adds DATA.FRAME_CACHE_MB's)."""
    data = cfg.DATA
    # Random val/test frames never reach training episodes (DETERMINISTIC_TRAIN views stay fixed for its cache).
    frames = FrameSampler(data.FRAME_SAMPLING, data.SAMPLING_RATE, split != "train" and data.TEST_FRAMES == "random",
                          data.TARGET_FPS)
    source = build_video_source(data.FRAMES_FOLDER, min_frames=data.MIN_VIDEO_FRAMES, decoder=data.DECODER)
    return ClipReader(source, frames, num_frames or data.NUM_INPUT_FRAMES, tuple(data.MEAN), tuple(data.STD),
                      squash_prepared_scale(data))


def test_clip(cfg, video: VideoEntry | str, split: str = "test", num_frames: int = 0) -> ViewedClip:
    """One video as a `split` episode shows it to the model: the DATA.DATASET entry's view and the loader's
    ClipReader. `video` is a split entry or a path (a file, or a frames folder under DATA.FRAMES_FOLDER). With
    DATA.TEST_FRAMES random, the frames come from a generator seeded by RANDOM_SEED (an episode draws from its
    slot's seed)."""
    data = cfg.DATA
    views = DATASET_REGISTRY.get(data.DATASET, "DATA.DATASET").view_sampler(cfg, split)
    reader = clip_reader(cfg, split, num_frames)
    path = video if isinstance(video, str) else video.video_path(data.DATA_ROOT_DIR, data.VIDEO_EXT,
                                                                   data.FRAMES_FOLDER)
    generator = torch.Generator().manual_seed(cfg.RANDOM_SEED)
    return reader(path, views(generator), views.random, generator)


test_clip.__test__ = False  # a library function, not a pytest test (tests import it by name)


class FewShotDataset(torch.utils.data.Dataset):
    """Episodes of WAY classes x (SHOT support + QUERY query) videos from one split."""

    name = "FewShotDataset"
    flip_allowed = True  # entries whose labels depend on left/right (SSv2) set this False

    def __init__(self, *, split: Split, episode_indices: Sequence[int], sampler: EpisodeSampler, views: ViewSampler,
                 source: VideoSource, frames: FrameSampler | None = None, tracks: TrackReader | None = None,
                 seed: int = 0, data_root: str = "", video_ext: str = ".mp4", frames_folder: bool = False,
                 num_frames: int = 8, mean: Sequence[float] = tuple(CLIP_MEAN), std: Sequence[float] = tuple(CLIP_STD),
                 on_bad_video: str = "error", prepared_squash: int = 0, skip_videos: Container[str] | None = None):
        """The strategies (which videos, which frames, which view, which reader, which tracks) come built, from
        `from_config` or a test; the dataset only runs them per episode, from the episode's generators."""
        if on_bad_video not in BAD_VIDEO_POLICIES:
            raise ValueError(f"DATA.ON_BAD_VIDEO must be one of {BAD_VIDEO_POLICIES}, got {on_bad_video!r}")
        self.split, self.split_name = split, split.name
        # a range stays lazy (training's indices: TRAIN.NUM_TRAIN_TASKS may be huge); other sequences are copied
        self.episode_indices = episode_indices if isinstance(episode_indices, range) else [int(i) for i in
                                                                                            episode_indices]
        self.sampler, self.views, self.source = sampler, views, source
        self.frame_sampler, self.tracks = frames or FrameSampler(), tracks
        # The one way a video becomes a clip (tools read theirs through the same reader: `test_clip`).
        self.reader = ClipReader(source, self.frame_sampler, num_frames, tuple(mean), tuple(std), prepared_squash)
        self.way, self.shot, self.query = sampler.way, sampler.shot, sampler.query
        self.videos_by_class = sampler.videos_by_class
        self.seed, self.data_root, self.video_ext, self.frames_folder = seed, data_root, video_ext, frames_folder
        self.num_frames, self.crop_size = num_frames, views.crop_size
        self.mean, self.std, self.on_bad_video = tuple(mean), tuple(std), on_bad_video
        # Exact crops travel as uint8 pixels (4x less to write, to pass between processes and to copy to the
        # device, which normalises them): frames the reader resized to the short side, or squashed at preparation
        # (datasets/prepared.py), with no colour jitter; other views are normalised float32.
        self.prepared_squash = prepared_squash
        exact = views.exact_crops or (prepared_squash > 0 and views.query_augment is None)
        self.pixel_dtype = torch.uint8 if exact else torch.float32
        # Videos whose features the consumer already holds (models/feature_cache.py): not decoded, slot = None.
        self.skip_videos = skip_videos
        self.decoding: DecodingStatus | None = None  # what each loader worker decodes now (build_loader sets it)
        # Videos this process found bad (video id -> the error): never opened again, replaced at once. Episodes do
        # not change with it: a replacement depends only on the slot's seed (see _replacements).
        self.known_bad: dict[str, BadVideoError] = {}

    @classmethod
    def from_config(cls, cfg, split: str, episode_indices: Sequence[int]) -> dict[str, Any]:
        """Constructor arguments, strategies built, from the DATA/TRAIN/AUGMENTATION/VFAM config keys."""
        data = cfg.DATA
        _, shot, query = episode_shape(cfg, split)
        loaded = load_split(data.ANNO_DIR, split)
        kept = ""
        if data.ON_MISSING_VIDEO == "drop":  # the effective list: the same function as the start-up check's
            loaded, kept = on_disk(loaded, data, shot + query).split, ", videos on disk"
        sampler = EpisodeSampler(loaded.videos_by_class(), loaded.class_names, cfg.TRAIN.WAY, shot, query,
                                 source=f"{loaded.list_file or loaded.name} ({loaded.name} episodes{kept})")
        reader = clip_reader(cfg, split)
        source = with_frame_cache(reader.source, data.FRAME_CACHE_MB)
        tracks = TrackReader(data.TRACK_DIR, cfg.VFAM.MAX_ENTITIES) if data.TRACK_DIR else None
        return dict(split=loaded, episode_indices=episode_indices, sampler=sampler, views=cls.view_sampler(cfg, split),
                    source=source, frames=reader.frames, tracks=tracks, seed=cfg.RANDOM_SEED,
                    data_root=data.DATA_ROOT_DIR, video_ext=data.VIDEO_EXT, frames_folder=data.FRAMES_FOLDER,
                    num_frames=reader.num_frames, mean=reader.mean, std=reader.std, on_bad_video=data.ON_BAD_VIDEO,
                    prepared_squash=reader.prepared_squash)

    @classmethod
    def view_sampler(cls, cfg, split: str) -> ViewSampler:
        """Random views for training episodes (unless DATA.DETERMINISTIC_TRAIN: test-style views, so a video always
        looks the same and its features can be cached), the centre otherwise; the dataset's flip rules."""
        data, train = cfg.DATA, split == "train"
        check_scales(data.TRAIN_JITTER_SCALES, data.TEST_SCALE, data.TRAIN_CROP_SIZE, data.TEST_CROP_SIZE)
        flip = bool(data.FLIP)
        if flip and not cls.flip_allowed:
            log_once(logger, (cls.name, "FLIP"), logging.INFO, "%s: DATA.FLIP is off for this dataset (a "
                     "horizontal flip changes left/right class semantics)", cls.name)
            flip = False
        random = train and not data.DETERMINISTIC_TRAIN
        query_augment = None
        if train and cfg.AUGMENTATION.SUPPORT_QUERY_DIFF:
            aug = cfg.AUGMENTATION
            if not random:
                log_once(logger, (cls.name, "SUPPORT_QUERY_DIFF"), logging.INFO, "%s: AUGMENTATION.SUPPORT_QUERY_DIFF "
                         "is off with DATA.DETERMINISTIC_TRAIN (fixed training views)", cls.name)
            else:
                query_augment = QueryAugment(aug.BRIGHTNESS, aug.CONTRAST, aug.SATURATION, aug.HUE, aug.GRAYSCALE,
                                             flip=cls.flip_allowed)
                if not cls.flip_allowed:
                    log_once(logger, (cls.name, "query flip"), logging.INFO, "%s: AUGMENTATION.SUPPORT_QUERY_DIFF "
                             "without its query flip (a horizontal flip changes left/right class semantics)",
                             cls.name)
        crop = data.TRAIN_CROP_SIZE if train else data.TEST_CROP_SIZE
        return ViewSampler(random, tuple(data.TRAIN_JITTER_SCALES), data.TEST_SCALE, crop, flip, data.RESIZE_MODE,
                           query_augment)

    @classmethod
    def check_prepare(cls, cfg) -> None:
        """Before anything is generated: what `prepare` would write can be written (a one-line error if not)."""

    @classmethod
    def prepare(cls, cfg) -> None:
        """Run once on the main process before any loader is built (entries that can make their data do so)."""

    def __len__(self) -> int:
        return len(self.episode_indices)

    def __getitem__(self, i: int) -> Episode:
        index = self.episode_indices[i]
        plan = self.sampler(episode_generator(self.seed, self.split_name, index))
        used = {e.video_id for e in plan.support + plan.query}
        replaced: list[list[str]] = []
        # Clips are written straight into the episode tensors (no stacking copy of the largest arrays).
        support_set = self._empty_videos(len(plan.support))  # [S, T, 3, H, W]
        target_set = self._empty_videos(len(plan.query))  # [Q, T, 3, H, W]
        support = [self._load_slot(e, s, used, replaced, index, support_set[k])
                   for k, (e, s) in enumerate(zip(plan.support, plan.support_seeds, strict=True))]
        query = [self._load_slot(e, s, used, replaced, index, target_set[k], is_query=True)
                 for k, (e, s) in enumerate(zip(plan.query, plan.query_seeds, strict=True))]
        tracks = {}
        if self.tracks is not None:
            tracks = dict(support_boxes=_stack([c.boxes for c in support]),  # [S, T, K, 4]
                          support_box_mask=_stack([c.box_mask for c in support]),  # [S, T, K]
                          target_boxes=_stack([c.boxes for c in query]),
                          target_box_mask=_stack([c.box_mask for c in query]),
                          missing_tracks=[c.video_id for c in support + query if c.missing_tracks])
        support_videos: Videos = support_set
        query_videos: Videos = target_set
        if any(c.frames is None for c in support + query):  # some videos skipped: per-video lists
            support_videos = [None if c.frames is None else t for c, t in zip(support, support_set, strict=True)]
            query_videos = [None if c.frames is None else t for c, t in zip(query, target_set, strict=True)]
        return build_episode(support_videos, query_videos, shot=self.shot, query=self.query, class_ids=plan.class_ids,
                             split_class_names=self.split.class_names, support_ids=[c.video_id for c in support],
                             target_ids=[c.video_id for c in query], episode_index=index, split=self.split_name,
                             replaced_videos=replaced, **tracks)

    # -----------------------------------------------------------------------------------------

    def _empty_videos(self, count: int) -> torch.Tensor:
        """[count, T, 3, crop, crop] to write clips into. uint8 pixels are stored channels-last ([.., crop, crop, 3]
        memory, as decoded), so copying a crop moves whole rows instead of transposing every pixel."""
        t, c = self.num_frames, self.crop_size
        if self.pixel_dtype == torch.uint8:
            return torch.empty((count, t, c, c, 3), dtype=torch.uint8).permute(0, 1, 4, 2, 3)
        return torch.empty((count, t, 3, c, c), dtype=self.pixel_dtype)

    def _load_slot(self, entry: VideoEntry, seed: int, used: set[str], replaced: list[list[str]], index: int,
                   out: torch.Tensor, is_query: bool = False) -> Clip:
        """Decode one support/query video; with the resample policy, bad videos give way to others of
        the same class (drawn from this slot's seed, so the replacement is reproducible too)."""
        if self.skip_videos is not None and entry.video_id in self.skip_videos:
            return Clip(entry.video_id, None)  # cached by the consumer: a cached video decoded fine before
        generator = torch.Generator().manual_seed(seed)
        view = self.views(generator, is_query)
        where = f"{self.split_name} episode {index}"
        replacements = None
        current = entry
        while True:
            err = self.known_bad.get(current.video_id)
            if err is None:
                try:
                    return self._load_video(current, view, generator, out)
                except BadVideoError as found:
                    err = self._found_bad(current, found, where)
            if replacements is None:
                replacements = self._replacements(entry, seed, used)
            nxt, generator = next(replacements, (None, None))
            if nxt is None:
                raise BadVideoError(err.path, err.reason, f"{where}: no usable replacement left in class "
                                    f"{entry.class_id} ({self.split.class_names[entry.class_id]!r})") from None
            used.add(nxt.video_id)
            replaced.append([current.video_id, err.reason])
            logger.debug("%s: replaced %s (%s) by %s", where, current.video_id, err.reason, nxt.video_id)
            current = nxt

    def _found_bad(self, entry: VideoEntry, err: BadVideoError, where: str) -> BadVideoError:
        """A video that failed to load: an error naming the episode (DATA.ON_BAD_VIDEO error), or remembered and
        logged once per process (resample)."""
        if self.on_bad_video == "error":
            detail = f"{err.detail}; " if err.detail else ""
            raise BadVideoError(err.path, err.reason, f"{detail}{where}; DATA.ON_BAD_VIDEO resample "
                                f"replaces bad videos by others of the same class") from None
        self.known_bad[entry.video_id] = err
        logger.warning("%s: %s; replaced by other videos of its class from now on (DATA.ON_BAD_VIDEO resample; "
                       "this process will not open it again)", where, err)
        return err

    def _replacements(self, entry: VideoEntry, seed: int, used: set[str]):
        """(video, its frame generator) in the order a bad video of this slot is replaced: a function of the slot's
        seed alone, however far the failed attempt drew from the slot's generator or whether it was tried at all."""
        generator = torch.Generator().manual_seed(episode_seed(seed, "replacements", entry.class_id))
        pool = [v for v in self.videos_by_class[entry.class_id] if v.video_id not in used]
        for j in torch.randperm(len(pool), generator=generator).tolist():
            yield pool[j], torch.Generator().manual_seed(child_seed(generator))

    def _load_video(self, entry: VideoEntry, view: ViewParams, generator: torch.Generator,
                    out: torch.Tensor) -> Clip:
        path = entry.video_path(self.data_root, self.video_ext, self.frames_folder)
        if self.decoding is not None:
            self.decoding.set(path)
        try:
            return self._decode_clip(entry, path, view, generator, out)
        finally:
            if self.decoding is not None:
                self.decoding.clear()

    def _decode_clip(self, entry: VideoEntry, path: str, view: ViewParams, generator: torch.Generator,
                     out: torch.Tensor) -> Clip:
        viewed = self.reader(path, view, self.views.random, generator, out=out)
        clip = Clip(entry.video_id, viewed.images)
        if self.tracks is not None:
            video, decoded = viewed.video, viewed.decoded
            boxes, mask, clip.missing_tracks = self.tracks.boxes(entry.video_id, viewed.indices, video.num_frames,
                                                                 video.width, video.height)
            clip.boxes, clip.box_mask = transform_boxes(boxes, mask, (decoded.shape[2], decoded.shape[1]), view)
        return clip


def _stack(tensors: list[torch.Tensor | None]) -> torch.Tensor | list[torch.Tensor | None]:
    """Stack per-video tensors; with skipped (None) videos keep the list."""
    return list(tensors) if any(t is None for t in tensors) else torch.stack(tensors)


def episode_shape(cfg, split: str) -> tuple[int, int, int]:
    """(WAY, SHOT, QUERY) of the episodes of `split`: val/test use TRAIN.SHOT_TEST (0 = SHOT) and
    TRAIN.QUERY_PER_CLASS_TEST."""
    if split == "train":
        return cfg.TRAIN.WAY, cfg.TRAIN.SHOT, cfg.TRAIN.QUERY_PER_CLASS
    shot = cfg.TRAIN.SHOT if cfg.TRAIN.SHOT_TEST == 0 else cfg.TRAIN.SHOT_TEST
    return cfg.TRAIN.WAY, shot, cfg.TRAIN.QUERY_PER_CLASS_TEST


def check_scales(jitter_scales: Sequence[int], test_scale: int, train_crop: int, test_crop: int) -> None:
    """The resized short side must cover the crop, or the crop would read outside the frame."""
    if len(jitter_scales) != 2 or jitter_scales[0] > jitter_scales[1]:
        raise ValueError(f"DATA.TRAIN_JITTER_SCALES must be [min, max], got {list(jitter_scales)}")
    if jitter_scales[0] < train_crop:
        raise ValueError(f"DATA.TRAIN_JITTER_SCALES {list(jitter_scales)} must be >= DATA.TRAIN_CROP_SIZE "
                         f"{train_crop}")
    if test_scale < test_crop:
        raise ValueError(f"DATA.TEST_SCALE {test_scale} must be >= DATA.TEST_CROP_SIZE {test_crop}")


# ---------------------------------------------------------------------------------------------
# Thin per-benchmark entries: the generic class does the work; entries only set dataset facts.

DATASET_REGISTRY.register(FewShotDataset)


@DATASET_REGISTRY.register()
class Ssv2_few_shot(FewShotDataset):  # CLIP-FSAR's registered names
    """Something-Something v2 (Full and Small): labels say left/right, so no flip."""

    name = "Ssv2_few_shot"
    flip_allowed = False


@DATASET_REGISTRY.register()
class Kinetics100_few_shot(FewShotDataset):
    name = "Kinetics100_few_shot"


@DATASET_REGISTRY.register()
class Ucf101_few_shot(FewShotDataset):
    name = "Ucf101_few_shot"


@DATASET_REGISTRY.register()
class Hmdb51_few_shot(FewShotDataset):
    name = "Hmdb51_few_shot"


@DATASET_REGISTRY.register()
class Synthetic_few_shot(FewShotDataset):
    """The procedural benchmark of datasets/synthetic.py: classes move left/right, so no flip."""

    name = "Synthetic_few_shot"
    flip_allowed = False

    @classmethod
    def check_prepare(cls, cfg) -> None:
        from datasets.synthetic import check_can_generate

        check_can_generate(cfg)

    @classmethod
    def prepare(cls, cfg) -> None:
        """With SYNTHETIC.GENERATE, write the benchmark into DATA.ANNO_DIR when its split lists are missing (or its
        last generation was cut short)."""
        from datasets.synthetic import ensure_synthetic

        ensure_synthetic(cfg)
