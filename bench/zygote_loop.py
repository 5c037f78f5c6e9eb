"""Where an isolated call's CPU goes on the zygote path, without Celery (issue 9).

    .venv/bin/python bench/zygote_loop.py [--calls 1000] [--reps 3]

1. ``run_job``: this process plays a worker's pool process — it runs ``run_job`` for
   ``increment`` (the bench app, isolated, committed) through a `Zygote` of its own,
   on a private redis-server, one call after another. Per call: this process's CPU,
   the zygote's own CPU (mostly the fork), its children's CPU, and the page faults
   of the zygote and its children (every first write to a shared page is a copy).
2. ``fork``: a process that imported the bench app and forwards its output as a
   zygote does forks and reaps children that do nothing, with ``os.fork`` and with
   libc's ``fork`` called directly (no CPython at-fork hooks: ``threading``,
   ``logging``, ``random`` re-initialising themselves in every child). Per fork: CPU
   of both sides, and the child's page faults on its first instruction.

Both pass ``bench.graftq_app``; RESULTS.md says what the figures meant.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graftq.devserver import RedisServer  # noqa: E402


def stat(pid: int) -> list[int]:
    """utime, stime, cutime, cstime (ticks) and minflt, cminflt of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(fields[i]) for i in (11, 12, 13, 14, 7, 8)]


def run_jobs(calls: int) -> dict[str, float]:
    """Per call: ms of CPU here, in the zygote, in its children; faults of both."""
    from bench.graftq_app import Counter, app
    from graftq.tasks.isolation import Zygote
    from graftq.worker.task import run_job

    info = app.callables["increment"]
    zygote = Zygote("bench.graftq_app:app")
    try:
        lineages = [str(app.entities.put(Counter()).lineage_id) for _ in range(calls + 100)]

        def one(lineage: str) -> None:
            request = SimpleNamespace(id=str(uuid.uuid4()), hostname="bench@zygote-loop")
            run_job(app.entities, info, app.settings, request, {"counter": f"@{lineage}"},
                    zygote=zygote)  # fmt: skip

        for lineage in lineages[:100]:  # warm-up: connections, scripts, the first fork
            one(lineage)
        before, cpu, start = stat(zygote.pid), time.process_time(), time.perf_counter()
        for lineage in lineages[100:]:
            one(lineage)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        after = stat(zygote.pid)
    finally:
        zygote.close()
    tick = os.sysconf("SC_CLK_TCK")
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "wall ms/call": 1e3 * wall / calls,
        "this process (the pool's side) CPU ms": 1e3 * cpu / calls,
        "zygote's own CPU ms": 1e3 * (delta[0] + delta[1]) / tick / calls,
        "its children's CPU ms": 1e3 * (delta[2] + delta[3]) / tick / calls,
        "faults, zygote + children": (delta[4] + delta[5]) / calls,
    }


def forks(calls: int, raw: bool) -> dict[str, float]:
    """Per fork of a do-nothing child: CPU ms, both sides, and the child's first faults.

    Run in a fresh process (`--fork`), so that the forking process holds what a zygote
    holds and nothing more.
    """
    import bench.graftq_app  # noqa: F401  (what a zygote imports)
    from graftq.tasks.isolation import output

    ours, _theirs = socket.socketpair()  # kept open: the zygote side of the channel
    output.forward(ours)  # as a zygote does: its logging and printing go to a socket
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held across the call
    read, write = os.pipe()
    faults = []
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    for _ in range(calls):
        pid = libc.fork() if raw else os.fork()
        if pid == 0:
            count = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            os.write(write, count.to_bytes(4, "little"))
            os._exit(0)
        os.waitpid(pid, 0)
        faults.append(int.from_bytes(os.read(read, 4), "little"))
    cpu = time.process_time() - cpu
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += now.ru_utime + now.ru_stime - children.ru_utime - children.ru_stime
    return {"CPU ms/fork": 1e3 * cpu / calls, "child faults": statistics.median(faults)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fork", choices=["os", "libc"], help=argparse.SUPPRESS)  # one probe
    args = parser.parse_args()
    if args.fork:
        found = forks(args.calls, raw=args.fork == "libc")
        os.write(1, json.dumps(found).encode())  # sys.stdout now goes to the socket
        return
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    with RedisServer() as server:
        os.environ.update({"GRAFTQ_REDIS_URL": server.url, "GRAFTQ_BROKER_URL": server.url})
        runs = [run_jobs(args.calls) for _ in range(args.reps)]
    print(f"\nrun_job through a zygote, {args.calls} calls, median of {args.reps} (min..max):")
    for key in runs[0]:
        values = sorted(run[key] for run in runs)
        print(f"  {key:40s} {statistics.median(values):8.3f} ({values[0]:.3f}..{values[-1]:.3f})")
    print(f"\nfork + _exit + waitpid of a do-nothing child, {args.calls} forks:")
    for kind, label in (("os", "os.fork"), ("libc", "libc fork, no at-fork hooks")):
        command = [sys.executable, __file__, "--fork", kind, "--calls", str(args.calls)]
        found = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
        print(f"  {label:40s} " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))


if __name__ == "__main__":
    main()
