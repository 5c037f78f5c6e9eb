"""Run one call in a forked child of the calling process and carry its outcome back.

Per call the parent makes a fresh ``os.pipe()`` and forks. The child dies with its
parent (PR_SET_PDEATHSIG), leads its own process group, becomes a subreaper
(PR_SET_CHILD_SUBREAPER: whatever the call starts and then detaches with setsid or a
double fork is reparented to the child, not to init), drops inherited signal handlers
and connections, runs ``setup()``, the call (awaiting an awaitable on a fresh event loop)
and ``encode``, kills every process the call left behind, writes one frame and leaves
with ``os._exit`` — never returning into the caller or running atexit handlers::

    kind (1 byte: b"R" result | b"E" exception) | size (8 bytes, big-endian) | payload

An ``E`` payload is a pickled dict ``{exc, module, qualname, message, traceback}``;
``exc`` (cloudpickled) is None when the exception does not round-trip. The parent reads
while the child runs (results may exceed the pipe buffer) until a monotonic deadline;
on timeout or interruption it stops the child, kills the child's whole process tree
(found in /proc; detached processes are the child's own children by then) and the
child's group, then the child. It always reaps the child, and reports
a missing frame as IsolationError saying how the child died. It installs no signal
handlers, so any thread may call.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.tasks.isolation.process import (
    CALL_NAME,
    ERROR,
    EXIT_FAILED,
    HEADER,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_NAME,
    PR_SET_PDEATHSIG,
    RESULT,
    Frame,
    Prctl,
    complete,
    describe,
    flush_std,
    kill_tree,
    libc_prctl,
    neutralize_connections,
    remote_error,
    reset_child_state,
    run_framed,
    sweep,
    write_all,
)

__all__ = ["run_isolated"]

T = TypeVar("T")

_POLL_SLICE = 0.5  # seconds between checks that the child is still alive
_CHUNK = 1 << 20


def run_isolated(
    call: Callable[[], Any],
    *,
    encode: Callable[[Any], bytes],
    decode: Callable[[bytes], T],
    time_limit: float | None = None,
    setup: Callable[[], None] | None = None,
) -> T:
    """Run ``call()`` in a forked child and return ``decode(encode(result))``.

    ``setup`` and ``encode`` run in the child, ``decode`` here. An exception from
    ``setup``, the call or ``encode`` is re-raised here with the remote traceback as a
    note; a child that dies without answering, or a call that raises SystemExit,
    KeyboardInterrupt or MemoryError, raises IsolationError; running past ``time_limit``
    seconds kills the child and raises TimeLimitExceeded.
    """
    name = getattr(call, "__qualname__", None) or repr(call)
    prctl = libc_prctl()  # resolved before the fork: the child only calls it
    parent_pid = os.getpid()
    flush_std()  # or buffered output would be written twice, once by the child
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        try:
            _child(read_fd, write_fd, parent_pid, prctl, lambda: run_framed(call, encode, setup))
        finally:
            os._exit(EXIT_FAILED)
    os.close(write_fd)
    child = _Child(pid)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    try:
        frame = _collect(read_fd, pid, deadline)
        child.finish(kill=frame is None)
    finally:
        os.close(read_fd)
        child.finish(kill=True)  # only acts if we were interrupted, e.g. KeyboardInterrupt
    if frame is None:
        raise TimeLimitExceeded(
            f"isolated call {name} exceeded its time limit of {time_limit}s "
            f"and was stopped (child pid {pid} killed)"
        )
    return _outcome(frame, child, name, decode)


class _Child:
    """The forked child: its process group is swept and it is reaped exactly once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None  # wait status; None if reaped by someone else
        self.reaped = False
        with contextlib.suppress(OSError):  # the child does this too: whoever runs first
            os.setpgid(pid, pid)

    def finish(self, *, kill: bool) -> None:
        """Kill the child if asked, wait for it, kill what it left behind, reap it."""
        if self.reaped:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGSTOP)  # frozen, it forks and reaps no more
            kill_tree(self.pid)  # before the child: while it lives, orphans are its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            # WNOWAIT: the unreaped child keeps its group id from being reused meanwhile.
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(OSError):  # processes the call started and left running
            os.killpg(self.pid, signal.SIGKILL)
        try:
            self.status = os.waitpid(self.pid, 0)[1]
        except ChildProcessError:  # a SIGCHLD handler elsewhere reaped it first
            self.status = None
        self.reaped = True

    def describe(self) -> str:
        if self.status is None:
            return "vanished (reaped elsewhere, exit status unknown)"
        return describe(self.status)


def _collect(fd: int, pid: int, deadline: float | None) -> bytearray | None:
    """Read the child's frame while it runs; None if the deadline passed first.

    Stops at a complete frame, at EOF, or once the child has exited and the pipe is
    drained (a process the call forked may still hold the write end open).
    """
    buf = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    exited = False
    while not complete(buf):
        wait = _POLL_SLICE if deadline is None else min(_POLL_SLICE, deadline - time.monotonic())
        if wait <= 0:
            return None
        if poller.poll(0 if exited else wait * 1000):
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            buf += chunk
        elif exited:
            break
        else:
            exited = _has_exited(pid)
    return buf


def _has_exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _outcome(buf: bytearray, child: _Child, name: str, decode: Callable[[bytes], T]) -> T:
    where = f"isolated call {name} (child pid {child.pid})"
    if not complete(buf):
        raise IsolationError(
            f"{where} {child.describe()} before sending a complete result "
            f"({len(buf)} bytes received)"
        )
    kind, size = HEADER.unpack_from(buf)
    payload = bytes(memoryview(buf)[HEADER.size : HEADER.size + size])
    if kind == RESULT:
        return decode(payload)
    if kind == ERROR:
        raise remote_error(payload, where) from None
    raise IsolationError(f"{where} sent an unknown frame kind {kind!r}")


def _child(
    read_fd: int, write_fd: int, parent_pid: int, prctl: Prctl, work: Callable[[], Frame]
) -> NoReturn:
    """The fork branch: prepare, run, send one frame, ``os._exit``; never returns."""
    code = EXIT_FAILED
    try:
        os.close(read_fd)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            prctl(PR_SET_NAME, CALL_NAME)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(EXIT_FAILED)
        reset_child_state()
        neutralize_connections(write_fd)
        kind, payload = work()
        sweep()  # the call is over: nothing it started may outlive it
        flush_std()  # before the frame, so the parent never waits on a blocked flush
        write_all(write_fd, HEADER.pack(kind, len(payload)))
        write_all(write_fd, payload)
        code = 0
    finally:
        os._exit(code)
