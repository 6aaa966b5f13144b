"""argparse value types shared by the command-line tools: a malformed number or shape is a usage error (exit 2)
naming the flag, never a run over a meaningless setting."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def int_shape(dims: int, names: str, max_cells: int = 0) -> Callable[[str], tuple[int, ...]]:
    """`--shape 25,5,8,8`: exactly `dims` positive integers (`names` says what they are) whose product is at most
    `max_cells` float32 values (0: no bound), checked before anything is allocated."""
    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",")]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers ({names})") from None
        if len(shape) != dims or min(shape) <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be {dims} positive integers ({names})")
        cells = math.prod(shape)
        if max_cells and cells > max_cells:
            raise argparse.ArgumentTypeError(f"{text!r} has {cells} cells, more than the {max_cells} this benchmark "
                                             f"allows ({max_cells * 4 >> 20} MiB per float32 tensor; it holds "
                                             f"several): use a smaller shape")
        return shape
    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
