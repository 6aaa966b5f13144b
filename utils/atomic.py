"""Atomic file writes: write a temporary file in the target's folder, fsync, rename over the target.

A crash (or a full disk) at any point leaves either the old file or the new one, never a torn file; the temporary
file is removed on failure. Checkpoints, track files and prepared data all go through `atomic_write`. `unwritable`
says before any work starts whether a folder can be written at all.
"""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True, fsync: bool = True) -> None:
    """Call `write(f)` on a temporary file next to `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide checkpoints from a shared group
        os.replace(tmp, path)
        if fsync:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def unwritable(folder: str) -> str:
    """Why this process could not write files into `folder` ('' when it can), as a phrase that follows its name: the
    folder, or before it exists its nearest existing parent (which `os.makedirs` would write into), must be a
    writable folder."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    itself = probe == os.path.abspath(folder)
    if not os.path.isdir(probe):
        return "is not a folder" if itself else f"cannot be created: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return ("is" if itself else f"cannot be created: {probe} is") + " read-only for this user"
    return ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
