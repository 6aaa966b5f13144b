"""A researcher's real environment: another package named `datasets` (Hugging Face's) installed next to ours must
not break the entry points (issue 15, item 6)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tiny_run import REPO, tiny_argv


def _is_cli(path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


TOOLS = sorted(p.name for p in (REPO / "runs").glob("*.py") if _is_cli(p))


@pytest.fixture()
def stand_in_env(tmp_path):
    """An environment whose import path holds a foreign `datasets` package before site-packages."""
    site = tmp_path / "site"
    (site / "datasets").mkdir(parents=True)
    (site / "datasets" / "__init__.py").write_text('"""Stand-in for Hugging Face datasets."""\nload_dataset = None\n')
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(site)}


def test_every_cli_is_listed():
    assert {"run.py", "benchmark.py", "extract_tracks.py", "make_synthetic.py", "prepare_splits.py",
            "summarize.py", "visualize.py"} <= set(TOOLS)


@pytest.mark.parametrize("tool", TOOLS)
def test_each_cli_starts_next_to_a_foreign_datasets_package(tool, stand_in_env, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "runs" / tool), "--help"], cwd=tmp_path, env=stand_in_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_tiny_run_works_next_to_a_foreign_datasets_package(synthetic_root, stand_in_env, tmp_path):
    argv = tiny_argv(synthetic_root, tmp_path / "run", "TRAIN.NUM_TRAIN_TASKS", "2", "TRAIN.VAL_FRE_ITER", "2",
                     "TRAIN.NUM_VAL_TASKS", "1", "TRAIN.NUM_TEST_TASKS", "2")
    proc = subprocess.run([sys.executable, str(REPO / "runs" / "run.py"), *argv], cwd=tmp_path, env=stand_in_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
