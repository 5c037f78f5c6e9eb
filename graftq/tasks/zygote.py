"""A lean fork server: each isolated call runs in a child forked ahead of demand.

Forking a worker's pool process costs CPU in proportion to its memory — celery,
kombu, redis-py and all a worker has touched — and sits on every job's critical
path. A zygote is a fresh interpreter that imports only the App's module (graftq
keeps Celery and redis-py out of that import) and forks its next child before the
call arrives, so the fork is cheap and done by the time it is needed. Where the
host has transparent huge pages, its heap lives in them (fewer pages to copy).

Three channels join the pool process (P), the zygote (Z) and its current child (C)::

    control  socketpair P <-> Z   P: call request, kill;   Z: ready, status (C ended)
    data     socketpair P <-> C   C: what it logs and prints, then its result frame
    feed     pipe Z -> C          Z hands C the call request

A call: P sends the request; Z passes it to its waiting child; C runs it isolated
(every store an overlay, sockets it inherited pointed at /dev/null, a subreaper that
kills what it started) and writes its frame to P; Z reaps C, kills anything left,
tells P how C ended, and forks the next child. On a time limit P asks Z to kill C.
What the body logs or prints travels to P as it happens and is logged there, in the
job's context, as if the body had run in P (a direct fork inherits P's logging).
P never waits on a child it did not fork, and a stale request can never reach the
next child: each child has its own feed. Z dies with P, C with Z (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import pydantic_core

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.registry.overlay import isolate_stores
from graftq.tasks import encoding, isolation

_REQUEST, _KILL, _READY, _STATUS, _OUTPUT = b"Q", b"K", b"H", b"S", b"L"
_START_TIMEOUT = 60.0  # seconds a zygote may take to import the App's module
_HUGE_PAGES = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


class Zygote:
    """The pool process's side: starts the fork server and runs calls through it."""

    def __init__(self, app_path: str, *, huge_pages: bool = True) -> None:
        self.app_path = app_path
        control, self._control = socket.socketpair()
        data, self._data = socket.socketpair()
        env = {**os.environ, **(_HUGE_PAGES if huge_pages else {})}
        # -c, not -m: graftq imports this module, and runpy would warn about a second copy
        entry = "from graftq.tasks.zygote import main; main()"
        command = [sys.executable, "-c", entry, app_path, str(control.fileno()), str(data.fileno())]
        try:
            self._process = subprocess.Popen(
                command, pass_fds=(control.fileno(), data.fileno()), env=env
            )
        finally:
            control.close()
            data.close()
        self._ready = False

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        """Stop the zygote (it kills its waiting child) and reap it."""
        for sock in (self._control, self._data):
            with contextlib.suppress(OSError):
                sock.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def run(
        self,
        name: str,
        request: dict[str, Any],
        *,
        decode: Callable[[bytes], Any],
        time_limit: float | None = None,
    ) -> Any:
        """Run one call; the decoded result, the call's own exception, or IsolationError."""
        if not self._ready:
            self._await_ready()
        request = {**request, "log_level": logging.getLogger().getEffectiveLevel()}
        _send(self._control, _REQUEST, json.dumps(request).encode())
        deadline = None if time_limit is None else time.monotonic() + time_limit
        try:
            frame, status = self._collect(deadline)
        except BaseException:  # e.g. Celery's soft time limit: the child must not outlive us
            self._abandon()
            raise
        where = f"isolated call {name} (zygote child pid {status['pid']})"
        if frame is None and status.get("killed"):
            raise TimeLimitExceeded(
                f"isolated call {name} exceeded its time limit of {time_limit}s "
                f"and was stopped (zygote child pid {status['pid']} killed)"
            )
        if frame is None:
            raise IsolationError(f"{where} {_describe(status['status'])} before sending a result")
        kind, payload = frame
        if kind == isolation._RESULT:
            return decode(payload)
        raise isolation._remote_error(payload, where) from None

    def _abandon(self) -> None:
        """Kill the running child and wait for the zygote to say it is gone; a zygote that
        does not answer is stopped (the next call starts another)."""
        try:
            _send(self._control, _KILL, b"")
            while _readable([self._control], _START_TIMEOUT):
                if _receive(self._control)[0] == _STATUS:
                    _drain(self._data)
                    return
        except (OSError, IsolationError):
            pass
        self._process.kill()
        self.close()

    def _await_ready(self) -> None:
        ready = _readable([self._control], _START_TIMEOUT)
        kind = _receive(self._control)[0] if ready else None
        if kind != _READY:
            code = self._process.poll()
            raise IsolationError(
                f"the zygote for {self.app_path} did not start"
                + ("" if code is None else f" (exit status {code})")
            )
        self._ready = True

    def _collect(self, deadline: float | None) -> tuple[tuple[bytes, bytes] | None, dict[str, Any]]:
        """The child's frame (if it sent one) and the zygote's status of the child."""
        frame: tuple[bytes, bytes] | None = None
        killed = False
        while True:
            wait = None if deadline is None or killed else max(0.0, deadline - time.monotonic())
            readable = _readable([self._control, self._data], wait)
            if not readable:  # past the deadline: the zygote kills the child and says so
                _send(self._control, _KILL, b"")
                killed = True
                continue
            if self._data in readable and frame is None:
                frame = _output_or(_receive(self._data))
            if self._control in readable:
                kind, payload = _receive(self._control)
                if kind != _STATUS:
                    raise IsolationError(f"the zygote for {self.app_path} sent {kind!r}")
                status: dict[str, Any] = json.loads(payload)
                if frame is None:  # the child may have written just before it ended
                    frame = _drain(self._data)
                status["killed"] = killed and frame is None
                return frame, status


def _output_or(frame: tuple[bytes, bytes]) -> tuple[bytes, bytes] | None:
    """The frame, unless it is the body's output: that is logged here (None)."""
    kind, payload = frame
    if kind != _OUTPUT:
        return frame
    line = json.loads(payload)
    if line["stream"] == "log":
        logging.getLogger(line["name"]).log(line["level"], "%s", line["text"])
    else:  # printed: to this process's own stream (a worker logs it, tagged)
        stream = sys.stdout if line["stream"] == "out" else sys.stderr
        stream.write(line["text"])
        stream.flush()
    return None


def _readable(sources: list[Any], timeout: float | None) -> list[Any]:
    """Those of `sockets or fds` ready to read within `timeout` seconds (None: no limit)."""
    poller = select.poll()
    by_fd = {}
    for source in sources:
        fd = source if isinstance(source, int) else source.fileno()
        by_fd[fd] = source
        poller.register(fd, select.POLLIN)
    events = poller.poll(None if timeout is None else timeout * 1000)
    return [by_fd[fd] for fd, _ in events]


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(number).name}"
        return f"was killed by signal {number}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# --- frames ---------------------------------------------------------------------------


def _send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(isolation._HEADER.pack(kind, len(payload)) + payload)


def _receive(sock: socket.socket) -> tuple[bytes, bytes]:
    """One frame; a closed socket → IsolationError."""
    header = _exactly(sock, isolation._HEADER.size)
    kind, size = isolation._HEADER.unpack(header)
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


def _drain(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """A complete frame already waiting on `sock`, else None; leftovers are dropped."""
    buffer = bytearray()
    sock.setblocking(False)
    try:
        while chunk := sock.recv(1 << 20):
            buffer += chunk
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    while isolation._complete(buffer):
        kind, size = isolation._HEADER.unpack_from(buffer)
        start = isolation._HEADER.size
        frame = _output_or((kind, bytes(buffer[start : start + size])))
        if frame is not None:
            return frame
        del buffer[: start + size]
    return None


# --- the zygote process ----------------------------------------------------------------


def _serve(app_path: str, control: socket.socket, data: socket.socket) -> None:
    """Import the App's module, then fork one child per call, each ahead of demand."""
    prctl = isolation._prctl()
    if prctl is not None:
        prctl(isolation._PR_SET_PDEATHSIG, int(signal.SIGKILL))
        prctl(isolation._PR_SET_CHILD_SUBREAPER, 1)
        prctl(isolation._PR_SET_NAME, b"graftq-zygote")
    module_name, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    # Whatever the import connected to is closed here, once, not in each child.
    isolation._neutralize_sockets(data.fileno(), control.fileno())
    _send(control, _READY, b"")
    while True:
        feed_read, feed_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            control.close()
            os.close(feed_write)
            _child(feed_read, data, app)
        os.close(feed_read)
        if not _supervise(pid, feed_write, control):
            return


def _supervise(pid: int, feed: int, control: socket.socket) -> bool:
    """Pass the next request to child `pid`, until it ends; False once P is gone."""
    pidfd = os.pidfd_open(pid)
    try:
        alive = True
        while alive and pidfd not in _readable([control.fileno(), pidfd], None):
            try:
                kind, payload = _receive(control)
            except (IsolationError, OSError):  # P closed: the child goes, and so do we
                alive = False
                kind = _KILL
            if kind == _REQUEST:
                with contextlib.suppress(BrokenPipeError):  # the child died first: see below
                    isolation._write_all(feed, payload)
                os.close(feed)
                feed = -1
            elif kind == _KILL:
                _stop(pid)
        status = os.waitpid(pid, 0)[1]
        isolation._sweep()  # whatever the child left is ours now (a subreaper): kill it
        if alive:
            _send(control, _STATUS, json.dumps({"pid": pid, "status": status}).encode())
        return alive
    finally:
        os.close(pidfd)
        if feed >= 0:
            os.close(feed)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)  # frozen, it forks no more
    isolation._kill_tree(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _child(feed: int, data: socket.socket, app: Any) -> NoReturn:
    """A spare child: wait for a request, run it isolated, send one frame, ``os._exit``."""
    code = isolation._EXIT_FAILED
    try:
        prctl = isolation._prctl()
        if prctl is not None:
            prctl(isolation._PR_SET_PDEATHSIG, int(signal.SIGKILL))
            prctl(isolation._PR_SET_CHILD_SUBREAPER, 1)
        isolation._reset_child_state()
        if prctl is not None:
            prctl(isolation._PR_SET_NAME, b"graftq-spare")
        raw = _read_all(feed)
        if not raw:  # the zygote is stopping: no call came
            os._exit(0)
        if prctl is not None:
            prctl(isolation._PR_SET_NAME, isolation.CALL_NAME)
        request = json.loads(raw)
        _forward_output(data, request["log_level"])
        kind, payload = isolation._run(
            lambda: _call(app, request),
            lambda value: pydantic_core.to_json(encoding.encode(value, pickles=True)),
            isolate_stores,
        )
        isolation._sweep()
        isolation._flush_std()
        isolation._write_all(data.fileno(), isolation._HEADER.pack(kind, len(payload)) + payload)
        code = 0
    finally:
        os._exit(code)


class _Output:
    """Sends what the body logs and prints to the pool process, one frame per write."""

    def __init__(self, data: socket.socket) -> None:
        self._data = data
        self._lock = threading.Lock()  # a body's threads may log at once

    def send(self, stream: str, text: str, name: str = "", level: int = 0) -> None:
        line = {"stream": stream, "text": text, "name": name, "level": level}
        with self._lock:
            _send(self._data, _OUTPUT, json.dumps(line).encode())


class _OutputHandler(logging.Handler):
    def __init__(self, output: _Output) -> None:
        super().__init__()
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._output.send("log", text, record.name, record.levelno)
        except Exception:
            self.handleError(record)


class _OutputStream(io.TextIOBase):
    def __init__(self, output: _Output, stream: str) -> None:
        self._output = output
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._output.send(self._stream, text)
        return len(text)


def _forward_output(data: socket.socket, level: int) -> None:
    output = _Output(data)
    root = logging.getLogger()
    root.handlers = [_OutputHandler(output)]
    root.setLevel(level)
    sys.stdout = _OutputStream(output, "out")
    sys.stderr = _OutputStream(output, "err")


def _call(app: Any, request: dict[str, Any]) -> Any:
    """Run the request's callable, as registered in the App this zygote imported."""
    info = app.callables[request["name"]]
    if info.version != request["version"]:
        raise IsolationError(
            f"callable {info.name!r} in the zygote is version {info.version}, the worker's is "
            f"{request['version']}: the code changed under a running worker; restart it"
        )
    kwargs = encoding.decode(pydantic_core.from_json(request["kwargs"]), pickles=True)
    return info.func(**kwargs)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def main() -> None:
    """The zygote process: ``python -c "..." MODULE:ATTR CONTROL_FD DATA_FD``."""
    app_path, control_fd, data_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    control = socket.socket(fileno=control_fd)
    data = socket.socket(fileno=data_fd)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the pool process left
        _serve(app_path, control, data)
