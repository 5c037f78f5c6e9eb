"""run_isolated with real forks: results, exceptions, crashes, time limits, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
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
import uuid
from pathlib import Path
from typing import Any

import pytest

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.tasks.isolation import run_isolated

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


class Interrupted(Exception):
    """Raised by a test signal handler to interrupt the parent mid-wait."""


def run(call: Any, **kwargs: Any) -> Any:
    return run_isolated(call, encode=lambda v: json.dumps(v).encode(), decode=json.loads, **kwargs)


def state(pid: int) -> str | None:
    """The process state letter, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


def gone(pid: int, within: float = 5.0) -> bool:
    """True once pid is no longer a live process (an unreaped zombie counts as gone)."""
    end = time.monotonic() + within
    while state(pid) not in (None, "Z"):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def kill_if_marked(pid: int, marker: str) -> None:
    """Cleanup on failure: SIGKILL pid only if its command line carries our marker."""
    with contextlib.suppress(OSError):
        if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def kill_if_our_child(pid: int) -> None:
    """Cleanup on failure: SIGKILL and reap pid only if it is still our own child."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return
    if ppid == os.getpid():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def our_zombies() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == os.getpid():
                    pids.append(int(entry.name))
    return pids


def write_pid_and_sleep(path: Path) -> None:
    path.write_text(str(os.getpid()))
    time.sleep(60)


def wait_for_pid(path: Path, within: float = 5.0) -> int:
    end = time.monotonic() + within
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < end, f"no pid written to {path}"
        time.sleep(0.02)
    return int(path.read_text())


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


def test_sys_exit_becomes_isolation_error() -> None:
    with pytest.raises(IsolationError, match=r"SystemExit\(2\)"):
        run(lambda: sys.exit(2))


# --- crashes ----------------------------------------------------------------------------


def test_os_exit_reports_the_status() -> None:
    with pytest.raises(IsolationError, match=r"child pid \d+\) exited with status 3"):
        run(lambda: os._exit(3))
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

    def fork_then_crash_recording() -> None:
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        pid_file.write_text(str(grandchild))
        os._exit(5)

    start = time.monotonic()
    try:
        with pytest.raises(IsolationError, match="exited with status 5"):
            run(fork_then_crash_recording)
        assert time.monotonic() - start < 5
        assert gone(int(pid_file.read_text()))  # swept with the child's process group
    finally:
        if pid_file.exists():
            kill_if_marked(int(pid_file.read_text()), "pytest")


# --- time limits and cleanup ------------------------------------------------------------


def test_time_limit_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    try:
        with pytest.raises(TimeLimitExceeded, match=r"time limit of 0.5s.*child pid \d+ killed"):
            run(lambda: write_pid_and_sleep(pid_file), time_limit=0.5)
        assert time.monotonic() - start < 3
        pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        if pid_file.exists():
            kill_if_our_child(int(pid_file.read_text()))


def test_interrupted_parent_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            run(lambda: write_pid_and_sleep(pid_file), time_limit=20)
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        if pid_file.exists():
            kill_if_our_child(int(pid_file.read_text()))


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    marker = f"graftq-isolation-test-{uuid.uuid4()}"
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from graftq.tasks.isolation import run_isolated

        def sleeper():
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)

        run_isolated(sleeper, encode=lambda v: json.dumps(v).encode(), decode=json.loads)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, marker])
    grandchild = None
    try:
        grandchild = wait_for_pid(pid_file, within=10)
        assert state(grandchild) not in (None, "Z")
        proc.kill()
        proc.wait(5)
        assert gone(grandchild)
    finally:
        proc.kill()
        proc.wait(5)
        if grandchild is not None:
            kill_if_marked(grandchild, marker)
