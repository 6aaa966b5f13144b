"""Checkpoints: atomic writes, `last`/`best` files, full training state, safe and strict loading."""
from __future__ import annotations

import errno
import os
import pickle
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_write
from utils.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not match the model; the message names the file."""

    exit_code = 7
    family = "checkpoint"


# Errors that mean "the disk (or a quota, or a file-size limit) is full": the run cannot go on, the old file is fine.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `utils.atomic.atomic_write` (temporary file, fsync, rename): a crash leaves either the old
    file or the new one. A full disk (ENOSPC, EFBIG, EDQUOT) is a one-line CheckpointError; the temporary file is
    removed either way."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except BaseException as e:
        if _disk_full(e):
            kept = "the previous checkpoint is intact" if os.path.isfile(path) else "no earlier checkpoint"
            raise CheckpointError(f"{path}: no space left on device; {kept} (free space or raise the quota, "
                                  f"then --resume)") from None
        raise


def _disk_full(err: BaseException) -> bool:
    """torch.save reports a failed write as RuntimeError("... file write failed") without errno; walk the chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if isinstance(err, RuntimeError) and "write failed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def rng_state() -> dict:
    """RNG states as weights-only-loadable values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str) -> dict:
    """Load with `weights_only=True`; a missing, truncated, corrupt or pickled-object file is a
    one-line CheckpointError naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling error"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused: the file carries pickled Python objects, not only weights ({first[:160]})"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first[:160]})") from None


def describe_key_diff(model_keys: set, state_keys: set, shape_mismatch: list[str]) -> str:
    missing = sorted(model_keys - state_keys)
    unexpected = sorted(state_keys - model_keys)
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape_mismatch)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
            parts.append(f"{len(keys)} {title}: {shown}")
    return "; ".join(parts)


def check_weights(state_dict: dict, own: dict, source: str) -> None:
    """Refuse weights that would load silently wrong: a float tensor stored as integers (load_state_dict casts it
    back and the run tests something else) or a non-finite one (an all-NaN file tests at chance without a word)."""
    for key, value in state_dict.items():
        if key not in own or not torch.is_tensor(value):
            continue
        if value.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"{source}: {key} is stored as {str(value.dtype).removeprefix('torch.')}, the "
                                  f"model's is {str(own[key].dtype).removeprefix('torch.')} (the weights were "
                                  f"converted after saving; use the file as training wrote it)")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {key} holds NaN or inf (the run had diverged when this was saved; use "
                                  f"an earlier checkpoint)")


def load_model_state(model: nn.Module, state_dict: dict, source: str, strict: bool = True) -> None:
    """Load weights; with `strict`, any missing/unexpected/mis-shaped key is an error listing them; a float weight
    stored as integers or holding NaN/inf is refused either way."""
    own = model.state_dict()
    check_weights(state_dict, own, source)
    mismatch = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                if k in own and v.shape != own[k].shape]
    diff = describe_key_diff(set(own), set(state_dict), mismatch)
    if diff and strict:
        raise CheckpointError(f"{source}: checkpoint does not match the model: {diff}")
    if mismatch:
        state_dict = {k: v for k, v in state_dict.items() if not (k in own and v.shape != own[k].shape)}
    model.load_state_dict(state_dict, strict=False)


class Checkpointer:
    """Saves and finds `last.pth` / `best.pth` in `OUTPUT_DIR/checkpoints`."""

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.pth")

    def has(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def save(self, name: str, *, model: nn.Module, optimizer=None, scheduler=None, scaler=None,
             iteration: int = 0, config_yaml: str = "", extra: dict | None = None) -> str:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "iteration": iteration,
            "rng": rng_state(),
            "config": config_yaml,
            "extra": extra or {},
        }
        atomic_save(state, self.path(name))
        return self.path(name)
