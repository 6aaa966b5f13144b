"""Checkpoints: atomic writes, full state, safe loading, readable errors."""
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint import (
    Checkpointer,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model_state,
    rng_state,
    set_rng_state,
)


def small_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_save_and_load_full_state_round_trip(tmp_path):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    sched.step()
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    path = ckpt.save("last", model=model, optimizer=opt, scheduler=sched, iteration=7, config_yaml="A: 1\n")
    state = load_checkpoint(path)
    assert state["iteration"] == 7 and state["config"] == "A: 1\n"
    other = small_model()
    load_model_state(other, state["model"], path)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.1)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_states_restore_python_numpy_torch():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"model": small_model().state_dict()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pth: corrupt or truncated checkpoint"):
        load_checkpoint(str(path))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: corrupt or truncated"):
        load_checkpoint(str(tmp_path / "empty.pth"))
    with pytest.raises(CheckpointError, match=r"nothing\.pth: checkpoint not found"):
        load_checkpoint(str(tmp_path / "nothing.pth"))


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {}, "payload": Payload()}, f, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: the file carries pickled Python objects"):
        load_checkpoint(str(path))


def test_mismatched_model_gives_readable_key_diff(tmp_path):
    state = small_model().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with pytest.raises(CheckpointError) as err:
        load_model_state(other, state, "ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth: checkpoint does not match the model" in msg
    assert "1 missing: 2.bias" in msg and "1 unexpected: extra.weight" in msg and "0.weight (3, 4) vs (5, 4)" in msg


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"iteration": 1}, path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


FILL_DISK = """
import resource, signal, sys, torch
from utils.checkpoint import atomic_save
path = sys.argv[1]
atomic_save({"iteration": 1, "weights": torch.zeros(10)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
atomic_save({"iteration": 2, "weights": torch.zeros(1_000_000)}, path)
"""


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path):
    """A real failed write (RLIMIT_FSIZE gives EFBIG, as ENOSPC/EDQUOT would): one line, old file, no temp file."""
    path = tmp_path / "last.pth"
    proc = subprocess.run([sys.executable, "-c", FILL_DISK, str(path)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"utils.checkpoint.CheckpointError: {path}: no space left on device; the previous checkpoint is intact "
        f"(free space or raise the quota, then --resume)")
    assert load_checkpoint(str(path))["iteration"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]
