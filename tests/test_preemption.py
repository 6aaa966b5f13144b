"""Preemption: SIGTERM/SIGUSR1/SIGINT stop training at an optimizer-step boundary, save `last.pth`, exit 10, leave no
process behind, and `--resume` continues bit-exactly (real subprocesses and real signals)."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from tiny_run import tiny_argv

from runs.run import main
from utils.checkpoint import load_checkpoint
from utils.errors import PreemptedError
from utils.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run_py(argv: list[str], preexec_fn=None) -> subprocess.Popen:
    """runs/run.py in its own session, as a cluster or a terminal would start it (signals can reach the group)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "runs" / "run.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=preexec_fn)


def wait_for_training(out: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the first train/loss record is in metrics.jsonl (the loop and its loader workers are running)."""
    metrics = out / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.is_file() and metrics.read_text().strip()):
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for training to start")
        time.sleep(0.05)


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def error_line(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    code = proc.wait(timeout=timeout)
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err[-3000:]
    return code, err.strip().splitlines()[-1]


OPTS = ("TEST.ENABLE", "False", "DATA.NUM_WORKERS", "2")  # tiny.yaml: 8 iterations, validation at 4 and 8


@pytest.mark.slow
def test_sigterm_saves_exits_10_leaves_no_orphans_and_resume_is_bit_exact(synthetic_root, tmp_path):
    stopped = tmp_path / "stopped"
    proc = run_py(tiny_argv(synthetic_root, stopped, *OPTS))
    wait_for_training(stopped, proc)
    children = descendants(proc)
    assert children, "expected DataLoader worker processes"
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM or a container runtime does: every process of the job
    code, line = error_line(proc)
    last = stopped / "checkpoints" / "last.pth"
    at = load_checkpoint(str(last))["iteration"]
    assert code == PreemptedError.exit_code == 10
    assert line == (f"error: {last}: training stopped by SIGTERM at iteration {at} of 8; the state is saved (run "
                    f"the same command with --resume to continue)")
    assert at % 2 == 0 and 2 <= at < 8  # an optimizer-step boundary (BATCH_SIZE_PER_TASK 2)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes of the stopped run survive: {alive}"
    assert not (stopped / "run.lock").exists()

    resumed = run_py([*tiny_argv(synthetic_root, stopped, *OPTS), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]

    whole = tmp_path / "whole"
    main(tiny_argv(synthetic_root, whole, *OPTS))
    a = load_checkpoint(str(whole / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(last))
    assert a["iteration"] == b["iteration"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert read_metrics(str(whole / "metrics.jsonl")) == read_metrics(str(stopped / "metrics.jsonl"))


@pytest.mark.slow
def test_sigusr1_to_a_two_rank_spawned_run_stops_every_rank_with_one_line(synthetic_root, tmp_path):
    """The parent forwards SIGUSR1; the ranks agree at a boundary, rank 0 saves, the parent prints one line."""
    out = tmp_path / "ddp"
    proc = run_py(tiny_argv(synthetic_root, out, "NUM_GPUS", "2", "TRAIN.NUM_TRAIN_TASKS", "40",
                            "TRAIN.VAL_FRE_ITER", "40", "TEST.ENABLE", "False"))
    wait_for_training(out, proc)
    children = descendants(proc)
    proc.send_signal(signal.SIGUSR1)  # the parent only
    code, line = error_line(proc)
    last = out / "checkpoints" / "last.pth"
    at = load_checkpoint(str(last))["iteration"]
    assert code == 10
    assert re.fullmatch(rf"error: {re.escape(str(last))}: training stopped by (SIGUSR1|a signal on another rank) "
                        rf"at iteration {at} of 40; the state is saved \(run the same command with --resume to "
                        rf"continue\)", line), line
    assert at % 2 == 0 and at < 40
    assert not psutil.wait_procs(children, timeout=10)[1]


@pytest.mark.slow
def test_second_sigint_aborts_without_waiting_for_the_boundary(synthetic_root, tmp_path):
    out = tmp_path / "run"
    proc = run_py(tiny_argv(synthetic_root, out, "TRAIN.NUM_TRAIN_TASKS", "40", "TRAIN.BATCH_SIZE_PER_TASK", "8",
                            "TRAIN.VAL_FRE_ITER", "40", "LOG_PERIOD", "1", "TEST.ENABLE", "False"))
    wait_for_training(out, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole foreground group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert code in (-signal.SIGINT, 130), err[-2000:]
    assert "KeyboardInterrupt" in err and "received SIGINT" in (out / "log.txt").read_text()
    assert not (out / "checkpoints" / "last.pth").exists()  # aborted before the first boundary (iteration 8)
    assert not (out / "run.lock").exists()


@pytest.mark.slow
def test_an_error_in_a_spawned_rank_reaches_the_user_as_its_one_line():
    """torch re-raises a rank's exception as ProcessRaisedException holding the child's traceback as text."""
    from runs.config import load_config
    from utils import distributed as du
    from utils.config import ConfigError
    from utils.errors import find_user_error

    missing = "/nonexistent/run.yaml"
    with pytest.raises(ConfigError) as direct:
        load_config(missing)
    with pytest.raises(Exception) as spawned:
        du.launch(load_config, 2, args=(missing,))
    assert type(spawned.value).__name__ == "ProcessRaisedException"
    assert find_user_error(spawned.value) == (str(direct.value), ConfigError.exit_code)


@pytest.mark.slow
def test_sigkill_then_resume_at_once_finds_the_folder_free_while_the_loader_workers_still_live(
        synthetic_root, tmp_path, capsys):
    """What a requeued SLURM attempt on the same node does: the workers of the killed run live on for seconds (their
    watchdog), but the lock died with its holder, and no refusal names a dead process."""
    out = tmp_path / "run"
    opts = ("TRAIN.VAL_FRE_ITER", "40", "TRAIN.CHECKPOINT_PERIOD", "2", "TEST.ENABLE", "False", "DATA.NUM_WORKERS",
            "2")
    proc = run_py(tiny_argv(synthetic_root, out, *opts, "TRAIN.NUM_TRAIN_TASKS", "40"))
    last = out / "checkpoints" / "last.pth"
    wait_for_training(out, proc)
    deadline = time.time() + 120
    while not last.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    workers = descendants(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert any(w.is_running() for w in workers), "expected the killed run's loader workers to outlive it"
        at = load_checkpoint(str(last))["iteration"]
        capsys.readouterr()
        main(["--resume", *tiny_argv(synthetic_root, out, *opts, "TRAIN.NUM_TRAIN_TASKS", str(at + 2))])
        assert f"taking over a stale lock of pid {proc.pid}" in capsys.readouterr().out  # the console log
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
    assert load_checkpoint(str(last))["iteration"] == at + 2 and not (out / "run.lock").exists()
