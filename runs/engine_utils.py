"""Small pieces shared by the training and test loops."""
from __future__ import annotations

import contextlib

import torch

from utils.config import CfgNode


def to_device(episode: dict, device: torch.device) -> dict:
    """Move an episode's tensors (also inside lists, as in feature-cache episodes) to `device`."""
    non_blocking = device.type == "cuda"

    def move(value):
        if torch.is_tensor(value):
            return value.to(device, non_blocking=non_blocking)
        if isinstance(value, list) and any(torch.is_tensor(v) for v in value):
            return [move(v) for v in value]
        return value

    return {k: move(v) for k, v in episode.items()}


def autocast(cfg: CfgNode, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast from TRAIN.AUTOCAST (fp16 only on CUDA); a no-op for "none"."""
    mode = cfg.TRAIN.AUTOCAST
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("TRAIN.AUTOCAST fp16 needs CUDA; use bf16 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ValueError(f"TRAIN.AUTOCAST: unknown mode {mode!r} (none, bf16, fp16)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
