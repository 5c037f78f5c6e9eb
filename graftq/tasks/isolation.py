"""Run one call in a forked child process and carry its outcome back over a pipe.

Per call the parent makes a fresh ``os.pipe()`` and forks. The child dies with its
parent (PR_SET_PDEATHSIG), leads its own process group, becomes a subreaper
(PR_SET_CHILD_SUBREAPER: whatever the call starts and then detaches with setsid or a
double fork is reparented to the child, not to init), drops inherited signal handlers
and sockets, runs ``setup()``, the call (awaiting an awaitable on a fresh event loop)
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
import ctypes
import functools
import importlib
import inspect
import os
import pickle
import select
import signal
import stat
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import cloudpickle

from graftq.errors import IsolationError, TimeLimitExceeded

__all__ = ["run_isolated"]

T = TypeVar("T")

_RESULT, _ERROR = b"R", b"E"
_HEADER = struct.Struct("!cQ")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NAME = 15
CALL_NAME = b"graftq-call"  # the process name (`ps -o comm`) of a child running a call
_SWEEP_ROUNDS = 1000  # bounds the kill-and-reap loops against a call that forks without end
_EXIT_FAILED = 70  # EX_SOFTWARE: the child could not even write its frame
_POLL_SLICE = 0.5  # seconds between checks that the child is still alive
_CHUNK = 1 << 20
_Frame = tuple[bytes, bytes]  # (kind, payload)
_Prctl = Callable[..., int] | None
_RESET_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM,
)  # fmt: skip


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
    note; a child that dies without answering, or a call that raises SystemExit or
    KeyboardInterrupt, raises IsolationError; running past ``time_limit`` seconds kills
    the child and raises TimeLimitExceeded.
    """
    name = getattr(call, "__qualname__", None) or repr(call)
    prctl = _prctl()  # resolved before the fork: the child only calls it
    parent_pid = os.getpid()
    _flush_std()  # or buffered output would be written twice, once by the child
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        try:
            _child(read_fd, write_fd, parent_pid, prctl, lambda: _run(call, encode, setup))
        finally:
            os._exit(_EXIT_FAILED)
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


# --- parent side ----------------------------------------------------------------------


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
            _kill_tree(self.pid)  # before the child: while it lives, orphans are its own
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
        if os.WIFSIGNALED(self.status):
            number = os.WTERMSIG(self.status)
            try:
                return f"was killed by signal {signal.Signals(number).name}"
            except ValueError:
                return f"was killed by signal {number}"
        return f"exited with status {os.WEXITSTATUS(self.status)}"


def _collect(fd: int, pid: int, deadline: float | None) -> bytearray | None:
    """Read the child's frame while it runs; None if the deadline passed first.

    Stops at a complete frame, at EOF, or once the child has exited and the pipe is
    drained (a process the call forked may still hold the write end open).
    """
    buf = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    exited = False
    while not _complete(buf):
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


def _complete(buf: bytearray) -> bool:
    return len(buf) >= _HEADER.size and len(buf) >= _HEADER.size + _HEADER.unpack_from(buf)[1]


def _outcome(buf: bytearray, child: _Child, name: str, decode: Callable[[bytes], T]) -> T:
    where = f"isolated call {name} (child pid {child.pid})"
    if not _complete(buf):
        raise IsolationError(
            f"{where} {child.describe()} before sending a complete result "
            f"({len(buf)} bytes received)"
        )
    kind, size = _HEADER.unpack_from(buf)
    payload = bytes(memoryview(buf)[_HEADER.size : _HEADER.size + size])
    if kind == _RESULT:
        return decode(payload)
    if kind == _ERROR:
        raise _remote_error(payload, where) from None
    raise IsolationError(f"{where} sent an unknown frame kind {kind!r}")


def _remote_error(payload: bytes, where: str) -> BaseException:
    """The call's exception rebuilt here, with the remote traceback as a note."""
    try:
        info = pickle.loads(payload)
    except Exception as err:
        return IsolationError(f"{where} sent an unreadable exception: {err!r}")
    remote = f"{info['module']}.{info['qualname']}"
    exc = None
    with contextlib.suppress(Exception):
        exc = pickle.loads(info["exc"]) if info["exc"] is not None else None
    if not isinstance(exc, BaseException):
        exc = _rebuild(info["module"], info["qualname"], info["message"])
    if exc is None:
        exc = IsolationError(f"{where} raised {remote}: {info['message']}")
    elif not isinstance(exc, Exception):  # re-raising SystemExit here would end this process
        exc = IsolationError(f"{where} raised {exc!r}")
    exc.add_note("Remote traceback (isolated child):\n" + info["traceback"])
    return exc


def _rebuild(module: str, qualname: str, message: str) -> BaseException | None:
    """The named exception type built from the message, if this process can."""
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj(message)
    except Exception:
        return None
    return None


def _descendants(root: int) -> list[int]:
    """Living (not zombie) descendants of `root`, from a scan of /proc."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
        if fields[0] == b"Z":
            zombies.add(int(name))
    found, frontier = [], list(children.get(root, ()))
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(children.get(pid, ()))
    return [pid for pid in found if pid not in zombies]


def _kill_tree(root: int) -> None:
    """SIGKILL every descendant of `root` until none is left alive (root itself is spared)."""
    for _ in range(_SWEEP_ROUNDS):
        victims = _descendants(root)
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- child side -----------------------------------------------------------------------


@functools.cache
def _prctl() -> _Prctl:
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the getppid() check still applies
        return None
    return fn


def _child(
    read_fd: int, write_fd: int, parent_pid: int, prctl: _Prctl, work: Callable[[], _Frame]
) -> NoReturn:
    """The fork branch: prepare, run, send one frame, ``os._exit``; never returns."""
    code = _EXIT_FAILED
    try:
        os.close(read_fd)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            prctl(_PR_SET_CHILD_SUBREAPER, 1)
            prctl(_PR_SET_NAME, CALL_NAME)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(_EXIT_FAILED)
        _reset_child_state()
        _neutralize_sockets(write_fd)
        kind, payload = work()
        _sweep()  # the call is over: nothing it started may outlive it
        _flush_std()  # before the frame, so the parent never waits on a blocked flush
        _write_all(write_fd, _HEADER.pack(kind, len(payload)))
        _write_all(write_fd, payload)
        code = 0
    finally:
        os._exit(code)


def _sweep() -> None:
    """Kill and reap every process the call left; as a subreaper, orphans are ours too."""
    for _ in range(_SWEEP_ROUNDS):
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # reaped one; look for more
        except ChildProcessError:
            return  # no children left, so no descendants either
        _kill_tree(os.getpid())  # returns once every descendant is dead, i.e. reapable


def _reset_child_state() -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # so the parent can kill whatever the call starts, too
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RESET_SIGNALS)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)


def _neutralize_sockets(*keep: int) -> None:
    """Point inherited sockets at /dev/null so the call cannot use the parent's connections.

    dup2 rather than close: the number stays taken, so no new descriptor can reuse it
    under a stale socket object that would later write to or close it.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in map(int, names):
            if fd in (0, 1, 2, devnull, *keep):
                continue
            with contextlib.suppress(OSError):  # e.g. the listdir descriptor, now closed
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def _run(
    call: Callable[[], Any], encode: Callable[[Any], bytes], setup: Callable[[], None] | None
) -> _Frame:
    try:
        if setup is not None:
            setup()
        value = call()
        if inspect.isawaitable(value):
            value = _await_fresh(value)
        payload = encode(value)
        if not isinstance(payload, bytes):
            raise TypeError(f"encode returned {type(payload).__name__}, not bytes")
        return _RESULT, payload
    except BaseException as exc:
        return _ERROR, _exception_payload(exc)


def _await_fresh(awaitable: Awaitable[Any]) -> Any:
    import asyncio  # here, not at the top: only async callables need it

    # asyncio already ignores a loop recorded under another pid; clear it anyway, since
    # other loop implementations may keep running-loop state that survives the fork.
    asyncio.events._set_running_loop(None)

    async def wrapper() -> Any:
        return await awaitable

    return asyncio.run(wrapper())


def _exception_payload(exc: BaseException) -> bytes:
    pickled: bytes | None = None
    with contextlib.suppress(Exception):
        data: bytes = cloudpickle.dumps(exc)
        pickle.loads(data)  # must round-trip, not merely dump
        pickled = data
    info = {
        "exc": pickled,
        "module": type(exc).__module__,
        "qualname": type(exc).__qualname__,
        "message": _render(lambda: str(exc)),
        "traceback": _render(lambda: "".join(traceback.format_exception(exc))),
    }
    return pickle.dumps(info)


def _render(text: Callable[[], str]) -> str:
    try:
        return text()
    except Exception as err:  # a broken __str__ must not cost us the frame
        return f"<unprintable: {err!r}>"


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
