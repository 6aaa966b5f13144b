"""Fault injection: SIGKILL mid-run and mid-checkpoint, exactly-once distributed evaluation."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_argv

from runs.run import main
from runs.train_net_few_shot import train_episode_indices
from utils import distributed as du
from utils.checkpoint import load_checkpoint
from utils.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run_py(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "runs" / "run.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(synthetic_root, tmp_path):
    """Bit-exact on CPU: same weights and same metrics as a run that was never killed."""
    opts = ("TRAIN.NUM_TRAIN_TASKS", "16", "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.VAL_FRE_ITER", "8",
            "TEST.ENABLE", "False")
    killed = tmp_path / "killed"
    proc = run_py(tiny_argv(synthetic_root, killed, *opts))
    last = killed / "checkpoints" / "last.pth"

    def past_first_checkpoint():
        return last.is_file() and load_checkpoint(str(last))["iteration"] >= 4

    wait_for(past_first_checkpoint, 240, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(str(last))["iteration"]
    assert 4 <= killed_at < 16
    resumed = run_py(["--resume", *tiny_argv(synthetic_root, killed, *opts)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]

    main(tiny_argv(synthetic_root, tmp_path / "whole", *opts))
    a = load_checkpoint(str(tmp_path / "whole" / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(last))
    assert a["iteration"] == b["iteration"] == 16
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    after = [r for r in read_metrics(str(killed / "metrics.jsonl")) if r["iteration"] > killed_at]
    assert after and after == [r for r in read_metrics(str(tmp_path / "whole" / "metrics.jsonl"))
                               if r["iteration"] > killed_at]


WRITER = """
import sys, torch
from utils.checkpoint import atomic_save
path = sys.argv[1]
i = 0
while True:
    i += 1
    atomic_save({"iteration": i, "weights": torch.full((2_000_000,), float(i))}, path)
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_previous_loadable(tmp_path):
    path = tmp_path / "last.pth"
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO)
        time.sleep(delay)
        deadline = time.time() + 60
        while not path.exists():
            assert time.time() < deadline and proc.poll() is None, "the writer never wrote its first checkpoint"
            time.sleep(0.02)
        time.sleep(delay / 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state = load_checkpoint(str(path))
        assert torch.all(state["weights"] == float(state["iteration"]))


# The real run, killed by a real SIGKILL at the one point a timer cannot hit reliably: `last.pth` of the final,
# improving validation is written and `best.pth` is not yet.
KILL_BEFORE_BEST = """
import os, signal, sys
from runs import run
from utils.checkpoint import Checkpointer
save = Checkpointer.save
def save_or_die(self, name, **state):
    if name == "best" and state["iteration"] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, name, **state)
Checkpointer.save = save_or_die
run.main(sys.argv[2:])
"""


@pytest.mark.slow
def test_sigkill_between_last_and_best_then_resume_tests_the_best_that_results_report(synthetic_root, tmp_path):
    out = tmp_path / "run"
    argv = tiny_argv(synthetic_root, out, "RANDOM_SEED", "1")  # validation at 4 and 8; 8 improves on 4
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_BEST, "8", *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=240, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    best = out / "checkpoints" / "best.pth"
    assert load_checkpoint(str(out / "checkpoints" / "last.pth"))["iteration"] == 8
    assert load_checkpoint(str(best))["iteration"] == 4  # the kill's window: best.pth is the older one

    resumed = run_py(["--resume", *argv])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    results = json.loads((out / "results.json").read_text())
    vals = [r["val/accuracy"] for r in read_metrics(str(out / "metrics.jsonl")) if "val/accuracy" in r]
    assert results["checkpoint"] == str(best) and results["best_val_accuracy"] == max(vals) > vals[0]
    tested = load_checkpoint(str(best))
    assert tested["iteration"] == 8 and tested["extra"]["best_acc"] == results["best_val_accuracy"]


def test_training_episodes_differ_across_ranks(monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(du, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(du, "get_world_size", lambda: 2)
        seen.append(list(train_episode_indices(3, 7)))
    assert seen == [[6, 8, 10, 12], [7, 9, 11, 13]]
    assert not set(seen[0]) & set(seen[1])


@pytest.mark.slow
def test_two_process_training_writes_only_on_rank_zero(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    result = main(tiny_argv(synthetic_root, out, "NUM_GPUS", "2", "TRAIN.NUM_TRAIN_TASKS", "4",
                            "TRAIN.NUM_TEST_TASKS", "5"))
    assert result["episodes"] == 5 and len(result["episode_accuracies"]) == 5
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoints", "config.yaml", "curves.png", "log.txt", "metrics.jsonl", "results.json",
                     "tensorboard"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pth", "last.pth"]
    assert "rank 1" not in (out / "log.txt").read_text()
