"""Seeds: episodes are a pure function of (RANDOM_SEED, split, episode index)."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def episode_seed(seed: int, split: str, index: int) -> int:
    """A stable 63-bit seed for one episode (independent of process, rank and Python hash salt)."""
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def episode_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A torch.Generator seeded by `episode_seed`; all of an episode's randomness comes from it."""
    return torch.Generator().manual_seed(episode_seed(seed, split, index))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global RNGs (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
