"""`python runs/visualize.py regions`: a PNG of a video's AMCAP regions, run in-process on a synthetic mp4."""
from pathlib import Path

import av
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from datasets.transforms import ViewParams, frames_to_tensor
from datasets.video import build_video_source
from runs import amcap_regions, visualize
from runs.config import load_config

# The tiny backbone takes 64-px images: the configs' 224-px crops go with it (build_model checks they agree).
TINY = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
        "DATA.TEST_CROP_SIZE", "64", "VFAM.CROP_SIZE", "64"]


def _write_video(path: Path, frames: int = 20, width: int = 96, height: int = 80) -> None:
    """A red square moving right over a green floor."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for i in range(frames):
        img = np.zeros((height, width, 3), np.uint8)
        img[10:40, 5 + 3 * i:35 + 3 * i] = (255, 60, 0)
        img[50:, :, 1] = 120
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_regions_command_writes_a_png(tmp_path, capsys):
    video, out = tmp_path / "clip.mp4", tmp_path / "pics" / "regions.png"
    _write_video(video)
    argv = ["regions", "--video", str(video), "--classes", "jumping jacks, archery,pushing something",
            "--out", str(out), *TINY, "AMCAP.GRID", "4"]
    assert visualize.main(argv) == 0
    image = mpimg.imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 1000  # 8 frames plus the token panel
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert "regions kept" in capsys.readouterr().out


def test_frames_are_segment_centres_in_the_loaders_test_view(tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(video, frames=16)
    cfg = load_config(None, [*TINY, "DATA.TEST_SCALE", "64", "DATA.TRAIN_JITTER_SCALES", "[64, 64]"])
    frames, images, indices = amcap_regions.read_frames(cfg, str(video), 8)
    assert frames.shape == (8, 64, 64, 3) and images.shape == (8, 3, 64, 64)
    assert indices == [1, 3, 5, 7, 9, 11, 13, 15]
    # The model sees what a test episode of this video holds: the loader's squash view and normalisation.
    source = build_video_source(False)
    episode_view = frames_to_tensor(source.open(str(video), 0).frames(indices), ViewParams(0, 64, 0.5, 0.5, False, 64),
                                    cfg.DATA.MEAN, cfg.DATA.STD)
    assert torch.equal(images, episode_view)


def test_tools_read_a_video_as_the_loaders_test_episode_holds_it_under_clip_sampling(synthetic_root):
    """read_test_clip used to rebuild the view by hand with segment centres, whatever DATA.FRAME_SAMPLING said."""
    from datasets import build_dataset
    from datasets.sampling import segment_indices
    from utils.plots import unnormalise

    cfg = load_config(None, [*TINY, "DATA.DATASET", "Synthetic_few_shot", "DATA.ANNO_DIR", str(synthetic_root),
                             "DATA.DATA_ROOT_DIR", str(synthetic_root), "DATA.TEST_SCALE", "64",
                             "DATA.TRAIN_JITTER_SCALES", "[64, 64]", "DATA.NUM_INPUT_FRAMES", "4",
                             "DATA.FRAME_SAMPLING", "clip", "DATA.SAMPLING_RATE", "2", "DATA.TARGET_FPS", "0",
                             "TRAIN.WAY", "5", "TRAIN.SHOT", "1", "TRAIN.QUERY_PER_CLASS_TEST", "1"])
    dataset = build_dataset(cfg, "test", [0])
    episode = dataset[0]
    entry = next(e for e in dataset.split.videos if e.video_id == episode.support_ids[0])
    clip = amcap_regions.read_test_clip(cfg, entry)
    assert clip.indices != segment_indices(clip.video.num_frames, 4, train=False, generator=None)
    assert np.array_equal(unnormalise(clip.images[None], cfg.DATA.MEAN, cfg.DATA.STD)[0],
                          unnormalise(episode.support_set[:1], cfg.DATA.MEAN, cfg.DATA.STD)[0])


def test_class_names_come_from_the_split_without_classes(tmp_path):
    (tmp_path / "test_class_names.txt").write_text("archery\nbowling\n")
    cfg = load_config(None, ["DATA.ANNO_DIR", str(tmp_path)])
    assert visualize.episode_class_names(cfg, "", "test") == ["archery", "bowling"]
    assert visualize.episode_class_names(cfg, " a , b ,", "test") == ["a", "b"]
    with pytest.raises(ValueError, match="--classes"):
        visualize.episode_class_names(load_config(None, []), "", "test")
