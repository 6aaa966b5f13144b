"""torchvision ResNet-18/34/50 frame backbones, built as the lineage's few-shot heads build them.

CLIP-FSAR's `CNN_FSHead` (models/base/few_shot.py) takes `torchvision.models.resnet{18,34,50}(pretrained=True)` and
keeps `nn.Sequential(*list(resnet.children())[:-1])`: the network without its classifier, so a frame's feature is
layer4's global average pool (512 wide for ResNet-18/34, 2048 for ResNet-50). `ResNetBackbone` is that Sequential
(its parameters keep the lineage's names `0.weight`, `1.running_mean`, `4.0.conv1.weight`, ...) with the frame-encoder
interface the heads use on CLIP towers too (`normalise`, `encode_frames`, `embed_dim`, `image_size`), so a head runs on
either and "OTAM on CLIP ViT-B/16" and "OTAM on ImageNet ResNet-50" are one key apart (models/backbones.py).

BatchNorm as the lineage has it (its BN.FREEZE false): trained with batch statistics, supports and queries in
separate calls (models/heads/base.py:encode_episode), running statistics in eval. Parts frozen by VIDEO.HEAD.FINETUNE
keep their BatchNorm in eval mode too (the lineage fine-tunes everything).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Sequence

import torch
import torchvision
from torch import Tensor, nn

from models.clip import FINETUNE_POLICIES
from utils.checkpoint import CheckpointError
from utils.config import CfgNode, ConfigError
from utils.pixels import normalise

# BACKBONE_NAME -> (torchvision constructor, the weights the lineage's `pretrained=True` loads: ImageNet V1).
RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
IMAGENET = "imagenet"
_HINT = "give 'imagenet', a torchvision state-dict file of this ResNet, or '' for random weights"


def is_resnet(name: str) -> bool:
    return name in RESNETS


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def imagenet_file(name: str) -> str:
    """Where torchvision keeps `name`'s ImageNet weights (the torch hub cache)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(RESNETS[name][1].url))


def imagenet_state(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights of `name` from its cache, downloaded there if absent; offline without them a
    one-line ConfigError saying which file to copy."""
    weights = RESNETS[name][1]
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError is an OSError; a bad hash a RuntimeError
        file = imagenet_file(name)
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED imagenet: torchvision's {name} ImageNet weights are not cached at "
                          f"{file} and could not be downloaded ({_first_line(e)}) (offline: copy "
                          f"{os.path.basename(weights.url)} there, or set VIDEO.HEAD.PRETRAINED to its path)") from None


def read_weights_file(path: str) -> dict[str, Tensor]:
    """A torchvision ResNet state dict from `path` (read with weights_only; {"state_dict": ...} and "module."
    prefixes unwrapped); anything else is a one-line CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: not a weights file this code can read "
                              f"({_first_line(e)}) ({_HINT})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {path}: holds no state dict of tensors ({_HINT})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def check_resnet_pretrained(name: str, pretrained: str) -> None:
    """Start-up check of VIDEO.HEAD.PRETRAINED for a ResNet: weights this machine can load."""
    if pretrained == "openai":
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED openai: VIDEO.HEAD.BACKBONE_NAME {name} is torchvision's, not a "
                          f"CLIP tower ({_HINT})")
    if pretrained == IMAGENET:
        if not os.path.isfile(imagenet_file(name)):
            imagenet_state(name)  # downloads it into the cache, or says which file to copy
    elif pretrained and not os.path.isfile(os.path.expanduser(pretrained)):
        raise ConfigError(f"VIDEO.HEAD.PRETRAINED {pretrained!r}: no such file ({_HINT})")


def _resnet(name: str, pretrained: str) -> nn.Module:
    """torchvision's `name` with the chosen weights; its classifier `fc` is dropped by the caller."""
    if not is_resnet(name):
        raise ConfigError(f"VIDEO.HEAD.BACKBONE_NAME {name}: not a torchvision ResNet ({', '.join(RESNETS)})")
    check_resnet_pretrained(name, pretrained)
    net = RESNETS[name][0](weights=None)
    if not pretrained:
        return net
    state = imagenet_state(name) if pretrained == IMAGENET else read_weights_file(os.path.expanduser(pretrained))
    own = net.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is never used
    wanted = {k for k in own if not k.startswith("fc.")}
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected or shapes:
        raise CheckpointError(f"VIDEO.HEAD.PRETRAINED {pretrained}: does not fit torchvision's {name} (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:3]}) ({_HINT})")
    net.load_state_dict(state, strict=False)
    return net


class ResNetBackbone(nn.Sequential):
    """torchvision ResNet without its classifier (the lineage's `children()[:-1]`), with the frame-encoder interface
    of models/clip.py:CLIPBackbone."""

    def __init__(self, name: str, pretrained: str = "", finetune: str = "full", finetune_last_n: int = 0,
                 image_size: int = 224, image_mean: Sequence[float] = (0.45, 0.45, 0.45),
                 image_std: Sequence[float] = (0.225, 0.225, 0.225)):
        net = _resnet(name, pretrained)
        super().__init__(*list(net.children())[:-1])  # conv1 bn1 relu maxpool layer1..4 avgpool: keys 0..8
        self.name = name
        self.embed_dim = int(net.fc.in_features)
        # A ResNet takes any size (its pool is adaptive); image_size is the crop the data hands it, which
        # models/build.py checks against DATA.TRAIN/TEST_CROP_SIZE like a CLIP tower's.
        self.image_size = (int(image_size), int(image_size))
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        if finetune not in FINETUNE_POLICIES:
            raise ConfigError(f"VIDEO.HEAD.FINETUNE must be one of {FINETUNE_POLICIES}, got '{finetune}'")
        self.finetune, self.finetune_last_n = finetune, finetune_last_n
        self._apply_finetune_policy()

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        """The backbone keys CLIP towers read too; the ResNet's pixel statistics are the data's (DATA.MEAN/STD: the
        lineage's ResNet configs normalise with its base config's 0.45 / 0.225, not the ImageNet statistics
        torchvision's weights were trained with)."""
        head = cfg.VIDEO.HEAD
        if cfg.TRAIN.GRAD_CHECKPOINT:
            raise ConfigError("TRAIN.GRAD_CHECKPOINT: not available for the torchvision ResNets (a recomputed "
                              "BatchNorm forward would update its running statistics twice); set it False")
        if head.TRAIN_TEXT_ENCODER:
            raise ConfigError(f"VIDEO.HEAD.TRAIN_TEXT_ENCODER: {head.BACKBONE_NAME} has no text tower; set it False")
        return dict(name=head.BACKBONE_NAME, pretrained=head.PRETRAINED, finetune=head.FINETUNE,
                    finetune_last_n=head.FINETUNE_LAST_N, image_size=cfg.DATA.TRAIN_CROP_SIZE,
                    image_mean=tuple(cfg.DATA.MEAN), image_std=tuple(cfg.DATA.STD))

    def _blocks(self) -> list[nn.Module]:
        """The residual blocks of layer1..layer4, in order."""
        return [block for layer in list(self)[4:8] for block in layer]

    def _apply_finetune_policy(self) -> None:
        if self.finetune == "full":
            return
        self.requires_grad_(False)
        if self.finetune == "last_n":
            blocks = self._blocks()
            if not 0 < self.finetune_last_n <= len(blocks):
                raise ConfigError(f"VIDEO.HEAD.FINETUNE_LAST_N must be in 1..{len(blocks)} for {self.name}, got "
                                  f"{self.finetune_last_n}")
            for block in blocks[-self.finetune_last_n:]:
                block.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """BatchNorm layers whose parameters are frozen keep their running statistics (eval mode)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.weight.requires_grad:
                module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self[0].weight.device

    def normalise(self, videos: Tensor) -> Tensor:
        """uint8 pixels -> the network's input with the data's mean/std; float videos are already normalised."""
        return normalise(videos, self.image_mean, self.image_std) if videos.dtype == torch.uint8 else videos

    def encode_frames(self, images: Tensor, dense: bool = False) -> dict[str, Tensor]:
        """images [N,3,H,W] -> {"global": [N, D]}: the pooled layer4 feature (the lineage's `.squeeze()`)."""
        if dense:
            raise ValueError(f"models/resnet.py: {self.name} gives no joint-space patch tokens (dense=True is for "
                             f"CLIP towers)")
        return {"global": self(images).flatten(1)}
