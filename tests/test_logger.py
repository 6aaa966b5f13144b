"""Logging and metrics writers."""
import logging

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
