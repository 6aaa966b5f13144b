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
    if not SHARED_SPLITS.is_dir():  # reference data outside the repository: its tests need it, the rest do not
        pytest.skip(f"reference split lists not found at {SHARED_SPLITS}")
    return SHARED_SPLITS


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark (datasets/synthetic.py) in the real layout: 15 classes (5/5/5 train/val/test,
    so 5-way episodes work on every split) x 6 videos, 24 frames, 64 px, with tracks/ and detections.json.
    Use it as DATA.ANNO_DIR and DATA.DATA_ROOT_DIR (DATA.TRACK_DIR: <root>/tracks); treat it as read-only."""
    from datasets.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(root), classes=15, videos_per_class=6, frames=24, size=64, seed=0)
    return root


@pytest.fixture(autouse=True)
def isolated_environ():
    """Restore os.environ after every test: code under test (SLURM translation) writes RANK/WORLD_SIZE, which
    would make every later run believe it is one rank of a distributed job."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
