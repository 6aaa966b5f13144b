"""Small pieces shared by the training and test loops."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

import torch
from tqdm import tqdm

from datasets.loader_watch import episodes
from utils import distributed as du
from utils.config import CfgNode

logger = logging.getLogger("fsar.engine")

# SIGUSR1: what `#SBATCH --signal=USR1@120` sends before the time limit; SIGTERM: scancel, preemption, torchrun.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def autocast(cfg: CfgNode, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast from TRAIN.AUTOCAST (fp16 only on CUDA); a no-op for "none"."""
    mode = cfg.TRAIN.AUTOCAST
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("TRAIN.AUTOCAST fp16 needs CUDA; use bf16 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ValueError(f"TRAIN.AUTOCAST: unknown mode {mode!r} (none, bf16, fp16)")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class Progress:
    """A loop's progress, readable where it lands: tqdm's bar where it draws on a terminal; in a file or a pipe
    (where the bar's carriage-return redraws would pile up), a plain log line at most every `every_s` seconds
    (0: none; the training loop logs its own `iter N/M loss ...` lines). Main process only."""

    def __init__(self, total: int, desc: str, initial: int = 0, leave: bool = True, every_s: float = 0.0):
        self.total, self.desc, self.done, self.every_s = total, desc, initial, every_s
        self.main = du.is_main_process()
        terminal = self.main and sys.stderr.isatty()  # tqdm draws on stderr
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=leave) if terminal else None
        self.start = self.last = time.time()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.main and self.every_s > 0 and time.time() - self.last >= self.every_s:
            self.last = time.time()
            logger.info("%s %d/%d (%.0fs)", self.desc, self.done, self.total, self.last - self.start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopRequest:
    """SIGTERM, SIGUSR1 and a first SIGINT ask the run to stop at the next safe point; a second SIGINT aborts.

    The handler only records the signal: the training loop checks `requested` at optimizer-step boundaries (all
    ranks agree there, see Trainer), saves `last.pth` and raises PreemptedError. Forked DataLoader workers inherit
    the handler and ignore these signals: their main process stops them.
    """

    def __init__(self):
        self.signum: int | None = None
        self._pid = -1
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> StopRequest:
        """Set the handlers (main thread only; elsewhere, e.g. a test's worker thread, signals keep their default)."""
        self.signum = None
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._pid = os.getpid()
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked from the main process
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: abort now, without saving
            return
        self.signum = signum
        # Logged from another thread: this handler may have interrupted the main thread inside a log handler's
        # emit, and writing to the same stream from here is a reentrant call (a "Logging error" traceback); the
        # thread waits for the handler's lock instead.
        threading.Thread(target=logger.warning, daemon=True, name="stop-request-log",
                         args=("received %s: stopping at the next optimizer step and saving checkpoints/last.pth "
                               "(Ctrl-C again aborts without saving)", signal.Signals(signum).name)).start()


STOP = StopRequest()  # one per process: signal handlers are process-wide


class _WorkerIgnoresStopSignals:
    """worker_init_fn wrapper: a DataLoader worker ignores SIGTERM/SIGUSR1/SIGINT.

    A scheduler signals every process of a job; torch's worker handler would die on that SIGTERM and take the main
    process down with "DataLoader worker killed". The main process stops its workers itself (and a worker whose
    main process is gone exits on its own, see torch's worker watchdog)."""

    def __init__(self, init):
        self.init = init

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.init is not None:
            self.init(worker_id)


def workers_ignore_stop_signals(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    if loader.num_workers > 0:
        loader.worker_init_fn = _WorkerIgnoresStopSignals(loader.worker_init_fn)
    return loader


@contextlib.contextmanager
def worker_episodes(loader: torch.utils.data.DataLoader) -> Iterator:
    """Iterate `loader` (its workers ignore stop signals) and shut its workers down on any exit.

    An exception's traceback keeps the loop's iterator, and so its persistent workers, alive; at interpreter exit
    multiprocessing would then wait forever for workers that ignore its SIGTERM."""
    iterator = iter(workers_ignore_stop_signals(loader))
    try:
        yield episodes(loader, iterator)  # a worker silent for DATA.LOADER_TIMEOUT: LoaderStalledError
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-process iterator only
        if shutdown is not None:
            shutdown()
