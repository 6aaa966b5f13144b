"""Logging (main process only, console + OUTPUT_DIR/log.txt), JSON-lines metrics and TensorBoard."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import simplejson as json

from utils import distributed as du
from utils.errors import RunFolderError

LOGGER_NAME = "fsar"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


_LOGGED_ONCE: set = set()  # keys of the notices this process has logged (log_once)


def log_once(logger: logging.Logger, key: Any, level: int, message: str, *args: Any) -> None:
    """Log a notice the first time `key` comes by in this process (a dataset fact or a decoder choice is worth one
    line per run, not one per loader or per video)."""
    key = (logger.name, key)
    if key not in _LOGGED_ONCE:
        _LOGGED_ONCE.add(key)
        logger.log(level, message, *args)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record is emitted (a redirected or captured stdout of an earlier
    in-process run may be closed by now)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def setup_logging(output_dir: str | None = None) -> logging.Logger:
    """Main process: INFO to stdout and `output_dir/log.txt`; other ranks: warnings and errors only."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    main = du.is_main_process()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter(f"[%(asctime)s{'' if main else ' rank ' + str(du.get_rank())}] %(message)s",
                            datefmt="%H:%M:%S")
    console = _StdoutHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if main and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


class MetricsWriter:
    """Appends one JSON object per line to `metrics.jsonl` and mirrors scalars to TensorBoard.

    Writes only on the main process; `tensorboard=False` skips the TensorBoard files.
    """

    def __init__(self, output_dir: str, tensorboard: bool = True):
        self.enabled = du.is_main_process()
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": step, **record}, ignore_nan=True) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop records past the checkpoint so the file reads as one uninterrupted run.

        A torn last line (the process was killed during an append) is dropped with a warning."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        kept = [line for line, record in _read_records(self.path) if record.get("iteration", 0) <= iteration]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line is dropped with a warning."""
    return [record for _, record in _read_records(path)]


def _read_records(path: str) -> list[tuple[str, dict]]:
    """(line, record) pairs. Only the last line can be torn (records are appended whole, so a kill during an
    append leaves a partial last line); it is dropped with a warning. An unreadable line before it is an error."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            out.append((line if line.endswith("\n") else line + "\n", record))
        except ValueError as e:
            if i < len(lines) - 1:
                raise RunFolderError(f"{path}:{n}: not a JSON record ({e}) (delete or fix that line)") from None
            get_logger("metrics").warning("%s:%d: dropping a torn last line (the run was killed while writing "
                                          "it): %r", path, n, line[:80])
    return out
