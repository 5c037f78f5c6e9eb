"""run_isolated with real forks: results, exceptions, crashes, time limits, cleanup."""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.tasks.isolation import run_isolated
from tests.apps.school import app as school
from tests.processes import (
    all_pids,
    kill,
    lives,
    proc_in,
    read_pid,
    read_proc,
    read_stat,
    wait_until,
    write_pid,
)

ROOT = Path(__file__).resolve().parents[3]
NOTE = "Remote traceback (isolated child):"
STATE: list[str] = []


class CustomError(Exception):
    """Importable, so it round-trips as itself."""


class LockedError(Exception):
    """Cannot be pickled, but can be rebuilt from its name and message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class QuotaError(Exception):
    """Cannot be unpickled (its __init__ wants more than its args): made without __init__."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class Interrupted(Exception):
    """Raised by a test signal handler to interrupt the parent mid-wait."""


def run(call: Any, **kwargs: Any) -> Any:
    return run_isolated(call, encode=lambda v: json.dumps(v).encode(), decode=json.loads, **kwargs)


def our_zombies() -> list[int]:
    """Children of this process that died and were never reaped."""
    return [
        pid
        for pid in all_pids()
        if (found := read_stat(pid)) is not None
        and found.state == "Z"
        and found.ppid == os.getpid()
    ]


SLEEP = 300.0  # a body "hangs" this long: a test that waited for it would time out


def write_pid_and_sleep(path: Path) -> None:
    write_pid(path)
    time.sleep(SLEEP)


# --- results ----------------------------------------------------------------------------


def test_returns_the_decoded_result() -> None:
    assert run(lambda: {"answer": 42, "pid": os.getpid()})["answer"] == 42
    assert run(lambda: os.getpid()) != os.getpid()


def test_result_larger_than_the_pipe_buffer() -> None:
    result = run(lambda: "x" * 6_000_000)
    assert len(result) == 6_000_000


async def double(n: int) -> int:
    await asyncio.sleep(0.01)
    return n * 2


def test_awaitable_result_is_awaited_in_the_child() -> None:
    assert run(lambda: double(21)) == 42


def test_called_inside_a_running_event_loop() -> None:
    async def main() -> Any:
        return run(lambda: double(5))

    assert asyncio.run(main()) == 10


def test_called_from_a_thread() -> None:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(run(lambda: double(4))))
    thread.start()
    thread.join(10)
    assert results == [8]


def test_child_mutations_are_invisible_to_the_parent() -> None:
    def mutate() -> list[str]:
        STATE.append("child")
        return STATE

    assert run(mutate) == ["child"]
    assert STATE == []


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_process_the_call_forked_does_not_answer_for_it(how: str) -> None:
    forks = school.callables["forks"].func  # its forked process answers first, if it may
    assert run(lambda: forks(how)) == "body"


def test_setup_runs_in_the_child_only() -> None:
    assert run(lambda: STATE, setup=lambda: STATE.append("setup")) == ["setup"]
    assert STATE == []


def test_inherited_sockets_are_pointed_at_devnull() -> None:
    ours, theirs = socket.socketpair()
    try:

        def use_socket() -> list[Any]:
            os.write(ours.fileno(), b"from the child")  # lands in /dev/null
            try:
                ours.send(b"from the child")
            except OSError as err:
                return [stat.S_ISSOCK(os.fstat(ours.fileno()).st_mode), err.errno]
            return ["sent"]

        assert run(use_socket) == [False, errno.ENOTSOCK]
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(100)
        assert stat.S_ISSOCK(os.fstat(ours.fileno()).st_mode)
    finally:
        ours.close()
        theirs.close()


def test_inherited_pipes_are_pointed_at_devnull() -> None:
    """A pipe to another process (a worker pool process's to its main process, say) is a
    connection the call must not inherit: the call writes to /dev/null instead."""
    read_end, write_end = os.pipe()
    try:

        def use_pipe() -> bool:
            os.write(write_end, b"from the child")  # lands in /dev/null
            return stat.S_ISFIFO(os.fstat(write_end).st_mode)

        assert run(use_pipe) is False
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 100)
        assert stat.S_ISFIFO(os.fstat(write_end).st_mode)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_inherited_signal_handlers_are_reset() -> None:
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        assert run(lambda: signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL) is True
    finally:
        signal.signal(signal.SIGUSR2, previous)


# --- exceptions -------------------------------------------------------------------------


def test_value_error_comes_back_with_message_and_remote_traceback() -> None:
    def fail() -> None:
        raise ValueError("bad 42")

    with pytest.raises(ValueError, match="bad 42") as info:
        run(fail)
    assert type(info.value) is ValueError
    notes = "\n".join(info.value.__notes__)
    assert NOTE in notes and "in fail" in notes and "ValueError: bad 42" in notes
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_custom_exception_keeps_its_class() -> None:
    def fail() -> None:
        raise CustomError("custom")

    with pytest.raises(CustomError, match="custom"):
        run(fail)


def test_unpicklable_exception_is_rebuilt_from_its_name() -> None:
    def fail() -> None:
        raise LockedError("locked 7")

    with pytest.raises(LockedError, match="locked 7") as info:
        run(fail)
    assert NOTE in info.value.__notes__[0]


def test_exception_whose_init_wants_more_than_its_message_keeps_its_class() -> None:
    def fail() -> None:
        raise QuotaError("quota of 3 exceeded", 3)

    with pytest.raises(QuotaError) as info:
        run(fail)
    assert type(info.value) is QuotaError and str(info.value) == "quota of 3 exceeded"
    assert info.value.args == ("quota of 3 exceeded",)
    assert not hasattr(info.value, "limit")  # set only by the __init__ that was not called
    assert NOTE in info.value.__notes__[0]


def test_exception_that_cannot_be_rebuilt_becomes_isolation_error() -> None:
    class LocalError(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()

    def fail() -> None:
        raise LocalError("local 9")

    with pytest.raises(IsolationError, match=r"LocalError: local 9") as info:
        run(fail)
    assert NOTE in info.value.__notes__[0]


def test_encode_failure_comes_back() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        run(lambda: object())


@pytest.mark.parametrize(
    ("exc", "shown"), [(SystemExit(2), "SystemExit(2)"), (KeyboardInterrupt(), "KeyboardInterrupt")]
)
def test_base_exceptions_become_isolation_error(exc: BaseException, shown: str) -> None:
    def fail() -> None:
        raise exc

    with pytest.raises(IsolationError, match=f"raised {re.escape(shown)}"):
        run(fail)


def test_memory_error_becomes_isolation_error() -> None:
    # a worker would take the child's MemoryError for its own and shut down (Celery)
    def exhaust() -> None:
        raise MemoryError("cannot allocate")

    with pytest.raises(IsolationError, match=r"ran out of memory \(MemoryError: cannot allocate"):
        run(exhaust)


def test_sys_exit_becomes_isolation_error() -> None:
    with pytest.raises(IsolationError, match=r"SystemExit\(2\)"):
        run(lambda: sys.exit(2))


# --- crashes ----------------------------------------------------------------------------


def test_os_exit_reports_the_status() -> None:
    with pytest.raises(IsolationError, match=r"child pid \d+\) exited with status 3"):
        run(lambda: os._exit(3))
    assert our_zombies() == []


def test_a_call_that_closes_its_inherited_descriptors_is_told_why_it_failed() -> None:
    with pytest.raises(IsolationError, match=r"status 70: it could not send its answer \(did"):
        run(lambda: os.closerange(3, 4096))
    assert our_zombies() == []


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL])
def test_signal_death_names_the_signal(signum: signal.Signals) -> None:
    def die() -> None:
        faulthandler.disable()  # pytest enabled it; its dump would only be noise here
        os.kill(os.getpid(), signum)

    with pytest.raises(IsolationError, match=f"killed by signal {signum.name}"):
        run(die)
    assert our_zombies() == []


def test_crash_is_reported_while_a_forked_grandchild_holds_the_pipe(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"

    def fork_then_crash() -> None:
        if os.fork() == 0:  # the grandchild inherits the pipe's write end, and holds it
            write_pid(pid_file)
            time.sleep(SLEEP)
            os._exit(0)
        read_pid(pid_file)  # crash only once the grandchild really runs
        os._exit(5)

    started = time.monotonic()
    try:
        with pytest.raises(IsolationError, match="exited with status 5"):
            run(fork_then_crash)
        # Reported when the child died, not when the grandchild lets go of the pipe;
        # the bound leaves room for a loaded machine.
        assert time.monotonic() - started < SLEEP / 5
        grandchild = read_proc(pid_file)
        wait_until(lambda: not lives(grandchild), 30, "the grandchild was swept with its group")
    finally:
        if (grandchild := proc_in(pid_file)) is not None:
            kill(grandchild)


# --- time limits and cleanup ------------------------------------------------------------


def test_time_limit_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    try:
        with pytest.raises(TimeLimitExceeded, match=r"time limit of 1.0s") as caught:
            run(lambda: write_pid_and_sleep(pid_file), time_limit=1.0)
        # Stopped at its limit: never before it, and long before the body's sleep would
        # have ended (the bound leaves room for a loaded machine).
        assert 1.0 <= time.monotonic() - started < SLEEP / 5
        killed = re.search(r"child pid (\d+) killed", str(caught.value))
        assert killed is not None, str(caught.value)
        pid = int(killed[1])
        child = read_stat(pid)
        assert child is None or child.ppid != os.getpid()  # reaped: no child of ours has it
        body = proc_in(pid_file)  # written unless the limit struck before the body began
        assert body is None or (body.pid == pid and not lives(body))
    finally:
        if (body := proc_in(pid_file)) is not None:
            kill(body)


def test_interrupted_parent_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def interrupt_once_the_body_runs() -> None:
        read_pid(pid_file)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    interrupter = threading.Thread(target=interrupt_once_the_body_runs, daemon=True)
    started = time.monotonic()
    interrupter.start()
    try:
        with pytest.raises(Interrupted):
            run(lambda: write_pid_and_sleep(pid_file), time_limit=SLEEP * 2)
        assert time.monotonic() - started < SLEEP / 5  # killed, not waited for
        body = proc_in(pid_file)
        assert body is not None and not lives(body)
        assert our_zombies() == []  # and reaped
    finally:
        interrupter.join(60)
        signal.signal(signal.SIGUSR1, previous)
        if (body := proc_in(pid_file)) is not None:
            kill(body)


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    script = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from graftq.tasks.isolation import run_isolated
        from tests.processes import write_pid

        def sleeper():
            write_pid({str(pid_file)!r})
            time.sleep(60)

        run_isolated(sleeper, encode=lambda v: json.dumps(v).encode(), decode=json.loads)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        grandchild = read_proc(pid_file)
        assert lives(grandchild)
        proc.kill()
        proc.wait(30)
        wait_until(lambda: not lives(grandchild), 30, "the isolated child died with its parent")
    finally:
        proc.kill()
        proc.wait(30)
        if (grandchild := proc_in(pid_file)) is not None:
            kill(grandchild)
