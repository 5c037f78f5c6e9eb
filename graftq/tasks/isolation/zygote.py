"""A lean fork server: each isolated call runs in a child forked ahead of demand.

Forking a worker's pool process costs CPU in proportion to its memory — celery,
kombu, redis-py and all a worker has touched — and sits on every job's critical
path. A zygote is a fresh interpreter that imports only the App's module (graftq
keeps Celery and redis-py out of that import) and forks its next child before the
call arrives, so the fork is cheap and done by the time it is needed. (Its heap is
not kept in transparent huge pages: they split back into 4 KiB pages within a few
calls, as the zygote writes pages its child shares; bench/RESULTS.md.)

Two channels join the pool process (P), the zygote (Z) and its current child (C)::

    data     socketpair P <-> C   P: the request;  C: "started", what it logs and prints, its result
    control  socketpair P <-> Z   P: kill;  Z: ready, and the status of each child that ended

A call: P writes the request; the waiting child sees it, says it started, reads
it, runs it isolated (every store an overlay, a subreaper that kills what it
started) and writes its frame; P has its answer. Z, woken only by the child's end,
reaps it, kills anything left, throws away a request no child read (its child died
first), tells P how the child ended and whether it left a request unread, and forks
the next. P reads that status before its next request, so no request can reach a
child it was not meant for; a status that is neither about a started child nor about
an unread request is a spare that died idle, and P goes on waiting — for a few, then
it stops the zygote (its App's module kills every child, say) and fails the call. On a
time limit P asks Z to kill C. What the body logs or prints travels to P as it happens
and is logged there, in the job's context, as if the body had run in P (a direct fork
inherits P's logging). Z ends when P does (its socket closes), killing C's whole tree
first; C dies with Z (PDEATHSIG). Were Z killed itself, what C had detached (setsid, a
double fork) would be left to init: a worker's P is their subreaper instead, and kills
them once it sees Z gone (`reaper`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from graftq.errors import IsolationError, TimeLimitExceeded
from graftq.registry.overlay import isolate_stores
from graftq.tasks import encoding, results
from graftq.tasks.isolation import output, process, rawfork, rehearsal
from graftq.tasks.isolation.process import Frame, receive, send

_REQUEST, _STARTED, _KILL, _READY, _STATUS = b"Q", b"A", b"K", b"H", b"S"
_RESENDS = 3  # a request whose child died before starting it goes to the next one, so often
_IDLE_DEATHS = 5  # spares that die before taking a call, in a row, before the zygote is stopped
_START_TIMEOUT = 60.0  # seconds a zygote may take to import the App's module
_EXIT_NICENESS = 19  # a child that has answered exits at the lowest priority (see `_child`)
# A status: pid, wait status, whether a request was left unread. Binary, not JSON: the
# zygote sends one per call, and every object its code touches is a page it copies.
_REPORT = struct.Struct("!ii?")
_NAMED = 3  # changed files a refusal names
Stamps = Mapping[str, tuple[int, int]]  # source file -> (mtime in ns, size)


class Ended(NamedTuple):
    """The zygote's word on a child that ended."""

    pid: int
    status: int  # as os.waitpid gives it
    unread: bool  # it left a request unread (it died before taking it)
    killed: bool = False  # P asked for it to be killed (its time limit passed)


class Zygote:
    """The pool process's side: starts the fork server and runs calls through it."""

    def __init__(
        self, app_path: str, *, reaper: bool = False, loaded: Stamps | None = None
    ) -> None:
        """`reaper`: this process adopts and kills what a call leaves when the zygote
        itself is killed — every descendant it has then, so only for a process whose
        only child is its zygote (a worker's pool process). `loaded`: the `loaded_code`
        of the process whose code the calls must run (a worker's main process); a zygote
        that imports a file changed since is refused (`check`)."""
        self.app_path = app_path
        self._reaper = reaper
        self._loaded = loaded
        prctl = process.libc_prctl()
        if reaper and prctl is not None:
            prctl(process.PR_SET_CHILD_SUBREAPER, 1)
        control, self._control = socket.socketpair()
        data, self._data = socket.socketpair()
        # -c, not -m: graftq imports this module, and runpy would warn about a second copy;
        # its first lines record the at-fork hooks of all it imports (see rawfork)
        entry = rawfork.RECORD + "from graftq.tasks.isolation.zygote import main; main(hooks)"
        fds = (control.fileno(), data.fileno())
        level = logging.getLogger().getEffectiveLevel()  # set once in the zygote (`_serve`)
        command = [sys.executable, "-c", entry, app_path, *map(str, (*fds, level))]
        try:
            self._process = subprocess.Popen(command, pass_fds=fds)
        finally:
            control.close()
            data.close()
        self._ready = False
        self._owed = False  # the status of the last child is still to be read
        self._received = bytearray()  # from the data channel, not yet whole frames

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
        if self._reaper:
            process.sweep()  # a killed zygote's call left its detached processes to us

    def run(
        self, name: str, version: str, kwargs: dict[str, Any], *, time_limit: float | None = None
    ) -> Any:
        """Call the callable `name` (at `version`, as the zygote imported it) on `kwargs`.

        The value it returned (as typed JSON: its own classes), the call's own exception,
        `TimeLimitExceeded`, or `IsolationError` if the child died.
        """
        if not self._ready:
            self._await_ready()
        if self._owed:
            self._status()
            self._discard()
        request = _request(name, version, kwargs)
        send(self._data, _REQUEST, request)
        deadline = None if time_limit is None else time.monotonic() + time_limit
        try:
            outcome = self._collect(deadline, request)
        except BaseException:  # e.g. Celery's soft time limit: the child must not outlive us
            self._abandon()
            raise
        if isinstance(outcome, Ended):
            where = f"isolated call {name} (zygote child pid {outcome.pid})"
            if outcome.killed:
                raise TimeLimitExceeded(
                    f"{where} exceeded its time limit of {time_limit}s and was stopped"
                )
            ended = process.describe(outcome.status)
            raise IsolationError(f"{where} {ended} before sending a result")
        kind, payload = outcome
        if kind == process.RESULT:
            return encoding.loads(payload, pickles=True)  # from our own child
        raise process.remote_error(payload, f"isolated call {name}") from None

    def _status(self) -> Ended:
        """The zygote's status of the child that ended; a silent zygote is stopped."""
        self._owed = False
        if _readable([self._control], _START_TIMEOUT):
            try:
                kind, payload = receive(self._control)
            except (IsolationError, OSError):  # it closed: it died
                raise self._lost("died") from None
            if kind == _STATUS:
                return Ended(*_REPORT.unpack(payload))
        raise self._stopped("stopped answering; it was killed")

    def _abandon(self) -> None:
        """Kill the running child, wait until the zygote says it is gone, drop its output."""
        with contextlib.suppress(OSError, IsolationError):
            send(self._control, _KILL, b"")
            self._status()
            self._discard()

    def check(self) -> None:
        """Wait until the zygote is ready; IsolationError if it cannot run this process's
        calls: it did not start, or it imported code other than `loaded`."""
        if not self._ready:
            self._await_ready()

    def _await_ready(self) -> None:
        try:
            ready = _readable([self._control], _START_TIMEOUT)
            kind, payload = receive(self._control) if ready else (None, b"")
        except (IsolationError, OSError):  # it closed: it died importing the App's module
            kind = None
        if kind != _READY:
            raise self._lost("could not start (its error is in the worker's log)")
        changed = _changed(self._loaded, pickle.loads(payload))  # from our own child
        if changed:
            raise self._stopped(f"imported other code: {changed} since the worker loaded it")
        self._ready = True

    def _collect(self, deadline: float | None, request: bytes) -> Frame | Ended:
        """The child's frame, or the zygote's status of a child that ended without one.

        With a frame, the child's status is left to be read before the next request
        (the child has ended its call; its exit is no reason to wait). A request its
        child died without starting (a spare killed from outside) never ran: it goes to
        the next child — a few times; when no child lives to take it, the zygote is
        stopped and the call fails. Frames are read as they come, never waited for whole:
        a child may die in the middle of one, and one that never stops sending must still
        meet its deadline.
        """
        killed = started = False
        resent = idle_deaths = 0
        while True:
            frame = self._frame()
            if frame is not None:
                if frame[0] == _STARTED:
                    started = True
                    continue
                self._owed = True
                return frame
            if deadline is not None and not killed and time.monotonic() >= deadline:
                send(self._control, _KILL, b"")  # the zygote kills the child and says so
                killed = True
            wait = None if deadline is None or killed else max(0.0, deadline - time.monotonic())
            readable = _readable([self._data, self._control], wait)
            if self._data in readable:
                if self._receive() == 0:  # the zygote and its child both closed it: dead
                    raise self._lost("died")
                continue
            if self._control in readable:
                status = self._status()
                if not (started or status.unread):  # a spare died idle: not our call
                    idle_deaths += 1
                    if idle_deaths <= _IDLE_DEATHS:
                        continue
                elif not (started or killed) and resent < _RESENDS:  # died before taking it
                    send(self._data, _REQUEST, request)
                    resent += 1
                    continue
                if not (started or killed):  # no child lives to take a call: fork no more
                    raise self._stopped(
                        f"was stopped: {idle_deaths + resent + 1} of its children in a row "
                        f"died before taking a call (the last, pid {status.pid}, "
                        f"{process.describe(status.status)})"
                    )
                # the child may have written just before it ended: all it wrote is here now
                frame = self._last_frame()
                return frame or status._replace(killed=killed)

    def _receive(self) -> int | None:
        """Add what the data channel holds now to what was received: how many bytes
        (0 when it is closed), None if there is nothing to read now."""
        try:
            chunk = self._data.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        self._received += chunk
        return len(chunk)

    def _frame(self) -> Frame | None:
        """The next whole frame received that is not the body's output (that is logged)."""
        while process.complete(self._received):
            kind, size = process.HEADER.unpack_from(self._received)
            start = process.HEADER.size
            frame = output.replay((kind, bytes(self._received[start : start + size])))
            del self._received[: start + size]
            if frame is not None:
                return frame
        return None

    def _last_frame(self) -> Frame | None:
        """Once the child and all it started are dead: its answer, if it sent it whole;
        whatever else is left is dropped."""
        while self._receive():
            pass
        frame = None
        while (found := self._frame()) is not None:
            if frame is None and found[0] != _STARTED:
                frame = found
        self._received.clear()
        return frame

    def _discard(self) -> None:
        """Drop what the last child, or a process it started, left on the data channel
        (half a frame, say, or the frame of a process it forked): all of them are dead."""
        while self._receive():
            pass
        self._received.clear()

    def _lost(self, what: str) -> IsolationError:
        """The zygote is gone (killed, say, or its import of the App's module failed):
        reap it and what its call left; the error to raise, saying how it ended."""
        self.close()
        code = self._process.returncode
        how = process.describe(-code if code < 0 else code << 8)  # as a wait status
        return IsolationError(f"the zygote for {self.app_path} (pid {self.pid}) {what}: it {how}")

    def _stopped(self, why: str) -> IsolationError:
        """Kill the zygote (silent, or its children die before taking a call: its App's
        module kills every child, say); the error to raise. The worker starts another
        for its next job."""
        self._process.kill()
        self.close()
        return IsolationError(f"the zygote for {self.app_path} {why}")


def loaded_code() -> dict[str, tuple[int, int]]:
    """The source file of every module this process has imported, stamped as it is now.

    A zygote is a fresh interpreter: it imports the App's module from disk, maybe long
    after the worker did (a pool process replaced, a zygote killed). Comparing the two
    stamps finds a file edited in between, whose code the worker does not run.
    """
    stamps = {}
    for module in list(sys.modules.values()):
        try:
            path = module.__file__
            if not isinstance(path, str):  # a builtin, a namespace package
                continue
            found = os.stat(path)
        except Exception:  # no such file (any more), or a lazy module proxy
            continue
        stamps[os.path.abspath(path)] = (found.st_mtime_ns, found.st_size)
    return stamps


def _changed(loaded: Stamps | None, imported: Stamps) -> str:
    """The files `imported` holds other than `loaded` (empty if none, or no `loaded`)."""
    if loaded is None:
        return ""
    changed = sorted(path for path, stamp in imported.items() if loaded.get(path, stamp) != stamp)
    more = f" and {len(changed) - _NAMED} more" if len(changed) > _NAMED else ""
    return ", ".join(changed[:_NAMED]) + more + (" changed" if changed else "")


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


def _serve(
    app_path: str,
    control: socket.socket,
    data: socket.socket,
    hooks: list[rawfork.Phases],
    log_level: int,
) -> None:
    """Import the App's module, then fork one child per call, each ahead of demand."""
    prctl = process.libc_prctl()
    if prctl is not None:
        # No parent-death signal: were Z killed with P, C would die with Z at once and
        # leave running what the call had detached (setsid, a double fork). Z sees P's
        # end of the control socket close instead, and kills C's whole tree first.
        prctl(process.PR_SET_CHILD_SUBREAPER, 1)
        prctl(process.PR_SET_NAME, b"graftq-zygote")
    module_name, _, attr = app_path.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    imported = pickle.dumps(loaded_code())  # for P to compare with what the worker loaded
    # What every child needs is done here, once: a child's every first write to a page
    # is a copy, so the less it does after the fork, the cheaper it is. The zygote
    # itself never runs a call, so it may as well be isolated, quiet and socket-free.
    process.neutralize_connections(data.fileno(), control.fileno())
    isolate_stores()
    output.forward(data)
    # P's level, set here once: setLevel clears every logger's cache, a write to each
    # logger that a child would otherwise make (and copy the pages of) on every call
    logging.getLogger().setLevel(log_level)
    forker = rawfork.Forker(hooks)
    sample = _request("", "", rehearsal.arguments())
    send(control, _READY, imported)
    del imported
    while True:
        pid = forker.fork()
        if pid == 0:
            os.close(control.detach())  # close() runs Python code: pages to copy (see `_child`)
            _child(data, app, sample)
        if not _supervise(pid, control, data):
            return


def _supervise(pid: int, control: socket.socket, data: socket.socket) -> bool:
    """Wait for child `pid` to end (killing it when P asks), then report; False once P left."""
    pidfd = os.pidfd_open(pid)
    try:
        alive = True
        while alive and pidfd not in _readable([control.fileno(), pidfd], None):
            try:
                receive(control)  # a kill request: P sends nothing else here
            except (IsolationError, OSError):  # P closed: the child goes, and so do we
                alive = False
            _stop(pid)
        status = os.waitpid(pid, 0)[1]
    finally:
        os.close(pidfd)
    process.sweep()  # whatever the child left is ours now (a subreaper): kill it
    unread = _discard_unread(data)
    if alive:
        send(control, _STATUS, _REPORT.pack(pid, status, unread))
    return alive


def _discard_unread(data: socket.socket) -> bool:
    """Drop a request its child never read (it died first); whether there was one."""
    dropped = False
    data.setblocking(False)
    try:
        while data.recv(1 << 20):
            dropped = True
    except BlockingIOError:
        pass
    finally:
        data.setblocking(True)
    return dropped


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)  # frozen, it forks no more
    process.kill_tree(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _child(data: socket.socket, app: Any, sample: bytes) -> NoReturn:
    """A spare child: rehearse, wait for a request, run it isolated, send one frame, exit.

    Its first write to any page it shares with the zygote is a page copy (a few µs on a
    VM), and most of its CPU: so around the call it sticks to plain calls rather than
    helpers that run more Python (no context managers, no JSON), and it makes the copies
    the call's way in and out needs before the call comes (`rehearsal`, on `sample`).
    """
    code = process.EXIT_FAILED
    try:
        prctl = process.libc_prctl()
        if prctl is not None:
            prctl(process.PR_SET_PDEATHSIG, int(signal.SIGKILL))
            prctl(process.PR_SET_CHILD_SUBREAPER, 1)
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        if not _readable([data], 0):  # with a request waiting, rehearsing would delay it
            try:
                rehearsal.rehearse(sample)
                process.sweep()  # a spare has no process to kill: it only runs the code
            except Exception:  # it only prepares pages: were it to fail, no call may
                pass
        if not data.recv(1, socket.MSG_PEEK):  # P is gone: no call came
            os._exit(0)
        send(data, _STARTED, b"")  # before taking the request: see the module docstring
        _, raw = receive(data)
        if prctl is not None:
            prctl(process.PR_SET_NAME, process.CALL_NAME)
        header: dict[str, Any] = {}  # `_call` reads it from the request
        kind, payload = process.run_framed(
            lambda: _call(app, raw, header),
            lambda value: results.carried(header["name"], value),
            None,
        )
        process.sweep()
        process.flush_std()
        output.close()  # the body's threads may log on: not into this frame, nor after it
        process.write_all(data.fileno(), process.HEADER.pack(kind, len(payload)) + payload)
        code = 0
    finally:
        # What is left is the exit: tearing down a copy of the zygote's memory (half a
        # millisecond here), which nothing waits for but the next spare. At the lowest
        # priority it yields to P's commit and the next job instead of competing with them.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, _EXIT_NICENESS)
        os._exit(code)


def _request(name: str, version: str, kwargs: dict[str, Any]) -> bytes:
    """A request, pickled whole (the fastest for the child to load; P is the zygote's own
    parent): a header and the arguments, themselves as typed JSON if pickle cannot name
    something in them."""
    level = logging.getLogger().getEffectiveLevel()
    header = {"name": name, "version": version, "log_level": level}
    try:
        return pickle.dumps((header, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # e.g. an instance of a class made in a function
        arguments = encoding.dumps(kwargs, pickles=True)
        return pickle.dumps((header, arguments), protocol=pickle.HIGHEST_PROTOCOL)


def _call(app: Any, request: bytes, header: dict[str, Any]) -> Any:
    """Run the request's callable, as registered in the App this zygote imported; its
    header is put in `header`."""
    loaded, arguments = pickle.loads(request)
    header.update(loaded)
    info = app.callables[header["name"]]
    if info.version != header["version"]:
        raise IsolationError(
            f"callable {info.name!r} in the zygote is version {info.version}, the worker's is "
            f"{header['version']}: the code changed under a running worker; restart it"
        )
    root = logging.getLogger()
    if root.level != header["log_level"]:  # setLevel clears every logger's cache
        root.setLevel(header["log_level"])
    kwargs = encoding.loads(arguments, pickles=True) if isinstance(arguments, bytes) else arguments
    return info.func(**kwargs)


def main(hooks: list[rawfork.Phases]) -> None:
    """The zygote process: ``python -c "..." MODULE:ATTR CONTROL_FD DATA_FD LOG_LEVEL``;
    `hooks` are the at-fork hooks registered since its first line."""
    app_path, control_fd, data_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    control = socket.socket(fileno=control_fd)
    data = socket.socket(fileno=data_fd)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the pool process left
            _serve(app_path, control, data, hooks, int(sys.argv[4]))
    finally:
        process.kill_tree(os.getpid())  # however Z ends, nothing of a call outlives it
