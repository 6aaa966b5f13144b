"""Every YAML under configs/ loads and builds (with the tiny backbone and no downloads)."""
from pathlib import Path

import pytest
import torch

from models import build_model
from runs.config import load_config

CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
# The tiny backbone takes 64-px images: the configs' 224-px crops go with it (build_model checks they agree).
TINY = ["VIDEO.HEAD.BACKBONE_NAME", "FSAR-Tiny-ViT", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "64",
        "DATA.TEST_CROP_SIZE", "64", "VFAM.CROP_SIZE", "64"]
# Configs on torchvision ResNets (their DATA.MEAN is not CLIP's) build with a random ResNet-18 on 32-px crops.
TINY_RESNET = ["VIDEO.HEAD.BACKBONE_NAME", "resnet18", "VIDEO.HEAD.PRETRAINED", "", "DATA.TRAIN_CROP_SIZE", "32",
               "DATA.TEST_CROP_SIZE", "32"]


def tiny(path: str) -> list[str]:
    from models.resnet import is_resnet

    return TINY_RESNET if is_resnet(load_config(path, []).VIDEO.HEAD.BACKBONE_NAME) else TINY


def test_the_config_tree_has_every_benchmark_shot_and_backbone():
    names = {Path(p).name for p in CONFIGS}
    for method, backbones in (("CLIPFSAR", ("RN50", "ViT-B16")), ("MCDPFSAR", ("RN50", "ViT-B16")),
                              ("OTAM", ("ResNet50",)), ("TRX", ("ResNet50",)), ("HyRSM", ("ResNet50",)),
                              ("TSN", ("ResNet50",)), ("CrossTransformer", ("ResNet50",))):
        for tag in ("SSv2_Full", "SSv2_Small", "K100", "UCF101", "HMDB51"):
            for shot in (1, 5):
                for backbone in backbones:
                    assert f"{method}_{tag}_{shot}shot_{backbone}.yaml" in names
    assert len([p for p in CONFIGS if "/ablations/" in p]) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(Path(p).relative_to(Path(p).parents[2])))
def test_config_loads_and_builds(path):
    cfg = load_config(path, tiny(path))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.backbone.embed_dim > 0
    if "MCDPFSAR" in path and "ablations" not in path:
        assert cfg.VIDEO.HEAD.NAME == "MCDP_FSAR" and cfg.VFAM.ENABLE and cfg.AMCAP.ENABLE


def test_five_shot_configs_train_with_five_shots():
    cfg = load_config([p for p in CONFIGS if p.endswith("MCDPFSAR_HMDB51_5shot_RN50.yaml")][0], TINY)
    assert cfg.TRAIN.SHOT == 5 and cfg.TRAIN.SHOT_TEST in (0, 5) and cfg.TRAIN.MERGE_BEFORE


@pytest.mark.parametrize("benchmark, expected", [
    ("ucf101", "data/ucf101/videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"),
    ("hmdb51", "data/hmdb51/videos/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"),
    ("kinetics100", "data/kinetics400/train_256/air_drumming/-VtLx-mcPds_000012_000022.mp4"),
    ("ssv2_small", "data/ssv2/videos/51958.webm"),
    ("ssv2_full", "data/ssv2/videos/78687.webm"),
])
def test_shipped_benchmark_configs_read_the_official_download_layout(shared_splits, benchmark, expected):
    """The first video of each public training list resolves, with the shipped DATA_ROOT_DIR and VIDEO_EXT, to where
    the benchmark's own download puts it (UCF101/HMDB51 lists name videos/..., SSv2 ships .webm)."""
    from datasets.splits import parse_split_file

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(str(root / "configs" / "projects" / "CLIPFSAR" / benchmark / "base.yaml"), [])
    entries = parse_split_file(str(shared_splits / "clipfsar" / benchmark / "train_few_shot.txt"))
    assert entries[0].video_path(cfg.DATA.DATA_ROOT_DIR, cfg.DATA.VIDEO_EXT) == expected


def test_every_shipped_config_sets_only_sections_its_head_reads():
    from runs.run import check_head_sections

    for path in CONFIGS:
        check_head_sections(load_config(path, TINY))


def test_a_section_the_head_does_not_read_is_refused_at_start_up(tmp_path, capsys):
    """A switch means one thing: AMCAP or MCDP keys under CNN_OTAM_CLIPFSAR would silently run CLIP-FSAR."""
    from runs.run import main
    from utils.config import ConfigError

    clipfsar = [p for p in CONFIGS if p.endswith("CLIPFSAR_UCF101_1shot_RN50.yaml")][0]
    for opts, keys in ((["AMCAP.ENABLE", "True"], "AMCAP.ENABLE"),
                       (["MCDP.FUSION_WEIGHT", "0.5", "AMCAP.NUM_REGIONS", "6"],
                        "AMCAP.NUM_REGIONS, MCDP.FUSION_WEIGHT")):
        with pytest.raises(SystemExit) as info:
            main(["--cfg", clipfsar, "OUTPUT_DIR", str(tmp_path / "run"), *opts])
        assert info.value.code == ConfigError.exit_code
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {keys}") and "VIDEO.HEAD.NAME CNN_OTAM_CLIPFSAR does not read" in err, err
    assert not (tmp_path / "run").exists()
    mcdp = [p for p in CONFIGS if p.endswith("MCDPFSAR_UCF101_1shot_RN50.yaml")][0]
    from runs.run import check_head_sections

    check_head_sections(load_config(mcdp, ["AMCAP.NUM_REGIONS", "6", "MCDP.FUSION_WEIGHT", "0.5"]))
