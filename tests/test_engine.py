"""The episodic engine end to end: train, validate, select best, test, resume, and world sizes 1 vs 2."""
import json

import pytest
import torch
from tiny_run import tiny_argv

from runs.run import main
from utils.checkpoint import load_checkpoint
from utils.logger import read_metrics


def test_train_and_test_end_to_end_writes_the_run_folder(synthetic_root, tmp_path):
    out = tmp_path / "run"
    result = main(tiny_argv(synthetic_root, out))
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "results.json", "curves.png", "checkpoints/last.pth",
                 "checkpoints/best.pth"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "results.json").read_text())
    assert saved["episodes"] == 6 and saved["split"] == "test" and 0 <= saved["accuracy"] <= 100
    assert saved["accuracy"] == pytest.approx(result["accuracy"]) and saved["ci95"] >= 0
    assert saved["checkpoint"].endswith("best.pth")
    assert set(saved["per_class"]) <= set((synthetic_root / "test_class_names.txt").read_text().splitlines())
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r["iteration"] for r in records if "val/accuracy" in r] == [4, 8]
    assert load_checkpoint(str(out / "checkpoints" / "last.pth"))["iteration"] == 8


def last_stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_existing_run_folder_is_refused_without_resume(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(tiny_argv(synthetic_root, out, "TRAIN.NUM_TRAIN_TASKS", "4", "TRAIN.NUM_TEST_TASKS", "1"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_argv(synthetic_root, out))
    assert exit_info.value.code == 9
    assert last_stderr_line(capsys) == (
        f"error: {out}: OUTPUT_DIR already holds a run (checkpoints/last.pth, checkpoints/best.pth, results.json) "
        f"(pass --resume to continue it or set OUTPUT_DIR to a new folder)")
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", *tiny_argv(synthetic_root, fresh)])
    assert exit_info.value.code == 9
    assert last_stderr_line(capsys) == (
        f"error: {fresh}/checkpoints/last.pth: no checkpoint to resume from (start without --resume, or set "
        f"OUTPUT_DIR to the run to continue)")
    assert not fresh.exists()


def test_resume_continues_identically(synthetic_root, tmp_path):
    """Stopping after 4 iterations and resuming to 8 gives the weights and metrics of one 8-iteration run."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    main(tiny_argv(synthetic_root, whole, "TEST.ENABLE", "False"))
    main(tiny_argv(synthetic_root, split, "TEST.ENABLE", "False", "TRAIN.NUM_TRAIN_TASKS", "4"))
    main(["--resume", *tiny_argv(synthetic_root, split, "TEST.ENABLE", "False")])
    a = load_checkpoint(str(whole / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(split / "checkpoints" / "last.pth"))
    assert a["iteration"] == b["iteration"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert read_metrics(str(whole / "metrics.jsonl")) == read_metrics(str(split / "metrics.jsonl"))


@pytest.mark.slow
def test_test_accuracy_identical_for_world_size_1_and_2(synthetic_root, tmp_path):
    """Test-only runs of one checkpoint: 7 episodes (uneven over 2 ranks) give the same per-episode results."""
    trained = tmp_path / "trained"
    main(tiny_argv(synthetic_root, trained, "TRAIN.NUM_TRAIN_TASKS", "4", "TEST.ENABLE", "False"))
    ckpt = str(trained / "checkpoints" / "last.pth")
    common = ("TRAIN.ENABLE", "False", "TEST.CHECKPOINT_FILE_PATH", ckpt, "TRAIN.NUM_TEST_TASKS", "7")
    one = main(tiny_argv(synthetic_root, tmp_path / "one", *common))
    two = main(tiny_argv(synthetic_root, tmp_path / "two", *common, "NUM_GPUS", "2"))
    assert two["episodes"] == 7 and two["episode_accuracies"] == one["episode_accuracies"]
    assert two["accuracy"] == one["accuracy"] and two["ci95"] == one["ci95"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.yaml", "log.txt", "results.json"]
    assert "rank 1" not in (tmp_path / "two" / "log.txt").read_text()
