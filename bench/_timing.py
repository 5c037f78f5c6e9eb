"""Time stamps of each phase of a job, taken inside the worker processes (breakdown mode).

The bench's worker apps call `install_from_env(...)`; it does nothing unless
``BENCH_TIMING_DIR`` is set. Then, in each worker process, it wraps (graftq's code is
not edited; these wrappers are the bench's own):

* Celery: the ``task_prerun`` / ``task_postrun`` signals and the result backend's
  ``store_result`` (the STARTED write before the task, the SUCCESS write after it; both
  bench apps use graftq's `RedisBackend`, which leaves out the writes a graftq job made
  itself in its first read and its commit: those steps then take no time here);
* graftq, when ``graftq=True``: ``graftq.worker.task.run_job`` (the task body), and in
  ``graftq.tasks.runner`` the names ``prepare``, ``execute_body`` and ``run_isolated``
  (with the body, setup, encode and decode it is given), ``EntityRegistry.commit``,
  and ``os.waitpid`` (as ``os.wait4``, for the forked child's CPU time and page faults);
  with a zygote (the default on a worker), ``graftq.tasks.isolation.zygote``'s ``_request`` and
  ``Zygote._collect`` (the child runs in another process: only its span is seen).

A pool child stamps ``time.time()`` (one clock for every process on the host) for the
job it runs; a forked body child writes its stamps into an anonymous shared mapping
that the pool child reads once the child is gone, so the child makes no extra system
call. At ``task_postrun`` — after the result was stored — the pool child appends one
JSON line per job to ``BENCH_TIMING_DIR/<pid>.jsonl``. `load` reads them back and
`phases` turns them into per-phase durations.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "BENCH_TIMING_DIR"
_CHILD_STAMPS = ("child_setup", "body_start", "body_end", "encode_end", "child_forked")
_SLOT = struct.Struct("d")
_state: dict[str, Any] = {"pid": -1, "id": None, "stamps": {}, "shared": None}


def stamp(name: str, value: float | None = None) -> None:
    """Record `name` for the current job of this process (no-op between jobs)."""
    if _state["id"] is not None and _state["pid"] == os.getpid():
        _state["stamps"][name] = time.time() if value is None else value


def _begin(task_id: str) -> None:
    _state.update(pid=os.getpid(), id=task_id, stamps={})
    stamp("prerun")


def _flush(directory: str) -> None:
    if _state["id"] is None or _state["pid"] != os.getpid():
        return
    line = json.dumps({"id": _state["id"], **_state["stamps"]})
    with open(Path(directory, f"{os.getpid()}.jsonl"), "a") as out:
        out.write(line + "\n")
    _state.update(id=None, stamps={})


def _shared() -> mmap.mmap:
    """This pool child's page shared with its forked children (made after the pool fork)."""
    shared = _state["shared"]
    if shared is None or shared[0] != os.getpid():
        shared = (os.getpid(), mmap.mmap(-1, mmap.PAGESIZE))  # MAP_SHARED | MAP_ANONYMOUS
        _state["shared"] = shared
    page: mmap.mmap = shared[1]
    return page


def _put(page: mmap.mmap, slot: int) -> None:
    _SLOT.pack_into(page, slot * _SLOT.size, time.time())


def _wrap(owner: Any, name: str, before: str, after: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamp(before)
        try:
            return original(*args, **kwargs)
        finally:
            stamp(after)

    setattr(owner, name, wrapped)


def _install_celery(directory: str) -> None:
    from celery.signals import task_postrun, task_prerun
    from celery.states import READY_STATES, STARTED

    from graftq.worker.backend import RedisBackend as Backend

    store_result = Backend.store_result

    def stored(self: Any, task_id: str, result: Any, state: str, *args: Any, **kw: Any) -> Any:
        if state in READY_STATES:
            stamp("store_start")
        try:
            return store_result(self, task_id, result, state, *args, **kw)
        finally:
            stamp("started_stored" if state == STARTED else "store_end")

    def prerun(task_id: str, task: Any, **_: Any) -> None:
        _begin(task_id)
        if not task.track_started:  # a graftq job stores STARTED in its first read
            stamp("started_stored")

    Backend.store_result = stored  # type: ignore[method-assign]
    task_prerun.connect(prerun, weak=False)
    task_postrun.connect(lambda **_: _flush(directory), weak=False)


def _isolated(run_isolated: Callable[..., Any]) -> Callable[..., Any]:
    """`run_isolated` with the child's stamps taken in a shared page."""

    def timed(call: Callable[[], Any], *, encode: Any, decode: Any, **kw: Any) -> Any:
        page = _shared()
        page[:] = bytes(len(page))
        setup = kw.pop("setup", None)

        def child_setup() -> None:
            _put(page, 0)
            if setup is not None:
                setup()

        def body() -> Any:
            _put(page, 1)
            try:
                return call()
            finally:
                _put(page, 2)

        def encoded(value: Any) -> bytes:
            try:
                payload: bytes = encode(value)
                return payload
            finally:
                _put(page, 3)

        def decoded(payload: bytes) -> Any:
            stamp("decode_start")
            return decode(payload)

        stamp("iso_call")
        try:
            return run_isolated(body, encode=encoded, decode=decoded, setup=child_setup, **kw)
        finally:
            stamp("iso_return")
            for slot, name in enumerate(_CHILD_STAMPS):
                if value := _SLOT.unpack_from(page, slot * _SLOT.size)[0]:
                    stamp(name, value)

    return timed


def _install_fork() -> None:
    """`os.fork` stamped on both sides: the parent's system call, the child's first step."""
    fork = os.fork

    def forked() -> int:
        stamp("fork_call")
        pid = fork()
        if pid == 0:
            page = _state["shared"]
            if page is not None:
                _put(page[1], _CHILD_STAMPS.index("child_forked"))
        else:
            stamp("fork_return")
        return pid

    os.fork = forked


def _install_graftq() -> None:
    import graftq.tasks.isolation.fork as fork
    import graftq.tasks.isolation.zygote as zygote
    import graftq.tasks.runner as runner
    import graftq.worker.task as task
    from graftq.registry.store import EntityRegistry

    _install_fork()
    _wrap(fork, "_collect", "collect_start", "frame_read")
    _wrap(zygote, "_request", "request_start", "request_end")
    _wrap(zygote.Zygote, "_collect", "collect_start", "frame_read")
    _wrap(task, "run_job", "job_start", "job_end")
    _wrap(runner, "prepare", "prepare_start", "prepare_end")
    _wrap(runner, "execute_body", "exec_start", "exec_end")
    _wrap(EntityRegistry, "commit", "commit_start", "commit_end")
    runner.run_isolated = _isolated(runner.run_isolated)  # type: ignore[assignment]
    waitpid = os.waitpid

    def waited(pid: int, options: int) -> tuple[int, int]:
        if pid <= 0 or options != 0:
            return waitpid(pid, options)
        got, status, usage = os.wait4(pid, 0)
        stamp("reaped")
        stamp("child_cpu", usage.ru_utime + usage.ru_stime)
        stamp("child_faults", float(usage.ru_minflt))
        return got, status

    os.waitpid = waited


def install_from_env(*, graftq: bool) -> None:
    """Used by the bench's worker apps: time the phases only when the benchmark asks."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    _install_celery(directory)
    if graftq:
        _install_graftq()


# -- the producer side (in the benchmark process) ---------------------------------


def install_producer() -> Callable[[], float]:
    """Stamp the broker write (kombu's Redis ``_put``: the LPUSH) in this process; returns
    a function giving the time of the latest one. `send_task` does more after it (the
    task-sent event), during which the job may already run."""
    from kombu.transport.redis import Channel

    put, last = Channel._put, [0.0]

    def timed_put(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return put(self, *args, **kwargs)
        finally:
            last[0] = time.time()

    Channel._put = timed_put
    return lambda: last[0]


# -- reading them back (in the benchmark process) ---------------------------------

# Each chain is a list of (phase, step, from-stamp, to-stamp); consecutive, so the steps
# add up to the job's time from the submit call to the stored result.
_BROKER = [
    ("producer", "submit: resolve, validate, send_task to the LPUSH", "submit_start", "enqueued"),
    ("broker", "BRPOP wake-up, worker main → pool child", "enqueued", "prerun"),
    ("broker", "Celery STARTED write (graftq: in its first read)", "prerun", "started_stored"),
]
_INPUT = [
    ("broker", "Celery → graftq task body", "started_stored", "job_start"),
    ("input load", "input digest", "job_start", "prepare_start"),
    (
        "input load",
        "prepare: replay check + resolve + load (1 script), validate",
        "prepare_start",
        "prepare_end",
    ),
]
_STORE = [
    ("result store", "return to Celery", "commit_end", "store_start"),
    ("result store", "Celery SUCCESS write (graftq: in its commit)", "store_start", "store_end"),
]
CHAINS: dict[str, list[tuple[str, str, str, str]]] = {
    "plain": [
        *_BROKER,
        ("run", "task (no-op) and Celery's bookkeeping", "started_stored", "store_start"),
        ("result store", "Celery SUCCESS write", "store_start", "store_end"),
    ],
    "fork": [
        *_BROKER,
        *_INPUT,
        ("fork/hand-off", "memo check, pipe", "prepare_end", "fork_call"),
        ("fork/hand-off", "fork until the child runs", "fork_call", "child_forked"),
        (
            "fork/hand-off",
            "child prologue: pdeathsig, signals, sockets",
            "child_forked",
            "child_setup",
        ),
        ("fork/hand-off", "store.isolate in the child", "child_setup", "body_start"),
        ("run", "body", "body_start", "body_end"),
        ("result transfer", "encode (typed JSON) in child", "body_end", "encode_end"),
        ("result transfer", "sweep leftovers, frame through the pipe", "encode_end", "frame_read"),
        ("result transfer", "child exit, reap", "frame_read", "decode_start"),
        ("result transfer", "decode", "decode_start", "iso_return"),
        ("commit", "return check, Execution record", "iso_return", "commit_start"),
        ("commit", "WATCH/MGET/MULTI…EXEC", "commit_start", "commit_end"),
        *_STORE,
    ],
    "fork-zygote": [
        *_BROKER,
        *_INPUT,
        ("fork/hand-off", "memo check", "prepare_end", "exec_start"),
        ("fork/hand-off", "request: the arguments pickled", "exec_start", "request_end"),
        (
            "run",
            "child forked ahead reads, runs, encodes, answers",
            "request_end",
            "frame_read",
        ),
        ("result transfer", "decode, return check", "frame_read", "exec_end"),
        ("commit", "Execution record", "exec_end", "commit_start"),
        ("commit", "WATCH/MGET/MULTI…EXEC", "commit_start", "commit_end"),
        *_STORE,
    ],
    "none": [
        *_BROKER,
        *_INPUT,
        ("fork/hand-off", "memo check", "prepare_end", "exec_start"),
        ("run", "body + return check (in-process)", "exec_start", "exec_end"),
        ("commit", "Execution record", "exec_end", "commit_start"),
        ("commit", "WATCH/MGET/MULTI…EXEC", "commit_start", "commit_end"),
        *_STORE,
    ],
}
# Not on the chain: overlapping or side measurements, (label, from-stamp, to-stamp).
ASIDE = [
    (
        "producer after the LPUSH (sent event, AsyncResult), overlaps the job",
        "enqueued",
        "submit_end",
    ),
    ("os.fork system call in the pool child", "fork_call", "fork_return"),
]


def load(directory: str) -> dict[str, dict[str, float]]:
    """Every job's stamps, by job id."""
    jobs: dict[str, dict[str, float]] = {}
    for path in Path(directory).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            jobs[record.pop("id")] = record
    return jobs


Row = tuple[str, str, float, float]  # phase, step, median ms, mean ms


def _row(phase: str, step: str, values: list[float]) -> Row:
    if not values:
        return (phase, step, float("nan"), float("nan"))
    return (phase, step, statistics.median(values), statistics.fmean(values))


def phases(chain: str, jobs: list[dict[str, float]]) -> list[Row]:
    """(phase, step, median ms, mean ms) along the chain, the total, then asides.

    The means add up to the mean total; the medians do not (on a busy host a step's
    time has a long tail), but are steadier from run to run.
    """
    rows = []
    if chain == "fork" and jobs and "request_end" in jobs[0]:
        chain = "fork-zygote"  # the worker's bodies ran in its fork server
    for phase, step, start, end in CHAINS[chain]:
        values = [(job[end] - job[start]) * 1e3 for job in jobs if start in job and end in job]
        rows.append(_row(phase, step, values))
    first, last = CHAINS[chain][0][2], CHAINS[chain][-1][3]
    totals = [(job[last] - job[first]) * 1e3 for job in jobs]
    rows.append(_row("total", "submit → result stored", totals))
    for label, start, end in ASIDE:
        values = [(job[end] - job[start]) * 1e3 for job in jobs if start in job and end in job]
        if values:
            rows.append(_row("(aside)", label, values))
    for extra, label in (("child_cpu", "forked child CPU (ms)"), ("child_faults", "child faults")):
        values = [
            job[extra] * (1e3 if extra == "child_cpu" else 1.0) for job in jobs if extra in job
        ]
        if values:
            rows.append(_row("(aside)", label, values))
    return rows
