"""Shared helpers for the engine and reliability tests."""
from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path

TINY_CFG = str(Path(__file__).resolve().parent / "configs" / "tiny.yaml")


def tiny_opts(root: Path, output_dir: Path, *extra: str) -> list[str]:
    """KEY VALUE overrides pointing the tiny config at a synthetic benchmark and an output folder."""
    return ["DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root), "OUTPUT_DIR", str(output_dir), *extra]


def tiny_argv(root: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--cfg", TINY_CFG, *tiny_opts(root, output_dir, *extra)]

REPO = Path(__file__).resolve().parents[1]


def drop_root_write_override() -> None:
    """preexec_fn of a child of a root test run: without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, root obeys file modes
    like any user (PR_CAPBSET_DROP = 24), so a 0555 folder is really read-only for that process."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def refused(capsys, code: int, argv: list[str]) -> str:
    """`runs.run.main(argv)` must exit with `code` and end stderr with exactly one `error: ...` line (no traceback;
    a progress bar may come before it); returns that line."""
    import pytest

    from runs.run import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    return errors[0]


@contextlib.contextmanager
def log_records(level: int = logging.INFO):
    """Capture the project's log records whatever setup_logging did to propagation."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    logger = logging.getLogger("fsar")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def assert_cached_evaluation_equals_uncached(opts: list[str], episodes: int = 4) -> None:
    """The tiny config with `opts` evaluated on `episodes` test episodes with and without the feature cache (a fresh
    model from the same seed each time): the same per-episode and per-class results, and the cache was used."""
    import torch

    from models import build_model
    from runs.config import load_config
    from runs.test_net_few_shot import evaluate

    results = {}
    for cache in (False, True):
        cfg = load_config(TINY_CFG, opts + ["TEST.FEATURE_CACHE", str(cache), "TEST.CACHE_SIZE", "12"])
        torch.manual_seed(0)
        results[cache] = evaluate(build_model(cfg), cfg, "test", episodes, torch.device("cpu"))
    assert results[True]["episode_accuracies"] == results[False]["episode_accuracies"]
    assert results[True]["per_class"] == results[False]["per_class"]
    assert results[True]["cache"]["hits"] > 0
