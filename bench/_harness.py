"""The throughput benchmark's machinery: workers, /proc readings, and the three ways to time.

* `burst`: submit N jobs as fast as possible while the worker consumes them;
* `idle`: one job at a time, the next submitted once the previous result is stored;
* `drain`: N jobs wait in a queue the running (warm) worker does not consume, then
  the worker is told to consume it (Celery's ``add_consumer`` control command); the
  rate comes from the results' completion times alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
META_PREFIX = b"celery-task-meta-"
POLL = 0.25  # seconds between the harness's checks for finished results
CHUNK = 500  # keys per MGET when polling
DRAIN_QUEUE = "bench-drain"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Submit = Callable[..., str]  # submit(i, **celery_options) -> job id


# -- workers -------------------------------------------------------------------


@dataclass
class Worker:
    """A running Celery worker: its main process and its pool children."""

    pid: int
    log_path: str

    def pool(self) -> list[int]:
        return children(self.pid)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def plain_command() -> list[str]:
    """`celery -A bench.plain_celery_app worker --pool=prefork -c 2`."""
    celery_bin = str(Path(sys.executable).parent / "celery")
    return [celery_bin, "-A", "bench.plain_celery_app", "worker", "--pool=prefork", "-c", "2",
            "-n", f"plain-{os.getpid()}@%h"]  # fmt: skip


def graftq_command() -> list[str]:
    """`graftq worker --app bench.graftq_app:app -c 2`."""
    return [sys.executable, "-m", "graftq.cli", "worker", "--app", "bench.graftq_app:app",
            "-c", "2", "-n", f"graftq-{os.getpid()}@%h"]  # fmt: skip


@contextlib.contextmanager
def worker(
    command: list[str], env: dict[str, str], launcher: list[str] | None = None
) -> Iterator[Worker]:
    """Start a worker in its own session (under `launcher`, e.g. a profiler, if given);
    on exit stop it with SIGTERM, then kill what is left of the session we started."""
    handle, log_path = tempfile.mkstemp(prefix="bench-worker-", suffix=".log")
    os.close(handle)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    args = [*(launcher or []), *command, "-l", "INFO", "--without-mingle", "--without-gossip"]
    main: int | None = None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": path, **env}, close_fds=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while " ready." not in Path(log_path).read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; log in {log_path}")
            time.sleep(0.1)
        main = children(proc.pid)[0] if launcher else proc.pid
        yield Worker(main, log_path)
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(main, signal.SIGTERM)  # type: ignore[arg-type]  # None: never started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)  # a launcher (profiler) exits after the worker, writing its data
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the session we started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        Path(log_path).unlink(missing_ok=True)


# -- /proc readings --------------------------------------------------------------


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set and anonymous memory (MB) of a process."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Anonymous"):
            found[key] = int(rest.split()[0]) / 1024
    return found


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) user+system CPU seconds of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14])
    return own / CLOCK_TICKS, reaped / CLOCK_TICKS


ROLES = ("producer", "worker main", "pool children", "zygotes and body children", "redis-server")


def cpu_snapshot(redis_pid: int, main_pid: int) -> dict[str, float]:
    """CPU seconds so far of each process taking part, by role."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pools = children(main_pid)
    pool = [proc_cpu(pid) for pid in pools]
    zygotes = [proc_cpu(pid) for parent in pools for pid in children(parent)]  # alive: no cutime
    values = (
        usage.ru_utime + usage.ru_stime,  # this process, including its polling
        proc_cpu(main_pid)[0],
        sum(own for own, _ in pool),  # the task, including the parent's side of each fork
        # Bodies forked by the pool process are its reaped children; with a zygote, the
        # zygote (a live child) and the bodies it forked and reaped.
        sum(reaped for _, reaped in pool) + sum(own + reaped for own, reaped in zygotes),
        proc_cpu(redis_pid)[0],
    )
    return dict(zip(ROLES, values, strict=True))


def commandstats(admin: redis.Redis) -> Tally[str]:
    stats = admin.info("commandstats")
    return Tally({key.removeprefix("cmdstat_"): value["calls"] for key, value in stats.items()})


# -- results ---------------------------------------------------------------------


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def wait_all(
    client: redis.Redis, ids: list[str], timeout: float
) -> tuple[dict[str, dict[str, Any]], int]:
    """Poll the result backend until every job is SUCCESS or FAILURE; (metas, MGETs sent)."""
    pending, done, mgets = list(ids), {}, 0
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs unfinished after {timeout}s")
        time.sleep(POLL)
        still = []
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            raws = client.mget([META_PREFIX + job.encode() for job in chunk])
            mgets += 1
            for job, raw in zip(chunk, raws, strict=True):
                meta = json.loads(raw) if raw is not None else None
                if meta and meta["status"] in ("SUCCESS", "FAILURE"):
                    done[job] = meta
                else:
                    still.append(job)
        pending = still
    failed = [job for job in ids if done[job]["status"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed, e.g. {done[failed[0]]}")
    return done, mgets


def warm_up(submit: Submit, client: redis.Redis) -> None:
    """A few jobs first, so both pool children have imported and connected."""
    wait_all(client, [submit(i) for i in range(20)], timeout=60)


@dataclass
class Burst:
    """N jobs submitted as fast as possible while the worker consumes them."""

    n: int
    wall: float  # first submit -> last date_done, seconds
    submit: float  # seconds spent in the submit loop
    cpu: dict[str, float]  # CPU seconds during the run, by role
    commands: Tally[str]  # Redis command calls during the run, harness polling removed
    ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.wall


def burst(
    submit: Submit,
    n: int,
    client: redis.Redis,
    admin: redis.Redis,
    cpu: Callable[[], dict[str, float]],
) -> Burst:
    before, cpu_before = commandstats(admin), cpu()
    ids = []
    first = time.time()
    loop_start = time.perf_counter()
    for i in range(n):
        ids.append(submit(i))
    submit_s = time.perf_counter() - loop_start
    metas, mgets = wait_all(client, ids, timeout=max(120.0, n * 0.5))
    cpu_after, commands = cpu(), commandstats(admin) - before
    commands["mget"] -= mgets
    commands["info"] -= 1
    wall = max(epoch(meta["date_done"]) for meta in metas.values()) - first
    spent = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
    return Burst(n, wall, submit_s, spent, +commands, ids)


def idle(
    submit: Submit,
    client: redis.Redis,
    jobs: range,
    enqueued: Callable[[], float] | None = None,
    pause: float = 0.0,
) -> tuple[list[float], dict[str, dict[str, float]]]:
    """One job at a time on an idle queue: (latencies in s, producer stamps by job id).

    Each job is submitted `pause` seconds after the previous one's result (0: at once,
    while the worker may still be finishing the previous job: its acks and events, a
    zygote's next spare). Latency = the result's ``date_done`` minus the time just
    before the submit call.
    The harness waits on the result backend's pub/sub message (Celery publishes every
    state change), not by polling, so it adds no load of its own meanwhile. With
    `enqueued` (see `_timing.install_producer`) the stamps include the broker write.
    """
    latencies, stamps = [], {}
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        for i in jobs:
            time.sleep(pause)
            task_id = str(uuid.uuid4())
            key = META_PREFIX + task_id.encode()
            pubsub.subscribe(key)
            start = time.time()
            submit(i, task_id=task_id)
            stamps[task_id] = {"submit_start": start, "submit_end": time.time()}
            if enqueued is not None:
                stamps[task_id]["enqueued"] = enqueued()
            meta = _published_final(pubsub, client, key)
            pubsub.unsubscribe(key)
            latencies.append(epoch(meta["date_done"]) - start)
    finally:
        pubsub.close()
    return latencies, stamps


def _published_final(pubsub: Any, client: redis.Redis, key: bytes) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is None:  # not published yet, or published before we listened
            raw = client.get(key)
            message = {"data": raw} if raw is not None else None
        if message is not None:
            meta: dict[str, Any] = json.loads(message["data"])
            if META_PREFIX + meta["task_id"].encode() != key:
                continue  # the previous job's messages, when its result was read by GET
            if meta["status"] == "SUCCESS":
                return meta
            if meta["status"] == "FAILURE":
                raise RuntimeError(f"job failed: {meta}")
    raise TimeoutError(f"no result for {key!r} after 60 s")


def drain(
    submit: Submit,
    n: int,
    client: redis.Redis,
    control: Any,
    cpu: Callable[[], dict[str, float]],
) -> tuple[float, dict[str, float]]:
    """(jobs/s, CPU seconds by role) of a warm worker draining n queued jobs.

    The rate is (n - 1) / (last date_done - first date_done); the producer is idle.
    """
    ids = [submit(i, queue=DRAIN_QUEUE) for i in range(n)]
    cpu_before = cpu()
    if not control.add_consumer(DRAIN_QUEUE, reply=True):
        raise RuntimeError("the worker did not answer add_consumer")
    try:
        metas, _ = wait_all(client, ids, timeout=max(120.0, n * 0.5))
        cpu_after = cpu()
    finally:
        control.cancel_consumer(DRAIN_QUEUE, reply=True)
    done = sorted(epoch(meta["date_done"]) for meta in metas.values())
    spent = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
    return (n - 1) / (done[-1] - done[0]), spent


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile; NaN for no values (a phase that was skipped)."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
