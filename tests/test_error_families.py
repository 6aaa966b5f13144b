"""One-line errors (issue 18): every family of bad input reaches the user as `error: <message>` on stderr with the
family's exit code, through `main(argv)`, through DataLoader workers and through a real subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_run import REPO, refused, tiny_argv

from datasets.loader_watch import LoaderStalledError
from datasets.splits import SplitError
from datasets.tracks import TrackFileError
from datasets.video import BadVideoError
from utils.checkpoint import CheckpointError
from utils.config import ConfigError
from utils.errors import (
    ArgumentError,
    DivergedError,
    PreemptedError,
    RunFolderError,
    entry_point,
    find_user_error,
)

FAMILY_CODES = {ArgumentError: 2, ConfigError: 3, SplitError: 4, BadVideoError: 5, TrackFileError: 6,
                CheckpointError: 7, RunFolderError: 9, PreemptedError: 10, DivergedError: 11,
                LoaderStalledError: 12}


def test_each_family_has_its_own_exit_code():
    from datasets.sampling import EpisodeConfigError

    codes = {**{cls: cls.exit_code for cls in FAMILY_CODES}, EpisodeConfigError: EpisodeConfigError.exit_code}
    assert {cls: code for cls, code in codes.items() if cls in FAMILY_CODES} == FAMILY_CODES
    assert EpisodeConfigError.exit_code == 8 and len(set(codes.values())) == len(codes)


class _Raising(torch.utils.data.Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise self.error


@pytest.mark.parametrize("error, line, code", [
    (BadVideoError("/data/v1.mp4", "unreadable", "moov atom not found"), "/data/v1.mp4: unreadable video (moov atom "
                                                                          "not found)", 5),
    (TrackFileError("/tracks/v1.json: 'tracks' must be a list"), "/tracks/v1.json: 'tracks' must be a list", 6),
])
def test_errors_raised_in_dataloader_workers_unwrap_to_their_one_line(error, line, code):
    loader = torch.utils.data.DataLoader(_Raising(error), batch_size=None, num_workers=2)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "DataLoader worker process" in str(info.value)  # torch re-wrapped it with the worker's traceback
    assert find_user_error(info.value) == (line, code)


def test_entry_point_prints_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    @entry_point
    def tool(argv):
        raise ConfigError(f"x.yaml: unknown config key {argv[0]}")

    with pytest.raises(SystemExit) as info:
        tool(["TRAIN.WAYS"])
    assert info.value.code == 3 and capsys.readouterr().err == "error: x.yaml: unknown config key TRAIN.WAYS\n"
    with pytest.raises(ConfigError):
        tool(["TRAIN.WAYS", "--debug"])
    monkeypatch.setenv("FSAR_DEBUG", "1")
    with pytest.raises(ConfigError):
        tool(["TRAIN.WAYS"])


def test_unexpected_exceptions_keep_their_traceback():
    @entry_point
    def tool(argv):
        raise ZeroDivisionError("a bug, not bad input")

    with pytest.raises(ZeroDivisionError):
        tool([])


# --- through runs/run.py --------------------------------------------------------------------------------------------


def _copy(root, tmp_path):
    dst = tmp_path / "bench"
    shutil.copytree(root, dst)
    return dst


def _spoil_videos(root, split: str) -> None:
    """Overwrite every video of a split with bytes no decoder reads (found only when an episode decodes it)."""
    from datasets.splits import load_split

    for entry in load_split(str(root), split).videos:
        with open(entry.video_path(str(root)), "wb") as f:
            f.write(b"not a video" * 10)


def _run_main(argv, capsys, code: int) -> tuple[int, str]:
    """(exit code, the one error line with its newline) of a run that must be refused with `code`."""
    return code, refused(capsys, code, argv) + "\n"


def test_config_family_through_main(synthetic_root, tmp_path, capsys):
    code, err = _run_main(tiny_argv(synthetic_root, tmp_path / "r", "TRAIN.WAYS", "5"), capsys, 3)
    assert (code, err) == (3, "error: command line: unknown config key TRAIN.WAYS (did you mean TRAIN.WAY?)\n")


def test_split_family_through_main(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path)
    os.remove(root / "test_class_names.txt")
    code, err = _run_main(tiny_argv(root, tmp_path / "r"), capsys, 4)
    assert code == 4
    assert err == (f"error: {root / 'test_class_names.txt'}: class-name file not found; produce it with `python "
                   f"runs/prepare_splits.py --dataset <benchmark> --out {root}` (or write one name a line)\n")
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before training


def test_video_family_through_main_with_two_loader_workers(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path)
    _spoil_videos(root, "train")
    code, err = _run_main(tiny_argv(root, tmp_path / "r", "DATA.NUM_WORKERS", "2"), capsys, 5)
    assert code == 5 and err.count("\n") == 1
    assert err.startswith(f"error: {root}/") and ": unreadable video (" in err and "train episode 0" in err


def test_track_family_through_main(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path)
    for path in (root / "tracks").rglob("*.json"):
        path.write_text('{"video": 1}')
    code, err = _run_main(tiny_argv(root, tmp_path / "r", "DATA.TRACK_DIR", str(root / "tracks"),
                                    "DATA.NUM_WORKERS", "2"), capsys, 6)
    assert code == 6 and err.count("\n") == 1
    assert err.startswith(f"error: {root / 'tracks'}/") and "'video' is 1, expected" in err


def test_checkpoint_family_through_main(synthetic_root, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:1500])  # torn, as by a crash mid-copy
    code, err = _run_main(tiny_argv(synthetic_root, tmp_path / "r", "TRAIN.ENABLE", "False",
                                    "TEST.CHECKPOINT_FILE_PATH", str(bad)), capsys, 7)
    assert code == 7 and err.startswith(f"error: {bad}: corrupt or truncated checkpoint (") and err.count("\n") == 1


def test_episode_family_through_main(synthetic_root, tmp_path, capsys):
    code, err = _run_main(tiny_argv(synthetic_root, tmp_path / "r", "TRAIN.WAY", "6"), capsys, 8)
    assert code == 8 and err.count("\n") == 1
    assert err.startswith("error: ") and "WAY 6 is larger than the 5 classes" in err


def test_run_folder_family_through_main(synthetic_root, tmp_path, capsys):
    out = tmp_path / "r"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pth").write_bytes(b"")
    code, err = _run_main(tiny_argv(synthetic_root, out), capsys, 9)
    assert (code, err) == (9, f"error: {out}: OUTPUT_DIR already holds a run (checkpoints/last.pth) (pass --resume "
                              f"to continue it or set OUTPUT_DIR to a new folder)\n")


def test_a_bad_video_in_a_worker_is_one_line_from_a_real_process(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path)
    _spoil_videos(root, "train")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "runs" / "run.py"),
                           *tiny_argv(root, tmp_path / "r", "DATA.NUM_WORKERS", "2")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 5, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    assert errors[0].startswith(f"error: {root}/") and ": unreadable video (" in errors[0]
