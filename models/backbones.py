"""The frame backbone named by VIDEO.HEAD.BACKBONE_NAME: torchvision's resnet18 / resnet34 / resnet50
(models/resnet.py, the lineage's CNN heads) or a CLIP tower (models/clip.py, every other name). Heads that read
only per-frame features (CNN_OTAM, CNN_TRX) take either; heads that need class text take CLIP towers only."""
from __future__ import annotations

from torch import nn

from models import clip
from models.clip import CLIPBackbone
from models.resnet import ResNetBackbone, check_resnet_pretrained, is_resnet
from utils.config import CfgNode


def build_frame_backbone(cfg: CfgNode) -> nn.Module:
    """ResNetBackbone or CLIPBackbone, by VIDEO.HEAD.BACKBONE_NAME."""
    if is_resnet(cfg.VIDEO.HEAD.BACKBONE_NAME):
        return ResNetBackbone(**ResNetBackbone.from_config(cfg))
    return CLIPBackbone(**CLIPBackbone.from_config(cfg))


def check_pretrained(name: str, pretrained: str) -> None:
    """Start-up check of VIDEO.HEAD.PRETRAINED for either kind of backbone (fetches named weights into the cache;
    offline without them: a one-line ConfigError)."""
    if is_resnet(name):
        check_resnet_pretrained(name, pretrained)
    else:
        clip.check_pretrained(name, pretrained)
