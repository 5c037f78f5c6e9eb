"""Processes the tests start and watch: waiting on conditions, /proc readers, safe kills.

A pid alone names another process once its own was reaped and the number reused
(pid_max is often 32768), so a process the tests may kill is held as a `Proc`:
its pid *and* its start time (field 22 of /proc/<pid>/stat). `kill` signals only
that exact process, through a pidfd, so it cannot hit a newcomer that took the pid.

A process started by code under test tells its identity itself: `write_pid(path)`
writes its start time to `<path>.started` and then its pid to `path`; `read_proc`
reads both. Nothing here ever looks a process up by name or command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat the tests use."""

    state: str  # "R", "S", ..., "Z" for a zombie
    ppid: int
    pgrp: int
    started: int  # clock ticks after boot


@dataclass(frozen=True)
class Proc:
    """One process, for as long as it lives: a pid and the time it started."""

    pid: int
    started: int


def read_stat(pid: int) -> Stat | None:
    """The process's stat fields, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    found = read_stat(pid)
    return found is not None and found.state != "Z"


def identify(pid: int) -> Proc | None:
    """The live process that `pid` names now, or None."""
    found = read_stat(pid)
    return None if found is None or found.state == "Z" else Proc(pid, found.started)


def lives(proc: Proc) -> bool:
    """True while that very process lives (not a zombie, its pid not reused)."""
    found = read_stat(proc.pid)
    return found is not None and found.started == proc.started and found.state != "Z"


def kill(proc: Proc, signum: int = signal.SIGKILL) -> bool:
    """Send `signum` to that very process if it still runs; True if it was sent."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return False
    try:  # the pidfd holds the process it was opened on: check that it is ours, then signal
        if not lives(proc):
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def stop_session(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a `start_new_session=True` subprocess and whatever is left in its process group.

    The group is signalled only while its leader is unreaped (alive or a zombie): until
    then no other process can hold that group id. SIGTERM first; once the leader has
    exited, or after `timeout` seconds, SIGKILL sweeps the group; then the leader is reaped.
    """
    if proc.returncode is not None:
        return  # reaped already: its group id is no longer provably ours
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break  # exited, not reaped
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def parent_of(pid: int) -> int | None:
    found = read_stat(pid)
    return None if found is None else found.ppid


def ancestor_among(pid: int, candidates: list[int]) -> int | None:
    """The nearest ancestor of `pid` that is one of `candidates` (e.g. a worker's pool)."""
    found = parent_of(pid)
    while found is not None and found > 1 and found not in candidates:
        found = parent_of(found)
    return found if found in candidates else None


def running_calls(root: int) -> list[Proc]:
    """Isolated children below `root` that are running a call (named ``graftq-call``)."""
    return [proc for proc in descendants(root) if name_of(proc.pid) == "graftq-call"]


def name_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(root: int) -> set[Proc]:
    """Every live process below `root`, at this moment."""
    children: dict[int, list[Proc]] = {}
    for pid in all_pids():
        found = read_stat(pid)
        if found is not None and found.state != "Z":
            children.setdefault(found.ppid, []).append(Proc(pid, found.started))
    seen: set[Proc] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child.pid)
    return seen


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def serving(
    args: list[str], env: dict[str, str], what: str, answers: Callable[[], bool]
) -> Iterator[None]:
    """Run server `args` in a session of its own until `answers()`; always stop it, and
    print the tail of what it logged."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def up() -> bool:
                assert proc.poll() is None, f"{what} exited early"
                return answers()

            wait_until(up, 30, f"{what} answering")
            yield
        finally:
            stop_session(proc)
            log.seek(0)
            print(f"--- {what} log ---\n{log.read().decode(errors='replace')[-3000:]}")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)  # a reader sees no file or the whole text, never half of it


def write_pid(path: Path | str) -> None:
    """Write this process's identity: start time to `<path>.started`, then pid to `path`."""
    path = Path(path)
    if path.exists() and not path.is_file():  # e.g. os.devnull: never replace a device
        path.write_text(str(os.getpid()))
        return
    me = read_stat(os.getpid())
    assert me is not None
    _write_atomically(path.with_name(path.name + ".started"), str(me.started))
    _write_atomically(path, str(os.getpid()))


def pid_in(path: Path) -> int | None:
    """The pid written into `path`, or None while there is none (yet)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(path.read_text())
    return None


def proc_in(path: Path) -> Proc | None:
    """The process that wrote its identity with `write_pid(path)`, or None."""
    pid = pid_in(path)
    if pid is None:
        return None
    with contextlib.suppress(FileNotFoundError, ValueError):
        return Proc(pid, int(path.with_name(path.name + ".started").read_text()))
    return None


def read_pid(path: Path, timeout: float = 60.0) -> int:
    """The pid a process wrote into `path` (waits until the file holds one)."""
    wait_until(lambda: pid_in(path) is not None, timeout, f"a pid in {path}")
    pid = pid_in(path)
    assert pid is not None
    return pid


def read_proc(path: Path, timeout: float = 60.0) -> Proc:
    """The identity a process wrote with `write_pid(path)` (waits until it is there)."""
    wait_until(lambda: proc_in(path) is not None, timeout, f"a process identity in {path}")
    proc = proc_in(path)
    assert proc is not None
    return proc
