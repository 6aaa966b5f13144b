"""torch.distributed helpers that answer sanely when distributed is not initialised.

Processes are started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK), by SLURM (SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID, MASTER_ADDR from the node list), or by `launch` spawning NUM_GPUS local processes.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import socket
import threading
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.errors import RankError, UserError, find_user_error


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,7],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"SLURM_NODELIST: cannot parse {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def env_from_slurm() -> None:
    """Translate SLURM variables into torchrun's, so one code path initialises both."""
    env = os.environ
    if "SLURM_PROCID" not in env or "RANK" in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = first_slurm_host(env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    if "MASTER_PORT" not in env:
        # All tasks of a job must agree without talking: derive the port from the job id.
        env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)


def pick_backend(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def pick_device(requested: str = "auto") -> torch.device:
    """cuda:<local rank> when CUDA is there (or asked for), cpu otherwise."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = torch.device("cuda", get_local_rank() % max(torch.cuda.device_count(), 1))
    torch.cuda.set_device(device)
    return device


def init_from_env(backend: str = "auto") -> bool:
    """Initialise the process group from torchrun/SLURM variables; False for a single process."""
    env_from_slurm()
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = pick_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def _spawned_entry(local_rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def launch(fn: Callable, num_processes: int, args: tuple = ()) -> None:
    """Run `fn(*args)` in `num_processes` local processes on a free port, or inline if already
    under torchrun/SLURM or for one process. `fn` must call `init_from_env` itself.

    SIGTERM/SIGUSR1 sent to this (parent) process are forwarded to the ranks, which stop cleanly; a rank's error
    reaches the caller as torch's ProcessRaisedException (utils.errors.find_user_error unwraps it)."""
    env_from_slurm()
    if num_processes <= 1 or "RANK" in os.environ:
        fn(*args)
        return
    context = mp.start_processes(_spawned_entry, args=(num_processes, find_free_port(), fn, args),
                                 nprocs=num_processes, join=False, start_method="spawn")
    with _forward_stop_signals(context.processes):
        # After one rank fails, give the others time to end on their own (they raise the same error).
        while not context.join(grace_period=60):
            pass


@contextlib.contextmanager
def _forward_stop_signals(processes: list):
    """Parent of spawned ranks: pass SIGTERM/SIGUSR1 on. A terminal's Ctrl-C reaches every process of the group
    already, so the first SIGINT is not forwarded (the ranks would count it twice); a second one kills them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = []

    def forward(signum, frame):
        if signum == signal.SIGINT:
            if interrupted:
                for p in processes:
                    if p.is_alive():
                        p.kill()
                raise KeyboardInterrupt
            interrupted.append(signum)
            return
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (a one-element list when not distributed)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank (`obj` itself when not distributed)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree_on_failure(error: UserError | None) -> None:
    """Collective, on every rank at once: if any rank refused (a UserError), every rank raises the lowest such rank's
    one line, naming that rank and its host, with its exit code. Run it before the first collective a failing rank
    would leave the others waiting in (they would die in it with a gloo or NCCL traceback instead)."""
    found = find_user_error(error) if error is not None else None
    if not is_initialized():
        if error is not None:
            raise error
        return
    outcomes = all_gather_object((found, socket.gethostname()))
    for rank, (outcome, host) in enumerate(outcomes):
        if outcome is not None:
            message, code = outcome
            raise RankError(f"{message} (on rank {rank} of {len(outcomes)}, host {host})", code) from error


def all_gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Gather same-shaped tensors from every rank."""
    if not is_initialized():
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum or mean of a tensor over ranks (a copy; the input is unchanged)."""
    out = tensor.detach().clone()
    if is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        if op == "mean":
            out /= get_world_size()
    return out


def shard_indices(num_items: int, rank: int | None = None, world_size: int | None = None) -> range:
    """Contiguous shard of 0..num_items-1 for one rank; shards cover every index exactly once."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    per, extra = divmod(num_items, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
