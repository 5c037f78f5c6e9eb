"""Throughput of graftq jobs versus plain Celery jobs, both on a real prefork worker.

Run by hand (not in CI), from the repository root::

    .venv/bin/python bench/throughput.py [--n 1000] [--reps 1] [--count-jobs 200]

Everything runs against one private redis-server (graftq.devserver.RedisServer,
stopped by PID on exit): plain Celery on db 1, graftq (store, broker, results) on db 0.

1. Plain Celery: a no-op task (`bench/plain_celery_app.py`, configured like
   graftq's `app.celery`), worker ``celery -A bench.plain_celery_app worker
   --pool=prefork -c 2``.
2. graftq: ``increment(counter: Counter) -> Counter`` (`bench/graftq_app.py`),
   isolated (a fork per call) and committed, on N distinct Counter entities stored
   beforehand (no conflicts), submitted as ``app.submit("increment",
   {"counter": "@<lineage_id>"})``; worker ``graftq worker -c 2``.

For each: N jobs are submitted as fast as possible from this process while the
worker consumes them. Wall time runs from the first submit to the last result's
``date_done`` (the time the worker stored it in the result backend), so the
harness's own polling does not count. Latency per job = its ``date_done`` minus
the wall-clock time just before its submit call. Submit cost = time in the
submit loop / N. Redis commands per job are `INFO commandstats` deltas / N (the
harness's own polling MGETs and INFO subtracted). Afterwards a separate, slower
counting pass (workers restarted with a patched redis-py, see `bench/_rtt.py`)
counts client→server round trips per job in each process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _rtt  # noqa: E402
from graftq.devserver import RedisServer, WorkerProcess, find_redis_server  # noqa: E402
from graftq.tasks.isolation import run_isolated  # noqa: E402

META_PREFIX = b"celery-task-meta-"
POLL = 0.25  # seconds between the harness's checks for finished results
CHUNK = 500  # keys per MGET when polling


@dataclass
class Run:
    """One timed run of N jobs."""

    system: str
    n: int
    wall: float  # first submit -> last date_done, seconds
    submit: float  # seconds spent in the submit loop
    latencies: list[float]  # seconds, per job
    commands: Tally[str]  # Redis command calls during the run, harness polling removed
    sent: list[float]  # epoch seconds just before each submit call
    done: list[float]  # epoch seconds of each result's date_done
    cpu: dict[str, float]  # CPU seconds used during the run, by process role
    serial: list[float] = field(default_factory=list)  # latencies, one job at a time
    pool_rss: float = 0.0  # MB, largest pool child's resident set after the run
    phases: dict[str, float] = field(default_factory=dict)  # graftq only: median seconds

    @property
    def rate(self) -> float:
        return self.n / self.wall

    def pct(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


# -- workers -------------------------------------------------------------------


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **(extra or {})}


@contextlib.contextmanager
def plain_worker(url: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A bench.plain_celery_app worker --pool=prefork -c 2`, stopped by its PID."""
    handle, log_path = tempfile.mkstemp(prefix="bench-plain-worker-", suffix=".log")
    os.close(handle)
    celery_bin = str(Path(sys.executable).parent / "celery")
    args = [
        celery_bin, "-A", "bench.plain_celery_app", "worker", "--pool=prefork", "-c", "2",
        "-n", f"plain-{os.getpid()}@%h", "-l", "INFO", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    full_env = {**os.environ, "BENCH_PLAIN_URL": url, **worker_env(env)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while " ready." not in Path(log_path).read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plain worker did not start; log in {log_path}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the session we started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        Path(log_path).unlink(missing_ok=True)


@contextlib.contextmanager
def graftq_worker(url: str, env: dict[str, str] | None = None) -> Iterator[WorkerProcess]:
    """`graftq worker --app bench.graftq_app:app -c 2`, stopped by its PID."""
    worker = WorkerProcess("bench.graftq_app:app", url, concurrency=2, env=worker_env(env))
    try:
        yield worker.start(timeout=60)
    finally:
        worker.stop()
        Path(worker.log_path).unlink(missing_ok=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


# -- measuring -----------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) user+system CPU seconds of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14])
    return own / CLOCK_TICKS, reaped / CLOCK_TICKS


def cpu_roles(redis_pid: int, worker_pid: int) -> Callable[[], dict[str, float]]:
    """A snapshot function: CPU seconds so far of each process taking part."""

    def snapshot() -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pool = [proc_cpu(pid) for pid in children(worker_pid)]
        return {
            "producer (this process, incl. polling)": usage.ru_utime + usage.ru_stime,
            "worker main process": proc_cpu(worker_pid)[0],
            "pool children (own)": sum(own for own, _ in pool),
            "isolated forks (reaped by the pool)": sum(reaped for _, reaped in pool),
            "redis-server": proc_cpu(redis_pid)[0],
        }

    return snapshot


def commandstats(admin: redis.Redis) -> Tally[str]:
    stats = admin.info("commandstats")
    return Tally({key.removeprefix("cmdstat_"): value["calls"] for key, value in stats.items()})


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
    return done, mgets


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def timed(
    system: str,
    submit: Callable[[int], str],
    n: int,
    client: redis.Redis,
    admin: redis.Redis,
    cpu: Callable[[], dict[str, float]],
) -> tuple[Run, list[str]]:
    """Submit n jobs as fast as possible, wait for all; the Run and the job ids."""
    before, cpu_before = commandstats(admin), cpu()
    ids, sent = [], []
    first = time.time()
    loop_start = time.perf_counter()
    for i in range(n):
        sent.append(time.time())
        ids.append(submit(i))
    submit_s = time.perf_counter() - loop_start
    metas, mgets = wait_all(client, ids, timeout=max(120.0, n * 0.5))
    cpu_after, commands = cpu(), commandstats(admin) - before
    commands["mget"] -= mgets
    commands["info"] -= 1
    failed = [job for job in ids if metas[job]["status"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{system}: {len(failed)} jobs failed, e.g. {metas[failed[0]]}")
    done = [epoch(metas[job]["date_done"]) for job in ids]
    run = Run(
        system=system,
        n=n,
        wall=max(done) - first,
        submit=submit_s,
        latencies=[d - s for d, s in zip(done, sent, strict=True)],
        commands=+commands,
        sent=sent,
        done=done,
        cpu={role: cpu_after[role] - cpu_before[role] for role in cpu_after},
    )
    return run, ids


def serial(submit: Callable[[int], str], client: redis.Redis, jobs: range) -> list[float]:
    """Latency with an idle queue: submit one job, wait for its result, repeat."""
    latencies = []
    for i in jobs:
        sent = time.time()
        key = META_PREFIX + submit(i).encode()
        while True:
            raw = client.get(key)
            if raw is not None and (meta := json.loads(raw))["status"] in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.001)
        latencies.append(epoch(meta["date_done"]) - sent)
    return latencies


def warm_up(submit: Callable[[int], str], client: redis.Redis) -> None:
    """A few jobs first, so both pool children have imported and connected."""
    wait_all(client, [submit(i) for i in range(20)], timeout=60)


def run_plain(n: int, m: int, url: str, admin: redis.Redis, redis_pid: int) -> Run:
    plain = importlib.import_module("bench.plain_celery_app")
    client = redis.Redis.from_url(url)

    def submit(i: int) -> str:
        return str(plain.celery.send_task("noop", args=[i]).id)

    with plain_worker(url) as worker:
        warm_up(submit, client)
        cpu = cpu_roles(redis_pid, worker.pid)
        run, _ = timed("plain Celery no-op", submit, n, client, admin, cpu)
        run.serial = serial(submit, client, range(m))
        run.pool_rss = max(rss_mb(pid) for pid in children(worker.pid))
    return run


def store_counters(app: Any, counter_type: Any, n: int) -> list[str]:
    return [str(app.entities.put(counter_type(value=0)).lineage_id) for _ in range(n)]


def run_graftq(n: int, m: int, url: str, admin: redis.Redis, redis_pid: int) -> Run:
    bench_app = importlib.import_module("bench.graftq_app")
    app, client = bench_app.app, redis.Redis.from_url(url)
    warm = store_counters(app, bench_app.Counter, 20)
    lineages: list[str] = []

    def submit(i: int) -> str:
        return str(app.submit("increment", {"counter": f"@{lineages[i]}"}).id)

    with graftq_worker(url) as worker:
        lineages[:] = warm
        warm_up(submit, client)
        lineages[:] = store_counters(app, bench_app.Counter, n + m)  # before the clock starts
        assert worker.pid is not None
        cpu = cpu_roles(redis_pid, worker.pid)
        run, ids = timed("graftq isolated+committed", submit, n, client, admin, cpu)
        run.serial = serial(submit, client, range(n, n + m))
        run.pool_rss = max(rss_mb(pid) for pid in children(worker.pid))
    check_graftq(app, lineages[:n], ids, run)
    return run


def check_graftq(app: Any, lineages: list[str], ids: list[str], run: Run) -> None:
    """Every counter went 0 -> 1 exactly once; split latency at the Execution's times."""
    store = app.entities
    wrong = [lin for lin in lineages if store.head(lin).value != 1]
    if wrong:
        raise RuntimeError(f"graftq: {len(wrong)} counters are not at 1, e.g. {wrong[0]}")
    waits, runs, stores = [], [], []
    for job, s, d in zip(ids, run.sent, run.done, strict=True):
        execution = store.execution(job)
        started, finished = execution.started_at.timestamp(), execution.finished_at.timestamp()
        waits.append(started - s)
        runs.append(finished - started)
        stores.append(d - finished)
    run.phases = {
        "submit -> Execution.started_at": statistics.median(waits),
        "started_at -> finished_at (prepare, fork+run, record)": statistics.median(runs),
        "finished_at -> date_done (commit, Celery result store)": statistics.median(stores),
    }


# -- micro measurements (in this process, no worker running) -------------------


def micro(url: str) -> dict[str, float]:
    """µs per call: a bare fork, an isolated no-op, `app.execute("increment")`, a PING."""
    bench_app = importlib.import_module("bench.graftq_app")
    app, reps = bench_app.app, 300
    start = time.perf_counter()
    for _ in range(reps):
        if (pid := os.fork()) == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    bare = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for _ in range(reps):
        run_isolated(lambda: None, encode=lambda _v: b"", decode=lambda _b: None)
    fork = (time.perf_counter() - start) / reps
    lineages = store_counters(app, bench_app.Counter, reps)
    start = time.perf_counter()
    for lineage in lineages:
        app.execute("increment", {"counter": f"@{lineage}"})
    execute = (time.perf_counter() - start) / reps
    client = redis.Redis.from_url(url)
    client.ping()
    start = time.perf_counter()
    for _ in range(reps):
        client.ping()
    ping = (time.perf_counter() - start) / reps
    return {
        "bare os.fork + os._exit + waitpid": bare * 1e6,
        "run_isolated(no-op): fork + pipe + reap": fork * 1e6,
        'app.execute("increment") in-process (no Celery)': execute * 1e6,
        "redis PING round trip": ping * 1e6,
        f"(this process's resident set: {rss_mb(os.getpid()):.0f} MB)": 0.0,
    }


# -- round-trip counting pass ----------------------------------------------------


def files(directory: str) -> dict[int, int]:
    return {int(p.name): int(p.read_text() or 0) for p in Path(directory).iterdir()}


def count_pass(
    start_worker: Callable[[dict[str, str]], Any],
    submit: Callable[[int], str],
    client: redis.Redis,
    m: int,
) -> dict[str, float]:
    """Round trips per job by process, with redis-py patched everywhere (slow; not timed)."""
    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as directory:
        with start_worker({_rtt.ENV: directory}) as worker:
            warm_up(submit, client)
            time.sleep(1.0)
            parent = worker.pid
            pool = set(children(parent))
            before, idle_start = files(directory), time.monotonic()
            time.sleep(2.0)
            idle = files(directory).get(parent, 0) - before.get(parent, 0)
            idle_rate = idle / (time.monotonic() - idle_start)
            before = files(directory)
            uninstall = _rtt.install(None)
            try:
                ids = [submit(i) for i in range(m)]
                producer = _rtt.count()
            finally:
                uninstall()
            wait_all(client, ids, timeout=120)
            time.sleep(1.0)  # let the acks and events that follow the result go out
            after = files(directory)
    delta = {pid: after[pid] - before.get(pid, 0) for pid in after}
    return {
        "producer (submit call)": producer / m,
        "worker main process (consume, ack, events)": delta.get(parent, 0) / m,
        "pool children (task)": sum(v for pid, v in delta.items() if pid in pool) / m,
        "other processes (isolated forks)": sum(
            v for pid, v in delta.items() if pid != parent and pid not in pool
        )
        / m,
        "worker main process idle, per second": idle_rate,
    }


def count_all(plain_url: str, graftq_url: str, m: int) -> dict[str, dict[str, float]]:
    plain = importlib.import_module("bench.plain_celery_app")
    bench_app = importlib.import_module("bench.graftq_app")
    lineages = store_counters(bench_app.app, bench_app.Counter, m + 20)
    it = iter(lineages)

    def plain_submit(i: int) -> str:
        return str(plain.celery.send_task("noop", args=[i]).id)

    def graftq_submit(_: int) -> str:
        return str(bench_app.app.submit("increment", {"counter": f"@{next(it)}"}).id)

    return {
        "plain": count_pass(
            lambda env: plain_worker(plain_url, env),
            plain_submit,
            redis.Redis.from_url(plain_url),
            m,
        ),
        "graftq": count_pass(
            lambda env: graftq_worker(graftq_url, env),
            graftq_submit,
            redis.Redis.from_url(graftq_url),
            m,
        ),
    }


# -- report --------------------------------------------------------------------


def med(runs: list[Run], value: Callable[[Run], float]) -> tuple[float, float, float]:
    values = [value(run) for run in runs]
    return statistics.median(values), min(values), max(values)


def fmt(triple: tuple[float, float, float], digits: int, reps: int) -> str:
    middle, low, high = triple
    text = f"{middle:,.{digits}f}"
    return text if reps == 1 else f"{text} ({low:,.{digits}f}..{high:,.{digits}f})"


METRICS: list[tuple[str, Callable[[Run], float], int]] = [
    ("jobs/s", lambda r: r.rate, 0),
    ("p50 latency (ms)", lambda r: r.pct(50) * 1e3, 1),
    ("p99 latency (ms)", lambda r: r.pct(99) * 1e3, 1),
    ("submit cost (µs/job)", lambda r: r.submit / r.n * 1e6, 0),
    ("wall (s)", lambda r: r.wall, 2),
    ("idle-queue latency p50, one job at a time (ms)", lambda r: median_ms(r.serial), 1),
    ("CPU used, all processes (ms/job)", lambda r: sum(r.cpu.values()) / r.n * 1e3, 2),
    ("pool child resident set (MB)", lambda r: r.pool_rss, 0),
]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def report(plain: list[Run], graftq: list[Run], reps: int) -> None:
    print("\n| metric | plain Celery no-op | graftq isolated+committed | graftq / plain |")
    print("|---|---:|---:|---:|")
    for name, value, digits in METRICS:
        p, g = med(plain, value), med(graftq, value)
        print(f"| {name} | {fmt(p, digits, reps)} | {fmt(g, digits, reps)} | {g[0] / p[0]:.2f} |")
    print("\nRedis commands per job (INFO commandstats delta / N, harness polling removed):")
    for runs in (plain, graftq):
        total = sum((run.commands for run in runs), Tally())
        n = sum(run.n for run in runs)
        per = ", ".join(f"{cmd.upper()} {calls / n:.2f}" for cmd, calls in total.most_common())
        print(f"* {runs[0].system}: {total.total() / n:.1f} total — {per}")
    print("\nCPU per job by process (ms; /proc utime+stime deltas / N):")
    print("\n| process | plain Celery | graftq |\n|---|---:|---:|")
    for role in plain[0].cpu:
        cpu_p = statistics.median(run.cpu[role] / run.n * 1e3 for run in plain)
        cpu_g = statistics.median(run.cpu[role] / run.n * 1e3 for run in graftq)
        print(f"| {role} | {cpu_p:.2f} | {cpu_g:.2f} |")
    print("\ngraftq latency split (medians, ms):")
    for phase in graftq[0].phases:
        values = [run.phases[phase] * 1e3 for run in graftq]
        print(f"* {phase}: {statistics.median(values):.1f}")


def machine() -> str:
    version = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    redis_version = next((w[2:] for w in version if w.startswith("v=")), "?")
    return (
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"redis-server {redis_version}, {platform.platform()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="jobs per run (>= 1000)")
    parser.add_argument("--reps", type=int, default=1, help="timed runs of each system")
    parser.add_argument("--serial", type=int, default=50, help="jobs run one at a time")
    parser.add_argument("--count-jobs", type=int, default=200, help="0 skips the RTT pass")
    args = parser.parse_args()
    print(f"# {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} — {machine()}")
    plain_runs: list[Run] = []
    graftq_runs: list[Run] = []
    with RedisServer() as server:
        graftq_url = server.url  # db 0
        plain_url = f"redis://127.0.0.1:{server.port}/1"
        os.environ["GRAFTQ_REDIS_URL"] = graftq_url
        os.environ["BENCH_PLAIN_URL"] = plain_url
        admin = redis.Redis.from_url(graftq_url)
        assert server.pid is not None
        for rep in range(args.reps):
            plain_runs.append(run_plain(args.n, args.serial, plain_url, admin, server.pid))
            graftq_runs.append(run_graftq(args.n, args.serial, graftq_url, admin, server.pid))
            print(
                f"rep {rep + 1}: plain {plain_runs[-1].rate:,.0f} jobs/s, "
                f"graftq {graftq_runs[-1].rate:,.0f} jobs/s"
            )
        report(plain_runs, graftq_runs, args.reps)
        print("\nIn-process micro measurements (µs per call, no worker running):")
        for name, value in micro(graftq_url).items():
            print(f"* {name}: {value:,.0f}")
        if args.count_jobs:
            counts = count_all(plain_url, graftq_url, args.count_jobs)
            print(f"\nClient→server round trips per job (counting pass, {args.count_jobs} jobs):")
            print("\n| process | plain Celery | graftq |\n|---|---:|---:|")
            for key in counts["plain"]:
                print(f"| {key} | {counts['plain'][key]:.2f} | {counts['graftq'][key]:.2f} |")


if __name__ == "__main__":
    main()
