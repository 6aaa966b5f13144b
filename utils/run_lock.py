"""The run-folder lock: one job at a time per OUTPUT_DIR (a second `--resume`, a cluster requeue of a job whose
first copy still runs, two users choosing the same folder).

`OUTPUT_DIR/run.lock` holds one JSON object `{"host", "pid", "start", "command"}` and carries a POSIX record lock
(fcntl F_SETLK) of its holder for the whole run; it is removed on any exit Python sees (normal end, exception,
SIGTERM/SIGINT handled by the engine). A record lock belongs to the holder process alone: forked children (the
loader workers) do not share it, and the kernel drops it the moment the holder dies, so a killed run's folder is
free at once (an `flock` is shared by every process that inherited the descriptor: the workers of a SIGKILLed run
kept it for seconds). Its one catch: closing *any* descriptor of the file drops the process's lock, so nothing in
the holder process may open the lock file; a second RunLock on a folder this process holds is refused from
memory. A lock file left by a killed process is stale: on the same host the holder's pid is gone (or now belongs to a
younger process), so it is taken over with a warning; a lock from another host cannot be checked from here and is
refused with the command that removes it, except when it was written by an earlier attempt of the same SLURM job
(same SLURM_JOB_ID, lower SLURM_RESTART_COUNT: SLURM never runs two attempts of one job at once).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

import psutil

from utils.atomic import unwritable
from utils.errors import RunFolderError

LOCK_NAME = "run.lock"
logger = logging.getLogger("fsar.run_lock")
_HELD: dict[tuple[int, int], dict] = {}  # (device, inode) of the lock files this process holds -> its record


def describe(holder: dict) -> str:
    start = holder.get("start")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if isinstance(start, (int, float)) else "?"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {when} "
            f"({holder.get('command', '?')})")


def holder_alive(holder: dict) -> bool:
    """Same host only: is the recorded pid a live process that is at least as old as the lock?"""
    pid, start = holder.get("pid"), holder.get("start")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:
        return True  # exists but cannot be inspected: assume it is the holder
    # A process younger than the lock reuses a dead holder's pid (e.g. after a reboot).
    return not (isinstance(start, (int, float)) and created > start + 1.0)


class RunLock:
    """`with RunLock(folder, command):` or `acquire()` / `release()`; re-entrant calls are refused.

    `name` and `key` serve other single-writer folders: prepare_videos locks its `--out` with `prepare.lock`."""

    def __init__(self, folder: str, command: str | None = None, name: str = LOCK_NAME, key: str = "OUTPUT_DIR"):
        self.folder, self.key = folder, key
        self.what = "run folder" if key == "OUTPUT_DIR" else f"{key} folder"
        self.path = os.path.join(folder, name)
        self.command = command if command is not None else " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        self.fd: int | None = None
        self.created = False  # the folder was made by `acquire`: `release` removes it again if it is still empty

    def acquire(self) -> RunLock:
        check_writable(self.folder, self.key)
        try:
            self.created = not os.path.isdir(self.folder)
            os.makedirs(self.folder, exist_ok=True)
            for _ in range(5):  # retry only when the file was replaced between open and flock
                if self._try_acquire():
                    return self
            raise RunFolderError(f"{self.path}: lock file keeps changing under us (another job is starting in "
                                 f"this folder; use another {self.key})")
        except OSError as e:
            raise RunFolderError(f"{self.folder}: cannot write the {self.what} ({e.strerror or e}) "
                                 f"(choose a writable {self.key})") from None

    def _in_use(self, holder: dict) -> RunFolderError:
        """The lock is held by a live process. Its record may still name the previous, dead holder (the new one
        locks, then writes): then it is a job starting now, never the dead pid."""
        dead = holder.get("host") == socket.gethostname() and not holder_alive(holder)
        who = describe(holder) if holder and not dead else "a job that is starting now (no record written yet)"
        return RunFolderError(f"{self.path}: {self.what} in use by {who} (wait for that job to end or use another "
                              f"{self.key})")

    def _refuse_if_held_here(self) -> None:
        """This process holds the file already: refuse without opening it (closing would drop our lock)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) in _HELD:
            raise self._in_use(_HELD[st.st_dev, st.st_ino])

    def _try_acquire(self) -> bool:
        self._refuse_if_held_here()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fcntl F_SETLK: this process's alone (see above)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise self._in_use(self._read(fd)) from None
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                # No record locks on this file system: the pid/host check below is all there is.
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                os.close(fd)  # the holder removed the file as we opened it: start again on the new one
                return False
            holder = self._read(fd)
            if holder:
                self._check_stale(holder)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            record = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time(),
                      "command": self.command, **slurm_attempt()}
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
            st = os.fstat(fd)
            _HELD[st.st_dev, st.st_ino] = record
        except BaseException:
            if self.fd != fd:
                os.close(fd)
            raise
        self.fd = fd
        return True

    def _check_stale(self, holder: dict) -> None:
        """The file is unlocked but not empty: its holder ended without removing it (SIGKILL, power loss)."""
        host = socket.gethostname()
        if later_attempt_of_the_same_slurm_job(holder):
            logger.warning("%s: taking over the lock of %s: an earlier attempt of this SLURM job (requeued, SLURM "
                           "runs one attempt at a time)", self.path, describe(holder))
            return
        if holder.get("host") != host:
            raise RunFolderError(
                f"{self.path}: {self.what} locked by {describe(holder)}; that host cannot be checked from {host} "
                f"(if that job is gone, remove the lock: rm {self.path})")
        if holder_alive(holder):
            raise RunFolderError(f"{self.path}: {self.what} in use by {describe(holder)} (wait for that job to end "
                                 f"or use another {self.key})")
        logger.warning("%s: taking over a stale lock of %s (that process is gone)", self.path, describe(holder))

    @staticmethod
    def _read(fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        try:
            holder = json.loads(data.decode("utf-8", "replace") or "{}")
        except ValueError:
            return {"command": "unreadable lock file"}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        """Remove the file, then drop the lock (a process that opened it meanwhile sees a new inode and retries)."""
        if self.fd is None:
            return
        st = os.fstat(self.fd)
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        finally:
            _HELD.pop((st.st_dev, st.st_ino), None)
            os.close(self.fd)
            self.fd = None
        if self.created:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it, keep it
                os.rmdir(self.folder)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def slurm_attempt() -> dict:
    """SLURM job id and restart count of this process ({} outside SLURM): a requeued job keeps its id."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {"slurm_job": os.environ["SLURM_JOB_ID"], "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0))}


def later_attempt_of_the_same_slurm_job(holder: dict) -> bool:
    """The holder is an earlier attempt of our own SLURM job (killed on its node, then requeued, maybe elsewhere)."""
    ours = slurm_attempt()
    return bool(ours) and holder.get("slurm_job") == ours["slurm_job"] and \
        isinstance(holder.get("slurm_restart"), int) and holder["slurm_restart"] < ours["slurm_restart"]


def check_writable(folder: str, key: str = "OUTPUT_DIR") -> None:
    """The folder (or, before it exists, its nearest existing parent) must be writable by this process."""
    problem = unwritable(folder)
    if problem:
        fix = f"choose another {key}" if problem.endswith("not a folder") else \
            f"choose a writable {key} or fix its permissions"
        raise RunFolderError(f"{folder}: {key} {problem} ({fix})")
