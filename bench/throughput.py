"""Throughput, latency and cost of graftq jobs versus plain Celery jobs, on real prefork workers.

Run by hand (not in CI), from the repository root::

    .venv/bin/python bench/throughput.py [--n 1000] [--reps 3] [--serial 200]
        [--spaced 200] [--pause 20] [--drain 1000] [--count-jobs 200]
        [--systems plain fork none]
    .venv/bin/python bench/throughput.py --breakdown 200 [--breakdown-pause MS]
    .venv/bin/python bench/throughput.py --profile DIR       # perf + py-spy + cProfile

Everything runs against one private redis-server (graftq.devserver.RedisServer, stopped
by PID on exit): plain Celery on db 1, graftq (store, broker, results) on db 0. Workers
are ``-c 2`` prefork, started and stopped by PID (`bench/_harness.py`). Three systems:

* ``plain``: Celery no-op ``noop(x) -> x`` with results (`bench/plain_celery_app.py`,
  configured like graftq's ``app.celery``);
* ``fork``: graftq ``increment(counter: Counter) -> Counter``, isolated (a fork per call)
  and committed, on distinct Counters stored before the clock starts (no conflicts),
  submitted as ``app.submit("increment", {"counter": "@<lineage_id>"})``;
* ``none``: the same function registered with ``isolation="none"`` (``increment_inline``),
  on the same graftq worker.

Per repetition and system (interleaved, so all see the same machine): a burst of N jobs
submitted as fast as possible while the worker consumes them (jobs/s from the first
submit to the last ``date_done``; CPU per process from /proc; Redis commands from
``INFO commandstats``); ``--serial`` jobs one at a time on an idle queue, each submitted
as soon as the previous one's result is in (latency = ``date_done`` minus the time before
the submit call; the worker may still be finishing the previous job meanwhile);
``--spaced`` jobs one at a time, each ``--pause`` ms after the previous one's result (the
worker has settled: what a job that arrives at a quiet worker waits); a drain of
``--drain`` jobs queued first, then consumed by the warm, otherwise idle worker (rate
from the results' completion times; CPU per process with the producer idle). Afterwards
a slower counting pass (workers restarted with redis-py patched, `bench/_rtt.py`) counts
client→server round trips per job in each process.

``--breakdown N`` runs N jobs of each system one at a time (``--breakdown-pause`` ms
apart; default 0, back to back) with bench-side timing hooks in the workers
(`bench/_timing.py`) and prints the median time of each phase of a job.
``--profile DIR`` profiles a drain of isolated jobs (`bench/_profile.py`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from bench import _rtt, _timing
from graftq.devserver import RedisServer, find_redis_server
from graftq.tasks.isolation import run_isolated

LABELS = {"plain": "plain Celery no-op", "fork": "graftq fork", "none": "graftq none"}


@dataclass
class Env:
    """The private Redis: its PID, an admin client, and a client per system's database."""

    redis_pid: int
    admin: redis.Redis
    clients: dict[str, redis.Redis]


@dataclass
class System:
    """One kind of job: how to submit it, and the inputs it needs made beforehand."""

    key: str
    submit: h.Submit
    control: Any  # the Celery app's `control`, to start and stop the drain
    inputs: Callable[[int], None]  # make n fresh inputs; each submit takes the next one
    check: Callable[[], None]  # after a burst: the jobs did what they should have


def plain_system() -> System:
    plain = importlib.import_module("bench.plain_celery_app")

    def submit(i: int, **options: Any) -> str:
        return str(plain.celery.send_task("noop", args=[i], **options).id)

    return System("plain", submit, plain.celery.control, lambda _: None, lambda: None)


def graftq_system(key: str) -> System:
    bench_app = importlib.import_module("bench.graftq_app")
    app = bench_app.app
    name = "increment" if key == "fork" else "increment_inline"
    queue: list[str] = []
    taken: list[str] = []

    def inputs(n: int) -> None:
        queue[:] = [str(app.entities.put(bench_app.Counter()).lineage_id) for _ in range(n)]
        taken.clear()

    def submit(_: int, **options: Any) -> str:
        lineage = queue.pop() if queue else str(app.entities.put(bench_app.Counter()).lineage_id)
        taken.append(lineage)
        return str(app.submit(name, {"counter": f"@{lineage}"}, **options).id)

    def check() -> None:
        wrong = [lin for lin in taken if app.entities.head(lin).value != 1]
        if wrong:
            raise RuntimeError(f"{key}: {len(wrong)} counters are not at 1, e.g. {wrong[0]}")

    return System(key, submit, app.celery.control, inputs, check)


def make_system(key: str) -> System:
    return plain_system() if key == "plain" else graftq_system(key)


@dataclass
class Measured:
    """One repetition of one system."""

    burst: h.Burst
    idle: list[float]  # seconds
    spaced: list[float]  # seconds
    drain_rate: float
    drain_cpu: dict[str, float]  # CPU seconds by role
    drain_n: int
    pool_memory: dict[str, float]  # MB, largest pool child after the runs


def measure(system: System, w: h.Worker, args: argparse.Namespace, env: Env) -> Measured:
    cpu = partial(h.cpu_snapshot, env.redis_pid, w.pid)
    client = env.clients[system.key]
    h.warm_up(system.submit, client)
    system.inputs(args.n)
    result = h.burst(system.submit, args.n, client, env.admin, cpu)
    system.check()
    system.inputs(args.serial)
    latencies, _ = h.idle(system.submit, client, range(args.serial))
    system.inputs(args.spaced)
    spaced, _ = h.idle(system.submit, client, range(args.spaced), pause=args.pause / 1e3)
    rate, drain_cpu = 0.0, {}
    if args.drain:
        system.inputs(args.drain)
        rate, drain_cpu = h.drain(system.submit, args.drain, client, system.control, cpu)
    pool = max((h.memory_mb(pid) for pid in w.pool()), key=lambda m: m["Anonymous"])
    return Measured(result, latencies, spaced, rate, drain_cpu, args.drain, pool)


def graftq_keys(args: argparse.Namespace, rep: int) -> list[str]:
    keys = [key for key in ("fork", "none") if key in args.systems]
    return keys if rep % 2 == 0 else keys[::-1]  # alternate who goes first


def run_reps(args: argparse.Namespace, env: Env) -> dict[str, list[Measured]]:
    runs: dict[str, list[Measured]] = {key: [] for key in args.systems}
    for rep in range(args.reps):
        if "plain" in args.systems:
            with h.worker(h.plain_command(), {}) as w:
                runs["plain"].append(measure(plain_system(), w, args, env))
        if keys := graftq_keys(args, rep):
            with h.worker(h.graftq_command(), {}) as w:
                for key in keys:
                    runs[key].append(measure(graftq_system(key), w, args, env))
        rates = ", ".join(f"{k} {runs[k][-1].burst.rate:,.0f}" for k in args.systems)
        load = os.getloadavg()[0]
        print(f"rep {rep + 1}: jobs/s {rates}; load average {load:.2f}", flush=True)
    return runs


# -- report --------------------------------------------------------------------

Metric = tuple[str, Callable[[Measured], float], int, str]  # name, value, digits, compare
METRICS: list[Metric] = [
    ("jobs/s, burst (producer submitting meanwhile)", lambda m: m.burst.rate, 0, "ratio"),
    ("jobs/s, drain (queue filled first)", lambda m: m.drain_rate, 0, "ratio"),
    ("idle-queue latency p50 (ms)", lambda m: h.quantile(m.idle, 50) * 1e3, 1, "delta"),
    ("idle-queue latency p99 (ms)", lambda m: h.quantile(m.idle, 99) * 1e3, 1, "delta"),
    ("spaced latency p50 (ms; --pause after each result)",
     lambda m: h.quantile(m.spaced, 50) * 1e3, 1, "delta"),
    ("spaced latency p99 (ms)", lambda m: h.quantile(m.spaced, 99) * 1e3, 1, "delta"),
    ("CPU per job, all processes, burst (ms)", lambda m: cpu_ms(m.burst.cpu, m.burst.n), 2,
     "ratio"),
    ("CPU per job, all processes, drain (ms)", lambda m: cpu_ms(m.drain_cpu, m.drain_n), 2,
     "ratio"),
    ("producer submit cost (µs/job)", lambda m: m.burst.submit / m.burst.n * 1e6, 0, "ratio"),
    ("pool child anonymous memory (MB)", lambda m: m.pool_memory["Anonymous"], 0, "ratio"),
]  # fmt: skip


def cpu_ms(cpu: dict[str, float], n: int) -> float:
    return sum(cpu.values()) / n * 1e3 if n else 0.0


def cell(values: list[float], digits: int) -> str:
    mid = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return mid
    return f"{mid} ({min(values):,.{digits}f}..{max(values):,.{digits}f})"


def compare(kind: str, value: float, base: float) -> str:
    if kind == "delta":
        return f"{value - base:+.1f} ms"
    return f"**{value / base:.2f}**" if base else "-"


def report(runs: dict[str, list[Measured]]) -> None:
    keys = list(runs)
    base = "plain" if "plain" in runs else None
    head = " | ".join(LABELS[k] + (f" | {LABELS[k]} vs plain" if base and k != base else "")
                      for k in keys)  # fmt: skip
    print(f"\n| metric | {head} |\n|---|" + "---:|" * (head.count("|") + 1))
    for name, value, digits, kind in METRICS:
        if all(math.isnan(value(m)) for measured in runs.values() for m in measured):
            continue  # a phase that was skipped (--spaced 0, say)
        cells = []
        for key in keys:
            values = [value(m) for m in runs[key]]
            cells.append(cell(values, digits))
            if base and key != base:
                mine, theirs = statistics.median(values), statistics.median(map(value, runs[base]))
                cells.append(compare(kind, mine, theirs))
        print(f"| {name} | " + " | ".join(cells) + " |")
    for phase, pick, n_of in (
        ("burst", lambda m: m.burst.cpu, lambda m: m.burst.n),
        ("drain", lambda m: m.drain_cpu, lambda m: m.drain_n),
    ):
        print(f"\nCPU per job by process, {phase} (ms; /proc utime+stime deltas / N, median):")
        print("\n| process | " + " | ".join(LABELS[k] for k in keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for role in h.ROLES:
            values = [
                statistics.median(pick(m).get(role, 0.0) / max(n_of(m), 1) * 1e3 for m in runs[k])
                for k in keys
            ]
            print(f"| {role} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    print("\nRedis commands per job, burst (INFO commandstats delta / N, harness polling removed):")
    for key in keys:
        total = sum((m.burst.commands for m in runs[key]), Tally())
        n = sum(m.burst.n for m in runs[key])
        common = [(cmd, calls / n) for cmd, calls in total.most_common() if calls / n >= 0.01]
        per = ", ".join(f"{cmd.upper()} {each:.2f}" for cmd, each in common)
        print(f"* {LABELS[key]}: {total.total() / n:.1f} total — {per}")


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
    lineages = [str(app.entities.put(bench_app.Counter()).lineage_id) for _ in range(reps)]
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
    anonymous = h.memory_mb(os.getpid())["Anonymous"]
    return {
        "bare os.fork + os._exit + waitpid": bare * 1e6,
        "run_isolated(no-op): fork + pipe + reap": fork * 1e6,
        'app.execute("increment") in-process (no Celery)': execute * 1e6,
        "redis PING round trip": ping * 1e6,
        f"(this process's anonymous memory: {anonymous:.0f} MB)": 0.0,
    }


# -- round-trip counting pass ----------------------------------------------------


def files(directory: str) -> dict[int, int]:
    return {int(p.name): int(p.read_text() or 0) for p in Path(directory).iterdir()}


def count_one(system: System, w: h.Worker, client: redis.Redis, m: int, directory: str) -> Any:
    """Round trips per job by process for one system, redis-py patched everywhere."""
    h.warm_up(system.submit, client)
    system.inputs(m)
    time.sleep(1.0)  # let the warm-up's acks and events go out
    pool = set(w.pool())
    before, idle_start = files(directory), time.monotonic()
    time.sleep(2.0)
    idle = files(directory).get(w.pid, 0) - before.get(w.pid, 0)
    idle_rate = idle / (time.monotonic() - idle_start)
    before = files(directory)
    uninstall = _rtt.install(None)
    try:
        ids = [system.submit(i) for i in range(m)]
        producer = _rtt.count()
    finally:
        uninstall()
    h.wait_all(client, ids, timeout=120)
    time.sleep(1.0)  # let the acks and events that follow the result go out
    delta = {pid: n - before.get(pid, 0) for pid, n in files(directory).items()}
    forks = sum(v for pid, v in delta.items() if pid != w.pid and pid not in pool)
    return {
        "producer (submit call)": producer / m,
        "worker main process (consume, ack, events)": delta.get(w.pid, 0) / m,
        "pool children (task)": sum(v for pid, v in delta.items() if pid in pool) / m,
        "other processes (isolated forks)": forks / m,
        "worker main process idle, per second": idle_rate,
    }


def count_all(args: argparse.Namespace, env: Env) -> dict[str, dict[str, float]]:
    counts = {}
    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as directory:
        if "plain" in args.systems:
            with h.worker(h.plain_command(), {_rtt.ENV: directory}) as w:
                counts["plain"] = count_one(
                    plain_system(), w, env.clients["plain"], args.count_jobs, directory
                )
        if keys := graftq_keys(args, 0):
            with h.worker(h.graftq_command(), {_rtt.ENV: directory}) as w:
                for key in keys:
                    counts[key] = count_one(
                        graftq_system(key), w, env.clients[key], args.count_jobs, directory
                    )
    return counts


# -- breakdown mode -------------------------------------------------------------


def breakdown(args: argparse.Namespace, env: Env) -> None:
    """N jobs per system, one at a time, with timing hooks; median ms per phase."""
    enqueued = _timing.install_producer()
    found: dict[str, tuple[list[float], dict[str, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as directory:
        hooks = {_timing.ENV: directory}
        jobs = range(args.breakdown)
        pause = args.breakdown_pause / 1e3
        if "plain" in args.systems:
            with h.worker(h.plain_command(), hooks):
                system = plain_system()
                h.warm_up(system.submit, env.clients["plain"])
                found["plain"] = h.idle(system.submit, env.clients["plain"], jobs, enqueued, pause)
        if keys := graftq_keys(args, 0):
            with h.worker(h.graftq_command(), hooks):
                for key in keys:
                    system = graftq_system(key)
                    h.warm_up(system.submit, env.clients[key])
                    system.inputs(args.breakdown)
                    found[key] = h.idle(system.submit, env.clients[key], jobs, enqueued, pause)
        stamps = _timing.load(directory)
    print(
        f"\nLatency breakdown of {args.breakdown} jobs one at a time (idle queue, "
        f"{args.breakdown_pause:g} ms after each result), ms per step:"
    )
    for key, (latencies, producer) in found.items():
        timed = [{**stamps.get(job, {}), **mine} for job, mine in producer.items()]
        print(f"\n{LABELS[key]}:\n\n| phase | step | median ms | mean ms |\n|---|---|---:|---:|")
        groups: dict[str, tuple[float, float]] = {}
        for phase, step, median, mean in _timing.phases(key, timed):
            print(f"| {phase} | {step} | {median:.2f} | {mean:.2f} |")
            if not phase.startswith(("total", "(")):
                was = groups.get(phase, (0.0, 0.0))
                groups[phase] = (was[0] + median, was[1] + mean)
        print(
            "\nBy phase (sum of medians / sum of means): "
            + ", ".join(f"{p} {a:.2f} / {b:.2f}" for p, (a, b) in groups.items())
        )
        p50, p99 = (h.quantile(latencies, q) * 1e3 for q in (50, 99))
        print(
            f"Latency as the other modes measure it (date_done - submit): p50 {p50:.2f} ms, "
            f"p99 {p99:.2f} ms"
        )


# -- main ------------------------------------------------------------------------


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


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="jobs per burst")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each system")
    parser.add_argument("--serial", type=int, default=200, help="jobs run one at a time")
    parser.add_argument(
        "--spaced", type=int, default=200, help="jobs run one at a time, --pause ms apart"
    )
    parser.add_argument(
        "--pause", type=float, default=20.0, help="ms between a result and the next --spaced job"
    )
    parser.add_argument("--drain", type=int, default=1000, help="jobs per drain; 0 skips")
    parser.add_argument("--count-jobs", type=int, default=200, help="0 skips the RTT pass")
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process micros")
    parser.add_argument(
        "--systems", nargs="+", choices=list(LABELS), default=list(LABELS), help="what to run"
    )
    parser.add_argument("--breakdown", type=int, metavar="N", help="latency breakdown mode")
    parser.add_argument(
        "--breakdown-pause", type=float, default=0.0, metavar="MS", help="ms between its jobs"
    )
    parser.add_argument("--profile", metavar="DIR", help="profile mode; writes into DIR")
    return parser.parse_args()


def main() -> None:
    args = parse()
    print(f"# {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} — {machine()}", flush=True)
    with RedisServer() as server:
        assert server.pid is not None
        graftq_url, plain_url = server.url, f"redis://127.0.0.1:{server.port}/1"
        os.environ["GRAFTQ_REDIS_URL"] = graftq_url
        os.environ["BENCH_PLAIN_URL"] = plain_url
        graftq_client = redis.Redis.from_url(graftq_url)
        clients = {"plain": redis.Redis.from_url(plain_url), "fork": graftq_client,
                   "none": graftq_client}  # fmt: skip
        env = Env(server.pid, redis.Redis.from_url(graftq_url), clients)
        if args.breakdown:
            breakdown(args, env)
            return
        if args.profile:
            from bench import _profile

            _profile.run(args, env, {key: make_system(key) for key in args.systems})
            return
        report(run_reps(args, env))
        if not args.no_micro:
            print("\nIn-process micro measurements (µs per call, no worker running):")
            for name, value in micro(graftq_url).items():
                print(f"* {name}: {value:,.0f}")
        if args.count_jobs:
            counts = count_all(args, env)
            print(f"\nClient→server round trips per job (counting pass, {args.count_jobs} jobs):")
            print("\n| process | " + " | ".join(LABELS[k] for k in counts) + " |")
            print("|---|" + "---:|" * len(counts))
            for role in next(iter(counts.values())):
                print(f"| {role} | " + " | ".join(f"{c[role]:.2f}" for c in counts.values()) + " |")
        print(f"\n# done; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
