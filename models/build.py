"""The head registry and `build_model`, which picks the head named by VIDEO.HEAD.NAME."""
from __future__ import annotations

from torch import nn

from utils.config import CfgNode, ConfigError, section
from utils.registry import Registry

HEAD_REGISTRY = Registry("HEAD")  # few-shot heads: class(cfg-derived kwargs); built via cls.from_config(cfg)


def add_model_build_config(cfg: CfgNode) -> None:
    _H = section(section(cfg, "VIDEO"), "HEAD")
    _H.NAME = "CNN_OTAM_CLIPFSAR"  # registered head class to build (see models/heads/)


def build_model(cfg: CfgNode) -> nn.Module:
    """Build the head named by VIDEO.HEAD.NAME from `cfg`; the caller moves it to a device."""
    head_cls = HEAD_REGISTRY.get(cfg.VIDEO.HEAD.NAME, "VIDEO.HEAD.NAME")
    model = head_cls(**head_cls.from_config(cfg))
    check_input_matches_backbone(cfg, model.backbone)
    return model


def check_input_matches_backbone(cfg: CfgNode, backbone: nn.Module) -> None:
    """At start-up, not at the first step: the data's normalisation and crops are the backbone's. Loader-
    normalised views use DATA.MEAN/STD and uint8 crops the backbone's own (models/clip.py:CLIPBackbone.normalise),
    so the two must agree; a crop of another size would fail in the first forward pass."""
    name = cfg.VIDEO.HEAD.BACKBONE_NAME
    for key, ours, theirs in (("DATA.MEAN", cfg.DATA.MEAN, backbone.image_mean),
                              ("DATA.STD", cfg.DATA.STD, backbone.image_std)):
        if any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(ours, theirs, strict=True)):
            raise ConfigError(f"{key} {list(ours)} differs from the {name} backbone's {list(theirs)}, which its "
                              f"weights were trained with; set {key} to it")
    height, width = backbone.image_size  # (h, w), as encode_frames compares it
    for key in ("TRAIN_CROP_SIZE", "TEST_CROP_SIZE"):
        if (cfg.DATA[key],) * 2 != (height, width):
            raise ConfigError(f"DATA.{key} {cfg.DATA[key]} differs from the {name} backbone's input size "
                              f"{width}x{height}; set it to {width}")
