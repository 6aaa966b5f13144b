"""Shared test set-up: offline hub, small thread count, paths to the reference splits."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before open_clip is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPLITS = REPO_ROOT.parent / "shared" / "splits"


@pytest.fixture(scope="session")
def shared_splits() -> Path:
    """The public few-shot split lists in ../shared/splits (reference data, never copied here)."""
    if not SHARED_SPLITS.is_dir():
        pytest.fail(f"reference split lists not found at {SHARED_SPLITS}")
    return SHARED_SPLITS
