"""What an isolated child is and does, whoever forked it; the frames it answers with.

A frame is ``kind (1 byte) | size (8 bytes, big-endian) | payload``. A child's answer is
one ``R`` (result: what ``encode`` made of the value) or ``E`` frame (exception: a pickled
dict ``{exc, module, qualname, message, traceback}``, ``exc`` cloudpickled or None when
it does not round-trip). The child dies with its parent (PR_SET_PDEATHSIG), is a
subreaper (PR_SET_CHILD_SUBREAPER: what the call starts and then detaches with setsid or
a double fork is reparented to it, not to init), and kills what the call left behind
before it answers (`sweep`); it is named ``graftq-call`` (`ps -o comm`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import os
import pickle
import signal
import socket
import stat
import struct
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import cloudpickle

from graftq.errors import IsolationError
from graftq.tasks.exceptions import rebuilt

RESULT, ERROR = b"R", b"E"
HEADER = struct.Struct("!cQ")
Frame = tuple[bytes, bytes]  # (kind, payload)
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
CALL_NAME = b"graftq-call"  # the process name of a child running a call
EXIT_FAILED = 70  # EX_SOFTWARE: the child could not even write its frame
Prctl = Callable[..., int] | None
_SWEEP_ROUNDS = 1000  # bounds the kill-and-reap loops against a call that forks without end
_RESET_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM,
)  # fmt: skip


def describe(status: int) -> str:
    """How a child ended, from its wait status, in words for an error message."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(number).name}"
        return f"was killed by signal {number}"
    code = os.WEXITSTATUS(status)
    if code == EXIT_FAILED:  # ours: the child could not write its answer
        return (
            f"exited with status {code}: it could not send its answer (did the call close "
            "or replace the file descriptors it inherited?)"
        )
    return f"exited with status {code}"


def complete(buf: bytearray) -> bool:
    return len(buf) >= HEADER.size and len(buf) >= HEADER.size + HEADER.unpack_from(buf)[1]


def remote_error(payload: bytes, where: str) -> BaseException:
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
        exc = rebuilt(info["module"], info["qualname"], [info["message"]], load=True)
    if exc is None:
        exc = IsolationError(f"{where} raised {remote}: {info['message']}")
    elif not isinstance(exc, Exception):  # re-raising SystemExit here would end this process
        exc = IsolationError(f"{where} raised {exc!r}")
    elif isinstance(exc, MemoryError):  # the child's own: Celery would stop the worker for it
        exc = IsolationError(f"{where} ran out of memory (MemoryError: {info['message']})")
    exc.add_note("Remote traceback (isolated child):\n" + info["traceback"])
    return exc


def send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(HEADER.pack(kind, len(payload)) + payload)


def receive(sock: socket.socket) -> tuple[bytes, bytes]:
    """One frame; a closed socket → IsolationError."""
    header = _exactly(sock, HEADER.size)
    kind, size = HEADER.unpack(header)
    return kind, _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise IsolationError("the zygote's channel closed in the middle of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@functools.cache
def libc_prctl() -> Prctl:
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the getppid() check still applies
        return None
    return fn


def reset_child_state() -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # so the parent can kill whatever the call starts, too
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RESET_SIGNALS)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)


def neutralize_connections(*keep: int) -> None:
    """Point inherited sockets and pipes at /dev/null so the call cannot use the parent's
    connections (Redis, the broker, a pool process's pipes to the worker's main process).

    Standard input and output stay, as do regular files (log files). dup2 rather than
    close: the number stays taken, so no new descriptor can reuse it under a stale socket
    object that would later write to or close it.
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
                mode = os.fstat(fd).st_mode
                if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                    os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def run_framed(
    call: Callable[[], Any], encode: Callable[[Any], bytes], setup: Callable[[], None] | None
) -> Frame:
    caller = os.getpid()
    try:
        if setup is not None:
            setup()
        value = call()
        if inspect.isawaitable(value):
            value = await_fresh(value)
        _only_in(caller)
        payload = encode(value)
        if not isinstance(payload, bytes):
            raise TypeError(f"encode returned {type(payload).__name__}, not bytes")
        return RESULT, payload
    except BaseException as exc:
        _only_in(caller)
        return ERROR, exception_payload(exc)


def _only_in(caller: int) -> None:
    """End a process the call forked that returned (or raised) from the call as well
    (os.fork without os._exit): only the caller answers for the call."""
    if os.getpid() != caller:
        os._exit(0)


def await_fresh(awaitable: Awaitable[Any]) -> Any:
    import asyncio  # here, not at the top: only async callables need it

    # asyncio already ignores a loop recorded under another pid; clear it anyway, since
    # other loop implementations may keep running-loop state that survives the fork.
    asyncio.events._set_running_loop(None)

    async def wrapper() -> Any:
        return await awaitable

    return asyncio.run(wrapper())


def exception_payload(exc: BaseException) -> bytes:
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


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Descendant(NamedTuple):
    pid: int
    group: int
    session: int
    living: bool  # False for a zombie


def _descendants(root: int) -> list[_Descendant]:
    """Every descendant of `root`, zombies included, from a scan of /proc."""
    children: dict[int, list[_Descendant]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        found = _Descendant(int(name), int(fields[2]), int(fields[3]), fields[0] != b"Z")
        children.setdefault(int(fields[1]), []).append(found)
    below, frontier = [], list(children.get(root, ()))
    while frontier:
        process = frontier.pop()
        below.append(process)
        frontier.extend(children.get(process.pid, ()))
    return below


def kill_tree(root: int) -> None:
    """SIGKILL every descendant of `root` until none is left alive (root itself is spared).

    A descendant in another session than ours left with setsid, so its process group
    holds only processes of the call: that group is killed whole, once. This reaches a
    process that forks and exits in a loop: each of its pids is gone (a zombie, or born
    after the scan began) before a kill chasing it arrives, but the group, which every
    hop keeps and a zombie still names, dies at once (a group kill is atomic with fork).
    """
    ours, killed = os.getsid(0), set[int]()
    for _ in range(_SWEEP_ROUNDS):
        below = _descendants(root)
        groups = {found.group for found in below if found.session != ours} - killed
        living = [found.pid for found in below if found.living]
        if not living and not groups:
            return
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        killed |= groups
        for pid in living:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def sweep() -> None:
    """Kill and reap every process the call left; as a subreaper, orphans are ours too."""
    for _ in range(_SWEEP_ROUNDS):
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # reaped one; look for more
        except ChildProcessError:
            return  # no children left, so no descendants either
        kill_tree(os.getpid())  # returns once every descendant is dead, i.e. reapable
