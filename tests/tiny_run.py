"""Shared helpers for the engine and reliability tests."""
from __future__ import annotations

from pathlib import Path

TINY_CFG = str(Path(__file__).resolve().parent / "configs" / "tiny.yaml")


def tiny_opts(root: Path, output_dir: Path, *extra: str) -> list[str]:
    """KEY VALUE overrides pointing the tiny config at a synthetic benchmark and an output folder."""
    return ["DATA.ANNO_DIR", str(root), "DATA.DATA_ROOT_DIR", str(root), "OUTPUT_DIR", str(output_dir), *extra]


def tiny_argv(root: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--cfg", TINY_CFG, *tiny_opts(root, output_dir, *extra)]

REPO = Path(__file__).resolve().parents[1]
