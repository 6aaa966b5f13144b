"""The run folder: flags anywhere, check before write, resume compares configs, one job per folder (a real lock
between real processes), torn metrics, a read-only folder."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import TINY_CFG, drop_root_write_override, refused, tiny_argv

from runs.run import Args, main, parse_args
from utils.checkpoint import load_checkpoint
from utils.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHORT = ("TRAIN.NUM_TRAIN_TASKS", "4", "TEST.ENABLE", "False")


def run_py(argv: list[str], preexec_fn=None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "runs" / "run.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def test_flags_stand_anywhere_among_the_pairs():
    args = parse_args(["OUTPUT_DIR", "o", "--resume", "TRAIN.WAY", "3", "--cfg", "x.yaml", "--allow-change=A,B",
                       "SOLVER.BASE_LR", "-1e-3", "--allow-change", "C"])
    assert args == Args("x.yaml", True, ["A", "B", "C"], ["OUTPUT_DIR", "o", "TRAIN.WAY", "3", "SOLVER.BASE_LR",
                                                          "-1e-3"])


def test_bad_command_lines_name_the_token_and_write_nothing(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, 3, [*tiny_argv(synthetic_root, out), "TRAIN.NUM_TRAIN_TASKS", "--resume"])
    assert line == "error: command line: TRAIN.NUM_TRAIN_TASKS has no value (overrides are KEY VALUE pairs)"
    line = refused(capsys, 3, ["--cfg", TINY_CFG, "OUTPUT_DIR", "TRAIN.WAY", "3"])
    assert line == "error: command line: OUTPUT_DIR has no value (overrides are KEY VALUE pairs)"
    line = refused(capsys, 2, [*tiny_argv(synthetic_root, out), "--resmue"])
    assert line == ("error: command line: unknown flag --resmue (flags: --cfg, --resume, --allow-change, --debug; "
                    "config overrides are KEY VALUE pairs without dashes)")
    line = refused(capsys, 2, ["OUTPUT_DIR", str(out)])
    assert line.startswith("error: command line: --cfg FILE is required (usage: python runs/run.py --cfg FILE")
    assert not out.exists()


def test_engine_config_checks_are_config_errors_naming_the_key(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, 3, tiny_argv(synthetic_root, out, "TRAIN.VAL_FRE_ITER", "3"))
    assert line == ("error: TRAIN.VAL_FRE_ITER: 3 is not a multiple of TRAIN.BATCH_SIZE_PER_TASK (2) (checkpoints "
                    "are taken between optimizer steps; choose a multiple)")
    assert not out.exists()


def test_changed_config_resume_is_refused_and_the_run_is_untouched(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(tiny_argv(synthetic_root, out, *SHORT))
    last = out / "checkpoints" / "last.pth"
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pth")}

    line = refused(capsys, 9, [*tiny_argv(synthetic_root, out, *SHORT, "TRAIN.WAY", "3"), "--resume"])
    assert line == (f"error: {last}: --resume with a changed config: TRAIN.WAY 5 -> 3 (resume with the checkpoint's "
                    f"values, start a new OUTPUT_DIR, or accept with --allow-change TRAIN.WAY)")
    line = refused(capsys, 2, ["--resume", *tiny_argv(synthetic_root, out, *SHORT, "SOLVER.BASE_LR", "0.01"),
                               "--allow-change", "SOLVER.BASE_LR"])
    assert line == (f"error: --allow-change: SOLVER.BASE_LR cannot change on resume: the optimizer and learning-rate "
                    f"schedule are restored from {last} (start a new OUTPUT_DIR to train with it)")
    line = refused(capsys, 2, ["--resume", *tiny_argv(synthetic_root, out, *SHORT), "--allow-change", "TRAIN.WAYS"])
    assert line == "error: --allow-change: unknown config key TRAIN.WAYS"
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "run.lock").exists()

    # A run killed during a metrics append leaves a torn last line: the resume drops it and goes on.
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"iteration": 5, "train/lo')
    main(["--resume", *tiny_argv(synthetic_root, out, "TRAIN.NUM_TRAIN_TASKS", "6", "TEST.ENABLE", "False")])
    assert [r["iteration"] for r in read_metrics(str(out / "metrics.jsonl"))] == [2, 4, 4, 6, 6]
    assert "dropping a torn last line" in (out / "log.txt").read_text()

    # Only best.pth left: the refusal says how to go on from it.
    best = out / "checkpoints" / "best.pth"
    last.unlink()
    line = refused(capsys, 9, [*tiny_argv(synthetic_root, out, *SHORT), "--resume"])
    assert line == (f"error: {last}: no checkpoint to resume from, but {best} is there (to continue from it: cp "
                    f"{best} {last}, then --resume; training goes on from best's iteration)")


def test_lock_of_another_host_is_refused_with_how_to_remove_it(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / "run.lock"
    lock.write_text(json.dumps({"host": "gpu-node-17", "pid": 4242, "start": 0, "command": "run.py --cfg a.yaml"}))
    line = refused(capsys, 9, tiny_argv(synthetic_root, out, *SHORT))
    assert re.fullmatch(rf"error: {re.escape(str(lock))}: run folder locked by pid 4242 on gpu-node-17 since "
                        rf"[-0-9: ]+ \(run.py --cfg a.yaml\); that host cannot be checked from "
                        rf"{re.escape(socket.gethostname())} \(if that job is gone, remove the lock: rm "
                        rf"{re.escape(str(lock))}\)", line), line
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


@pytest.mark.slow
def test_second_job_is_refused_while_the_first_runs_and_a_killed_holders_lock_is_taken_over(
        synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    opts = ("TRAIN.VAL_FRE_ITER", "40", "TRAIN.CHECKPOINT_PERIOD", "2", "TEST.ENABLE", "False")
    first = run_py(tiny_argv(synthetic_root, out, *opts, "TRAIN.NUM_TRAIN_TASKS", "40"))
    last = out / "checkpoints" / "last.pth"
    deadline = time.time() + 240
    while not last.is_file():
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.05)

    line = refused(capsys, 9, ["--resume", *tiny_argv(synthetic_root, out, *opts, "TRAIN.NUM_TRAIN_TASKS", "40")])
    assert re.fullmatch(rf"error: {re.escape(str(out / 'run.lock'))}: run folder in use by pid {first.pid} on "
                        rf"{re.escape(socket.gethostname())} since [-0-9: ]+ \(run\.py --cfg .*\) \(wait for that "
                        rf"job to end or use another OUTPUT_DIR\)", line), line

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert json.loads((out / "run.lock").read_text())["pid"] == first.pid  # left behind by the killed holder
    at = load_checkpoint(str(last))["iteration"]
    resumed = subprocess.run([sys.executable, str(REPO / "runs" / "run.py"), "--resume",
                              *tiny_argv(synthetic_root, out, *opts, "TRAIN.NUM_TRAIN_TASKS", str(at + 2))],
                             cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Warnings go to the console log (stdout), as every log line of the run.
    assert f"taking over a stale lock of pid {first.pid} on {socket.gethostname()}" in resumed.stdout
    assert not (out / "run.lock").exists()


def test_read_only_output_dir_is_one_line(synthetic_root, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    out = parent / "run"
    try:
        proc = run_py(tiny_argv(synthetic_root, out, *SHORT),
                      preexec_fn=drop_root_write_override if os.geteuid() == 0 else None)
        assert proc.wait(timeout=120) == 9
        err = proc.stderr.read().decode()
    finally:
        parent.chmod(0o755)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: {out}: OUTPUT_DIR cannot be created: {parent} is read-only for "
                                            f"this user (choose a writable OUTPUT_DIR or fix its permissions)")
    assert not out.exists()


def test_lock_of_an_earlier_attempt_of_the_same_slurm_job_is_taken_over_on_any_host(tmp_path, monkeypatch):
    """A job killed on node A and requeued on node B keeps its SLURM_JOB_ID; its restart count grows."""
    from utils.run_lock import RunLock

    lock_file = tmp_path / "run.lock"
    old = {"host": "gpu-node-17", "pid": 4242, "start": 0, "command": "run.py", "slurm_job": "981",
           "slurm_restart": 0}
    lock_file.write_text(json.dumps(old))
    monkeypatch.setenv("SLURM_JOB_ID", "981")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(Exception, match="that host cannot be checked"):
        RunLock(str(tmp_path)).acquire()  # the same attempt count: not provably dead
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with RunLock(str(tmp_path), command="run.py --resume"):
        record = json.loads(lock_file.read_text())
        assert record["pid"] == os.getpid() and record["slurm_restart"] == 1
        with pytest.raises(Exception, match=rf"run folder in use by pid {os.getpid()}"):
            RunLock(str(tmp_path)).acquire()  # a second holder in the same folder, even in this process
    assert not lock_file.exists()


def test_a_job_that_passed_the_folder_check_holds_the_folder_until_it_ends(synthetic_root, tmp_path, capsys):
    """Run B checks the new folder, then spends seconds generating its data; run A, started meanwhile on the same
    folder, is refused (before the fix A ran, and B then overwrote A's config.yaml: both exited 0)."""
    out, generated = tmp_path / "run", tmp_path / "generated"
    b = run_py(tiny_argv(generated, out, *SHORT, "SYNTHETIC.GENERATE", "True", "SYNTHETIC.CLASSES", "15",
                         "SYNTHETIC.VIDEOS_PER_CLASS", "6", "SYNTHETIC.FRAMES", "24"))
    try:
        deadline = time.time() + 120
        while not generated.is_dir():  # B is past its folder check and generating its data
            assert b.poll() is None and time.time() < deadline, b.stderr.read().decode()[-2000:]
            time.sleep(0.005)
        b.send_signal(signal.SIGSTOP)
        line = refused(capsys, 9, tiny_argv(synthetic_root, out, *SHORT))
        assert re.fullmatch(rf"error: {re.escape(str(out / 'run.lock'))}: run folder in use by pid {b.pid} on .*",
                            line), line
    finally:
        b.send_signal(signal.SIGCONT)
    assert b.wait(timeout=240) == 0, b.stderr.read().decode()[-2000:]
    assert str(generated) in (out / "config.yaml").read_text()
    assert (out / "log.txt").read_text().count("run in ") == 1  # one run, one header


def test_a_held_lock_whose_record_names_a_dead_process_never_names_it(tmp_path):
    """Between taking a stale lock and writing its own record, a new holder's file still names the dead one."""
    from utils.errors import RunFolderError
    from utils.run_lock import RunLock

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, timeout=30).stdout)
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "start": time.time() - 10,
                                "command": "run.py --cfg a.yaml"}))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as info:
            RunLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert str(info.value) == (f"{lock}: run folder in use by a job that is starting now (no record written yet) "
                               f"(wait for that job to end or use another OUTPUT_DIR)")


def test_a_start_that_failed_before_its_first_checkpoint_blocks_no_later_start(synthetic_root, tmp_path, capsys):
    """Issue 30: a start refused when its model was built left config.yaml; starting again said "pass --resume" and
    --resume said "start without --resume". Now the second is true, and a real run still is never overwritten."""
    out = tmp_path / "run"
    line = refused(capsys, 3, tiny_argv(synthetic_root, out, *SHORT, "DATA.MEAN", "[0.5, 0.5, 0.5]"))
    assert line.startswith("error: DATA.MEAN [0.5, 0.5, 0.5] differs from the FSAR-Tiny-ViT backbone's")
    left = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(left) == ["config.yaml", "log.txt"]

    last = out / "checkpoints" / "last.pth"
    line = refused(capsys, 9, ["--resume", *tiny_argv(synthetic_root, out, *SHORT)])
    assert line == (f"error: {last}: no checkpoint to resume from (start without --resume, or set OUTPUT_DIR to the "
                    f"run to continue)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == left  # a refused resume writes nothing

    main(tiny_argv(synthetic_root, out, *SHORT))  # as the refusal says
    assert f"{out}: a start that ended before its first checkpoint left config.yaml; starting afresh" in \
        capsys.readouterr().out
    assert (out / "config.yaml").read_bytes() != left["config.yaml"] and last.is_file()  # the new run's config
    line = refused(capsys, 9, tiny_argv(synthetic_root, out, *SHORT))
    assert line == (f"error: {out}: OUTPUT_DIR already holds a run (checkpoints/last.pth, checkpoints/best.pth) (pass "
                    f"--resume to continue it or set OUTPUT_DIR to a new folder)")


def test_a_config_file_or_a_key_given_twice_on_the_command_line_is_refused(synthetic_root, tmp_path, capsys):
    """The later one used to win silently (a YAML file's duplicate key is refused)."""
    out = tmp_path / "run"
    line = refused(capsys, 3, [*tiny_argv(synthetic_root, out, *SHORT), "--cfg", "other.yaml"])
    assert line == (f"error: command line: --cfg given twice ({TINY_CFG}, then other.yaml) (give one config file; a "
                    f"config builds on another with _BASE_)")
    line = refused(capsys, 3, tiny_argv(synthetic_root, out, "TRAIN.WAY", "5", *SHORT, "TRAIN.WAY", "3"))
    assert line == "error: command line: TRAIN.WAY given twice (5, then 3) (give each key once)"
    assert not out.exists()
