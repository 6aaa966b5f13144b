"""Data a run generates on first use (SYNTHETIC.GENERATE, PRETRAIN.GENERATE): a folder it cannot write is refused
before anything is generated or pretrained, and a generation killed halfway is found and generated again (real
read-only folders, real SIGKILLed processes)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import TINY_CFG, drop_root_write_override, refused, tiny_argv

from datasets.synthetic import PARTIAL
from runs.run import main

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = ("PRETRAIN.STEPS", "2", "PRETRAIN.BATCH_SIZE", "8", "PRETRAIN.EVAL_SCENES", "8",
                 "PRETRAIN.EVAL_EPISODES", "2")
SHORT = ("TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2", "TRAIN.NUM_VAL_TASKS", "1", "TEST.ENABLE", "False",
         "SOLVER.STEPS_ITER", "2")


def world_opts(root: Path, videos: int = 3, frames: int = 8) -> tuple[str, ...]:
    return ("SYNTHETIC.KIND", "world", "SYNTHETIC.GENERATE", "True", "SYNTHETIC.CLASSES", "20",
            "SYNTHETIC.VIDEOS_PER_CLASS", str(videos), "SYNTHETIC.FRAMES", str(frames), "DATA.TRACK_DIR",
            str(root / "tracks"))


def pretrain_opts(root: Path, seed: int = 0) -> tuple[str, ...]:
    return ("PRETRAIN.GENERATE", "True", *TINY_PRETRAIN, "PRETRAIN.SEED", str(seed), "VIDEO.HEAD.PRETRAINED",
            str(root / "clip_pretrained.pt"))


def run_py(argv: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """runs/run.py in a child that obeys file modes even when the tests run as root."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(REPO / "runs" / "run.py"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=drop_root_write_override if os.geteuid() == 0 else None, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A complete small world with its pretrained tiny CLIP (PRETRAIN.SEED 0), as a first run leaves them."""
    from datasets.synthetic import ensure_synthetic
    from runs.config import load_config
    from runs.pretrain_clip import ensure_pretrained

    root = tmp_path_factory.mktemp("world")
    cfg = load_config(TINY_CFG, ["DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root), *world_opts(root),
                                 *pretrain_opts(root)])
    ensure_synthetic(cfg)
    ensure_pretrained(cfg)
    return root


@pytest.fixture
def read_only(world):
    world.chmod(0o555)
    try:
        yield world
    finally:
        world.chmod(0o755)


def test_a_read_only_world_folder_is_refused_before_pretraining_starts(read_only, tmp_path):
    """The checkpoint must be rebuilt (another PRETRAIN.SEED) into a read-only folder: one line naming the folder and
    the key, exit 3, before any pretraining (it used to pretrain first and then fail with a PermissionError)."""
    ckpt = read_only / "clip_pretrained.pt"
    before = ckpt.read_bytes()
    proc = run_py(tiny_argv(read_only, tmp_path / "run", *world_opts(read_only), *pretrain_opts(read_only, seed=1)))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "pretraining the tiny CLIP" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {ckpt}: PRETRAIN.GENERATE must write VIDEO.HEAD.PRETRAINED (it was pretrained with other "
        f"settings), but its folder {read_only} is read-only for this user (make it writable, or set "
        f"VIDEO.HEAD.PRETRAINED to a file in a writable folder)")
    assert ckpt.read_bytes() == before


def test_a_read_only_folder_the_world_must_be_generated_into_is_refused(tmp_path):
    empty = tmp_path / "world"
    empty.mkdir()
    empty.chmod(0o555)
    try:
        proc = run_py(tiny_argv(empty, tmp_path / "run", *world_opts(empty), *pretrain_opts(empty)))
    finally:
        empty.chmod(0o755)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "generating the synthetic" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {empty}: SYNTHETIC.GENERATE must write the synthetic world into DATA.ANNO_DIR (no split lists "
        f"there yet), but the folder is read-only for this user (make it writable, or set DATA.ANNO_DIR and "
        f"DATA.DATA_ROOT_DIR to a writable folder)")
    assert not any(empty.iterdir()) and not (tmp_path / "run").exists()


def test_a_read_only_folder_holding_a_complete_world_and_checkpoint_still_runs(read_only, tmp_path):
    proc = run_py(tiny_argv(read_only, tmp_path / "run", *world_opts(read_only), *pretrain_opts(read_only), *SHORT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pth").is_file()


def test_a_world_generation_killed_after_its_first_list_is_found_and_generated_again(tmp_path, capsys):
    """Stopped once train_few_shot.txt is written (the val list is not yet), a generation is not written over by a
    second run; SIGKILLed there, the next run warns that it was cut short and generates the world again (it used to
    fail on the missing val list)."""
    root = tmp_path / "world"
    opts = world_opts(root, videos=10)  # val: 50 videos, about half a second to write after the train list
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first = subprocess.Popen([sys.executable, str(REPO / "runs" / "run.py"),
                              *tiny_argv(root, tmp_path / "first", *opts, *SHORT)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while not (root / "train_few_shot.txt").is_file():
            assert first.poll() is None and time.time() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)
        assert (root / PARTIAL).is_file() and not (root / "val_few_shot.txt").exists()
        line = refused(capsys, 9, tiny_argv(root, tmp_path / "meanwhile", *opts, *SHORT))
        assert line == (f"error: {root / PARTIAL}: the synthetic world is being generated there by pid {first.pid} "
                        f"(wait for that job to end, or set DATA.ANNO_DIR and DATA.DATA_ROOT_DIR to another folder)")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
    assert (root / PARTIAL).is_file() and not (root / "val_few_shot.txt").exists()

    capsys.readouterr()
    main(tiny_argv(root, tmp_path / "second", *opts, *SHORT))
    log = capsys.readouterr().out  # the console log: the run folder's log.txt starts after the data is there
    assert f"] {root}: {root / PARTIAL} says the generation there was cut short (the process was killed before it " \
           f"completed): generating it again\n" in log, log[:3000]
    assert not (root / PARTIAL).exists() and (root / "val_few_shot.txt").is_file() and (root / "meta.json").is_file()
    assert (tmp_path / "second" / "checkpoints" / "last.pth").is_file()
