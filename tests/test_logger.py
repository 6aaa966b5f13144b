"""Logging and metrics writers."""
import logging

import pytest

from utils.errors import RunFolderError
from utils.logger import MetricsWriter, read_metrics, setup_logging


def test_log_file_and_metrics_jsonl_and_tensorboard(tmp_path):
    logger = setup_logging(str(tmp_path))
    logger.getChild("x").info("hello %d", 3)
    for handler in logger.handlers:
        handler.flush()
    assert "hello 3" in (tmp_path / "log.txt").read_text()
    writer = MetricsWriter(str(tmp_path))
    writer.write({"train/loss": 1.5}, 10)
    writer.write({"train/loss": float("nan")}, 20)
    writer.write({"val/accuracy": 50.0}, 30)
    writer.close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert records[0] == {"iteration": 10, "train/loss": 1.5} and records[1]["train/loss"] is None
    assert any((tmp_path / "tensorboard").iterdir())
    writer.truncate_after(20)
    assert [r["iteration"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [10, 20]
    logging.getLogger("fsar").handlers.clear()


def test_torn_last_metrics_line_is_dropped_and_a_torn_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 2, "train/loss": 1.0}\n{"iteration": 4, "train/lo')
    assert read_metrics(str(path)) == [{"iteration": 2, "train/loss": 1.0}]
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    writer.truncate_after(4)
    writer.write({"train/loss": 0.5}, 4)
    assert read_metrics(str(path)) == [{"iteration": 2, "train/loss": 1.0}, {"iteration": 4, "train/loss": 0.5}]
    path.write_text('{"iteration": 2, "tr\n{"iteration": 4}\n')
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl:1: not a JSON record .*\(delete or fix that line\)"):
        read_metrics(str(path))


def test_a_run_whose_output_is_no_terminal_logs_each_notice_once_and_plain_progress_lines(synthetic_root, tmp_path,
                                                                                           capsys, monkeypatch):
    """The FLIP notice came once per loader (train, each validation, test) and tqdm's bars filled captured output
    with carriage returns; off a terminal the run now writes plain lines."""
    from tiny_run import tiny_argv

    import runs.test_net_few_shot as evaluator
    import utils.logger as logger_module
    from runs.run import main

    monkeypatch.setattr(logger_module, "_LOGGED_ONCE", set())  # "once" is per process: forget earlier tests' notes
    monkeypatch.setattr(evaluator, "PROGRESS_LOG_SECONDS", 1e-9)  # a progress line after every test episode
    out = tmp_path / "run"
    main(tiny_argv(synthetic_root, out, "TRAIN.NUM_TRAIN_TASKS", "4", "TRAIN.VAL_FRE_ITER", "2",
                   "TRAIN.NUM_VAL_TASKS", "1", "TRAIN.NUM_TEST_TASKS", "2"))
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    log = (out / "log.txt").read_text()
    assert log.count("Synthetic_few_shot: DATA.FLIP is off for this dataset") == 1
    assert "iter 4/4 loss" in log and "test 2/2 (" in log
