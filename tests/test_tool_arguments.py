"""Tools refuse wrong arguments (issue 18): missing inputs, empty selections, out-of-range indices and malformed
shapes exit non-zero with one line, never a successful run over nothing."""
from __future__ import annotations

import json

import pytest

from runs import benchmark, make_synthetic, prepare_splits, summarize, visualize


def _refused(capsys, main, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_visualize_refuses_episodes_no_run_evaluates(capsys, tmp_path):
    code, err = _refused(capsys, visualize.main, ["episode", "--index", "-3", "--out", str(tmp_path / "e.png")])
    assert (code, err) == (2, "error: --index must be >= 0 (episodes are numbered from 0), got -3\n")
    code, err = _refused(capsys, visualize.main, ["episode", "--index", "5", "--out", str(tmp_path / "e.png"),
                                                  "TRAIN.NUM_TEST_TASKS", "5"])
    assert (code, err) == (2, "error: --index 5: runs with this config evaluate test episodes 0..4 "
                              "(TRAIN.NUM_TEST_TASKS 5)\n")
    code, err = _refused(capsys, visualize.main, ["curves", "--run", str(tmp_path / "nowhere")])
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nowhere'}: --run holds no metrics.jsonl")


def test_benchmark_refuses_a_malformed_shape(capsys):
    code, err = _refused(capsys, benchmark.main, ["otam", "--shape", "25,5"])
    assert code == 2 and "'25,5' must be 4 positive integers" in err
    code, err = _refused(capsys, benchmark.main, ["otam", "--repeats", "0"])
    assert code == 2 and "must be a positive integer, got '0'" in err


def test_make_synthetic_and_prepare_splits_refuse_bad_arguments(capsys, tmp_path):
    code, err = _refused(capsys, make_synthetic.main, ["--out", str(tmp_path / "s"), "--classes", "0"])
    assert code == 2 and "must be a positive integer" in err and not (tmp_path / "s").exists()
    code, err = _refused(capsys, prepare_splits.main, ["--dataset", "ucf101", "--out", str(tmp_path / "o"),
                                                       "--source", str(tmp_path / "absent")])
    assert (code, err) == (2, f"error: {tmp_path / 'absent'}: --source folder not found\n")


def _result(folder, accuracy: float) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"accuracy": accuracy, "ci95": 1.0, "episodes": 10,
                                                     "config": "TRAIN:\n  SHOT: 1\n"}))


def test_summarize_skips_and_lists_unreadable_results(capsys, tmp_path):
    _result(tmp_path / "a", 50.0)
    _result(tmp_path / "b", 60.0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text('{"accuracy": 5')  # half written
    table = summarize.main([str(tmp_path)])
    assert sorted(table["run"]) == ["a", "b"]
    err = capsys.readouterr().err
    assert f"skipped: {tmp_path / 'c' / 'results.json'}: invalid JSON" in err


def test_summarize_refuses_a_folder_without_readable_results(capsys, tmp_path):
    code, err = _refused(capsys, summarize.main, [str(tmp_path / "none")])
    assert (code, err) == (2, f"error: {tmp_path / 'none'}: runs folder not found\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{")
    code, err = _refused(capsys, summarize.main, [str(tmp_path)])
    assert code == 2 and err.endswith(f"error: {tmp_path}: no readable results.json below it (1 unreadable, listed "
                                      f"above)\n")


def test_benchmark_refuses_absurd_shapes_and_data_settings_naming_the_argument(capsys, tmp_path):
    """`otam --shape 100000,100000,64,64` would allocate 150 GiB before failing; negative seconds and zero classes
    used to reach the video writer (whose error named an internal temporary folder)."""
    code, err = _refused(capsys, benchmark.main, ["otam", "--shape", "100000,100000,64,64"])
    assert code == 2 and err.splitlines()[-1].endswith(
        "otam: error: argument --shape: '100000,100000,64,64' has 40960000000000 cells, more than "
        "the 67108864 this benchmark allows (256 MiB per float32 tensor; it holds several): use a smaller shape")
    code, err = _refused(capsys, benchmark.main, ["data", "--seconds", "-5", "-1", "--root", str(tmp_path / "r")])
    assert code == 2 and err.splitlines()[-1].endswith("argument --seconds: must be a positive number, got '-5'")
    code, err = _refused(capsys, benchmark.main, ["data", "--seconds", "9", "2", "--root", str(tmp_path / "r")])
    assert (code, err) == (2, "error: --seconds 9 2: the shorter length comes first (--seconds MIN MAX)\n")
    code, err = _refused(capsys, benchmark.main, ["data", "--classes", "0", "--root", str(tmp_path / "r")])
    assert code == 2 and err.splitlines()[-1].endswith("argument --classes: must be a positive integer, got '0'")
    assert not (tmp_path / "r").exists()
