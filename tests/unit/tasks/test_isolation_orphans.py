"""No process a call started survives it, even one that left with setsid and a double fork.

Issue 10 item 6 / SPEC 6: the isolated child is a subreaper, so detached descendants
are reparented to it, and it kills them when the call ends; on a time limit the parent
kills the child's whole tree before the child itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.tasks.isolation import run_isolated
from tests.apps.hostile import leave_hopper, leave_orphan
from tests.integration.worker.helpers import alive, read_pid, wait_until


def identity(value: object) -> bytes:
    return repr(value).encode()


def test_a_detached_grandchild_dies_when_the_call_returns(tmp_path: Path) -> None:
    pid_file = str(tmp_path / "orphan.pid")
    orphan = run_isolated(lambda: leave_orphan(pid_file), encode=identity, decode=int)
    try:
        assert orphan > 0 and orphan != os.getpid()
        wait_until(lambda: not alive(orphan), 10, f"detached grandchild {orphan} was killed")
    finally:
        if alive(orphan):
            os.kill(orphan, 9)


def test_a_detached_grandchild_dies_when_the_call_raises(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"

    def body() -> None:
        leave_orphan(str(pid_file))
        raise ValueError("after forking")

    with pytest.raises(ValueError, match="after forking"):
        run_isolated(body, encode=identity, decode=bytes)
    orphan = read_pid(pid_file)
    try:
        wait_until(lambda: not alive(orphan), 10, f"detached grandchild {orphan} was killed")
    finally:
        if alive(orphan):
            os.kill(orphan, 9)


def test_a_detached_grandchild_dies_when_the_call_times_out(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"

    def body() -> None:
        leave_orphan(str(pid_file))
        time.sleep(600)

    with pytest.raises(TimeLimitExceeded):
        run_isolated(body, encode=identity, decode=bytes, time_limit=1.0)
    orphan = read_pid(pid_file)
    try:
        wait_until(lambda: not alive(orphan), 10, f"detached grandchild {orphan} was killed")
    finally:
        if alive(orphan):
            os.kill(orphan, 9)


def test_a_detached_grandchild_of_a_grandchild_dies_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"

    def body() -> int:
        middle = os.fork()
        if middle == 0:  # a child that itself leaves an orphan, then stays around
            leave_orphan(str(pid_file))
            time.sleep(600)
            os._exit(0)
        return read_pid(pid_file)

    orphan = run_isolated(body, encode=identity, decode=int)
    try:
        wait_until(lambda: not alive(orphan), 10, f"detached descendant {orphan} was killed")
    finally:
        if alive(orphan):
            os.kill(orphan, 9)


def test_the_caller_gets_no_new_children(tmp_path: Path) -> None:
    before = set(_children(os.getpid()))
    with pytest.raises(IsolationError):
        run_isolated(lambda: os._exit(4), encode=identity, decode=bytes)
    run_isolated(lambda: leave_orphan(str(tmp_path / "o.pid")), encode=identity, decode=int)
    assert set(_children(os.getpid())) == before


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def test_detached_processes_that_keep_changing_their_pids_die_on_a_time_limit(
    tmp_path: Path,
) -> None:
    """Chasing their pids loses the race (each is gone when its kill arrives); their
    process groups, which every hop keeps, are killed at once."""
    count_files = [tmp_path / f"hops-{n}" for n in range(4)]

    def body() -> None:
        for count_file in count_files:
            leave_hopper(str(count_file))
        time.sleep(600)

    with pytest.raises(TimeLimitExceeded):
        run_isolated(body, encode=identity, decode=bytes, time_limit=1.0)

    def hops() -> list[int]:
        return [len(count_file.read_text().split()) for count_file in count_files]

    before = hops()
    try:
        time.sleep(0.5)  # a living hopper writes hundreds of lines meanwhile
        assert hops() == before, "a hopping process outlived the call"
    finally:
        for count_file in count_files:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(Path(f"{count_file}.pgid").read_text()), signal.SIGKILL)
