"""The project's error families and the one-line reporting every entry point shares.

Every refusal of bad input raises a subclass of `UserError` whose message already names the file, line or key
(`<where>: <what is wrong> (<what to do>)`). Entry points wrap their `main` with `entry_point`: a `UserError` is
printed as one line `error: <message>` on stderr and the process exits with its family's code; any other exception
keeps its full traceback. `--debug` anywhere on the command line (or `FSAR_DEBUG=1`) shows the traceback for every
error. Errors raised inside DataLoader workers or spawned ranks arrive re-wrapped; `find_user_error` unwraps them.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from typing import Callable, TypeVar


class UserError(Exception):
    """Bad input the user can fix; `exit_code` identifies the family (docs/failures.md: "Errors and exit codes")."""

    exit_code = 1
    family = "error"


class ArgumentError(UserError, ValueError):
    """A tool argument that is missing, malformed, out of range or selects nothing."""

    exit_code = 2
    family = "argument"


class RunFolderError(UserError, RuntimeError):
    """OUTPUT_DIR refusals: a run already there, a lock held by another job, nothing to resume, a changed config."""

    exit_code = 9
    family = "run folder"


class PreemptedError(UserError, RuntimeError):
    """Training stopped on SIGTERM/SIGUSR1/SIGINT after saving `last.pth`; `--resume` continues."""

    exit_code = 10
    family = "preempted"


class DivergedError(UserError, FloatingPointError):
    """Training stopped after TRAIN.MAX_BAD_STEPS consecutive non-finite losses; the last good state is on disk."""

    exit_code = 11
    family = "diverged"


class RankError(UserError):
    """A start-up refusal found on one rank of a multi-process job (or data that differs between nodes), raised on
    every rank so each ends with the same one line; `exit_code` is that refusal's family's code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def all_families() -> list[type[UserError]]:
    """Every UserError subclass defined so far (the project's modules define the rest)."""
    found, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


# torch re-raises a worker's exception as `exc_type(msg)` (or RuntimeError(msg) when the type needs other
# arguments) with msg = "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<mod>.<Type>: <msg>".
_WRAPPED = re.compile(r"Caught (?P<type>\w+) in (?:DataLoader worker process \d+|replica \d+ on device \d+)")
# torch.multiprocessing's ProcessRaisedException (a spawned rank failed): "-- Process N terminated with the following
# error:\n" and the child's formatted traceback, whose last line is "<mod>.<Type>: <msg>".
_SPAWNED = re.compile(r"-- Process \d+ terminated with the following error:")
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w+): (?P<msg>.*)$")


def find_user_error(err: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) if `err` is, wraps or chains a UserError; None for anything else."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        wrapped = _WRAPPED.search(text)
        if wrapped or _SPAWNED.search(text):
            found = _from_traceback_text(text, wrapped["type"] if wrapped else None)
            if found:
                return found
        elif isinstance(err, UserError):
            return text.strip().splitlines()[0] if text.strip() else err.family, err.exit_code
        err = err.__cause__ or err.__context__
    return None


def _from_traceback_text(text: str, type_name: str | None) -> tuple[str, int] | None:
    """The last `<mod>.<Type>: <msg>` line of a formatted traceback whose type is `type_name` (None: any family)."""
    families = {cls.__name__: cls for cls in all_families()}
    if type_name is not None and type_name not in families:
        return None
    lines = text.strip().splitlines()
    if type_name is None:  # a spawned rank: its traceback's last line is the exception that ended it
        m = _LAST_LINE.match(lines[-1].strip()) if lines else None
        return (m["msg"], families[m["type"]].exit_code) if m and m["type"] in families else None
    for line in reversed(lines):
        m = _LAST_LINE.match(line.strip())
        if m and m["type"] == type_name:
            return m["msg"], families[type_name].exit_code
    return None


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("FSAR_DEBUG", "") not in ("", "0")


F = TypeVar("F", bound=Callable)


def entry_point(main: F) -> F:
    """Wrap `main(argv)`: strip `--debug`, turn a UserError into `error: ...` on stderr and SystemExit(code)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None, *args, **kwargs):
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(argv)
        argv = [a for a in argv if a != "--debug"]
        try:
            return main(argv, *args, **kwargs)
        except Exception as err:
            found = None if debug else find_user_error(err)
            if found is None:
                raise
            message, code = found
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(code) from None

    return wrapper  # type: ignore[return-value]
