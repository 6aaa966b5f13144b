"""Loader workers that stop answering become a one-line error naming the video they were decoding.

Each DataLoader worker writes the path it is decoding into its slot of a small shared-memory buffer
(`DecodingStatus`, created by `build_loader` before the workers start, so forked and spawned workers both hold it).
The loader waits at most DATA.LOADER_TIMEOUT seconds for an episode (torch's DataLoader `timeout`); `episodes`
turns torch's "DataLoader timed out" into `LoaderStalledError` with the slots' paths, after killing the stuck
workers (they ignore SIGTERM, see runs/engine_utils.py, and a blocked read would keep the process alive at exit).
"""
from __future__ import annotations

import multiprocessing
from typing import Iterator

import torch

from utils.errors import UserError
from utils.logger import get_logger

logger = get_logger(__name__)


class LoaderStalledError(UserError, RuntimeError):
    """A loader worker delivered nothing for DATA.LOADER_TIMEOUT seconds (a stuck read, decoder or process)."""

    exit_code = 12
    family = "loader"


class DecodingStatus:
    """What each loader worker is decoding now: one fixed-size, NUL-terminated UTF-8 slot per worker."""

    SLOT = 1024  # bytes per worker; longer paths keep their last part (the file name)

    def __init__(self, workers: int):
        self.workers = workers
        self.buffer = multiprocessing.RawArray("c", workers * self.SLOT)  # shared memory, no lock: one writer a slot

    def _slot(self) -> int | None:
        info = torch.utils.data.get_worker_info()
        return None if info is None else info.id  # None: loading in the main process, nothing to watch

    def set(self, text: str) -> None:
        slot = self._slot()
        if slot is None:
            return
        data = text.encode("utf-8", "replace")[-(self.SLOT - 1):] + b"\0"
        self.buffer[slot * self.SLOT:slot * self.SLOT + len(data)] = data

    def clear(self) -> None:
        slot = self._slot()
        if slot is not None:
            self.buffer[slot * self.SLOT] = b"\0"

    def busy(self) -> list[tuple[int, str]]:
        """(worker id, what it is decoding) for every worker that is decoding now."""
        found = []
        for worker in range(self.workers):
            raw = bytes(self.buffer[worker * self.SLOT:(worker + 1) * self.SLOT]).split(b"\0", 1)[0]
            if raw:
                found.append((worker, raw.decode("utf-8", "replace")))
        return found


def stalled_error(status: DecodingStatus | None, timeout: float) -> LoaderStalledError:
    busy = status.busy() if status is not None else []
    fix = "a stuck file system, a broken file or decoder; DATA.LOADER_TIMEOUT sets the limit, 0 waits forever"
    if not busy:
        return LoaderStalledError(f"DATA.LOADER_TIMEOUT: no episode from the loader workers for {timeout:g} s, and "
                                  f"none of them was decoding a video ({fix})")
    (worker, path), others = busy[0], busy[1:]
    more = "; also " + ", ".join(f"worker {w}: {p}" for w, p in others) if others else ""
    return LoaderStalledError(f"{path}: no episode from the loader for {timeout:g} s; worker {worker} is stuck "
                              f"decoding this video{more} ({fix})")


def _kill_workers(iterator) -> None:
    """SIGKILL the workers of torch's multi-process iterator (they ignore SIGTERM), first taking them off torch's
    SIGCHLD watch, which would otherwise raise "DataLoader worker killed" at a random point of the main thread."""
    if getattr(iterator, "_worker_pids_set", False):
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def episodes(loader: torch.utils.data.DataLoader, iterator) -> Iterator:
    """Items of `iterator` (an iterator over `loader`); a loader timeout raises LoaderStalledError."""
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except RuntimeError as err:
            if not (loader.timeout and str(err).startswith("DataLoader timed out")):
                raise
            error = stalled_error(getattr(loader.dataset, "decoding", None), loader.timeout)
            logger.error("%s; stopping the loader workers", error)
            _kill_workers(iterator)
            raise error from None
        yield item
