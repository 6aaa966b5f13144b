"""The head registry and `build_model`, which picks the head named by VIDEO.HEAD.NAME."""
from __future__ import annotations

from torch import nn

from utils.config import CfgNode, section
from utils.registry import Registry

HEAD_REGISTRY = Registry("HEAD")  # few-shot heads: class(cfg-derived kwargs); built via cls.from_config(cfg)


def add_model_build_config(cfg: CfgNode) -> None:
    _H = section(section(cfg, "VIDEO"), "HEAD")
    _H.NAME = "CNN_OTAM_CLIPFSAR"  # registered head class to build (see models/heads/)


def build_model(cfg: CfgNode) -> nn.Module:
    """Build the head named by VIDEO.HEAD.NAME from `cfg`; the caller moves it to a device."""
    head_cls = HEAD_REGISTRY.get(cfg.VIDEO.HEAD.NAME, "VIDEO.HEAD.NAME")
    return head_cls(**head_cls.from_config(cfg))
