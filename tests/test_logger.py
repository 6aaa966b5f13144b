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
