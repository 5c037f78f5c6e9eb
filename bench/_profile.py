"""Where an isolated, committed job's CPU goes, both sides (``throughput.py --profile DIR``).

Each pass drains ``--n`` jobs (queue filled first, so the worker side runs with the
producer idle); data goes into DIR. Needs ``perf`` (the distribution's linux-perf) and
``py-spy`` (``pip install py-spy``); a missing one is skipped.

1. For each system asked for (``--systems``, default plain, fork, none):
   ``perf record -g`` launches the worker (children inherited), so every
   process of the worker — main, pool children, forked body children — is sampled,
   kernel included (the fork, exit and page-fault costs live there). Samples within
   the drain's time window are summed by process role and by a kernel/user category.
2. For each system: ``py-spy record --subprocesses`` attaches to a worker for the drain only:
   the Python view of the main process and the pool children (the forked children
   live a few ms: py-spy finds them too late to sample).
3. For ``fork``: cProfile of this process submitting the same jobs (the producer side).

Figures are CPU ms per job. Profilers add overhead, so compare shares, not totals.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _harness as h

PERF_PERIOD_NS = 200_000  # a fixed period: frequency mode under-samples short-lived children
SPY_HZ = 250
_FRAME = re.compile(r"^\s*[0-9a-f]+ (.+) \((.+)\)$")
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [  # first match wins
    ("kernel: fork (copy page tables, in the forking process)",
     ("dup_mmap", "copy_page_range", "copy_process", "kernel_clone")),
    ("kernel: exit (unmap, free page tables)", ("exit_mmap", "do_exit", "mmput")),
    ("kernel: copy-on-write faults", ("do_wp_page", "wp_page_copy", "wp_page_reuse")),
    ("kernel: other page faults", ("asm_exc_page_fault", "exc_page_fault", "handle_mm_fault")),
    ("kernel: TCP (Redis) send/receive", ("tcp_sendmsg", "tcp_recvmsg", "sock_sendmsg",
                                          "sock_recvmsg", "__sys_sendto", "__sys_recvfrom")),
    ("kernel: other system calls (pipes, poll, wait, signals, files)",
     ("do_syscall_64", "entry_SYSCALL_64")),
]  # fmt: skip


def _category(stack: list[tuple[str, str]]) -> str:
    symbols = {sym for sym, _ in stack}
    for name, markers in _CATEGORIES:
        if symbols.intersection(markers):
            return name
    sym, dso = stack[0]
    if dso == "[kernel.kallsyms]":
        return "kernel: interrupts, scheduler"
    base = Path(dso).name
    for part, label in (
        ("libpython", "user: Python interpreter"),
        ("_pydantic_core", "user: pydantic-core"),
        ("hiredis", "user: hiredis"),
        ("libc.so", "user: libc (malloc, memcpy, ...)"),
    ):
        if part in base:
            return label
    return f"user: {base or sym}"


def perf_summary(data: Path, drained: Drained, n: int) -> dict[str, Tally[str]]:
    """CPU ms per job by role and category, from `perf script`, in the drain's window."""
    window = ",".join(f"{t:.6f}" for t in drained.window)
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "--time", window, "-F", "pid,period,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found: dict[str, Tally[str]] = defaultdict(Tally)
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        head = lines[0].split()
        pid, period = int(head[0]), int(head[1])
        stack = [(m[1], m[2]) for line in lines[1:] if (m := _FRAME.match(line))]
        if stack:
            found[drained.role(pid)][_category(stack)] += period / 1e6 / n  # ns -> ms per job
    return found


def spy_summary(raw: Path, drained: Drained, n: int) -> dict[str, Tally[str]]:
    """ms per job by role: each Python function inclusive, and each line's own ("self:")."""
    found: dict[str, Tally[str]] = defaultdict(Tally)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        pids = [int(f.split()[1].split(":")[0]) for f in frames if f.startswith("process ")]
        code = [f for f in frames if not f.startswith("process ")]
        if not pids or not code:
            continue
        ms, tally = int(count) / SPY_HZ * 1e3 / n, found[drained.role(pids[-1])]
        for name in {re.sub(r":\d+\)$", ")", f) for f in code}:
            tally[name] += ms
        tally["self: " + code[-1]] += ms
    return found


@dataclass
class Drained:
    """A profiled drain: who was who, and when it ran (time.monotonic, i.e. CLOCK_MONOTONIC)."""

    roles: dict[int, str]
    window: tuple[float, float]

    def role(self, pid: int) -> str:
        return self.roles.get(pid, "forked body children")


def profiled_drain(
    args: argparse.Namespace,
    env: Any,
    system: Any,
    launcher: list[str] | None = None,
    attach: Callable[[int], subprocess.Popen[bytes]] | None = None,
) -> Drained:
    """Drain args.n isolated jobs on a worker run under `launcher`, or with a profiler
    attached (`attach(main_pid)`) for the drain only and stopped with SIGINT after it."""
    command = h.plain_command() if system.key == "plain" else h.graftq_command()
    client = env.clients[system.key]
    with h.worker(command, {}, launcher=launcher) as w:
        h.warm_up(system.submit, client)
        roles = {w.pid: "worker main", **{pid: "pool child" for pid in w.pool()}}
        system.inputs(args.n)
        spy = attach(w.pid) if attach else None
        time.sleep(1.0)  # the attached profiler finds the pool children meanwhile
        cpu = lambda: h.cpu_snapshot(env.redis_pid, w.pid)  # noqa: E731
        start = time.monotonic()
        rate, _ = h.drain(system.submit, args.n, client, system.control, cpu)
        window = (start, time.monotonic())
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        print(f"  drained {args.n} jobs at {rate:,.0f} jobs/s", flush=True)
    time.sleep(1.0)  # a launcher profiler writes its data as the worker exits
    return Drained(roles, window)


def show_perf(label: str, found: dict[str, Tally[str]]) -> None:
    print(f"\nperf, {label} (kernel + native; CPU ms per job, by process and category):")
    for role in ("worker main", "pool child", "forked body children"):
        tally = found.get(role, Tally())
        print(f"\n{role}: {sum(tally.values()):.2f} ms/job\n")
        for name, ms in tally.most_common(12):
            print(f"* {ms:6.2f}  {name}")


# Start-up frames every sample of a worker process sits under.
_SCAFFOLD = re.compile(
    r"\((<frozen runpy>|click/|graftq/cli\.py|celery/bin/|celery/bootsteps\.py|celery/app/base\.py"
    r"|celery/worker/worker\.py|celery/concurrency/|billiard/(process|popen_fork|context)\.py)"
    r"|(Pool\.__init__|Pool\._create_worker_process|Worker\.__call__|Worker\._do_exit)"
    r" \(billiard/pool\.py\)"
)


def show_spy(found: dict[str, Tally[str]], top: int = 25) -> None:
    print(
        "\npy-spy (Python; ms per job while runnable — on a busy host that includes waiting "
        "for a CPU, so use perf for CPU and this for shares); start-up frames left out:"
    )
    for role in ("worker main", "pool child"):
        tally = found.get(role, Tally())
        whole = max(tally.values(), default=0.0)
        inner = Tally({k: v for k, v in tally.items() if not _SCAFFOLD.search(k)})
        print(f"\n{role}: {whole:.2f} ms/job in all\n")
        for name, ms in inner.most_common(top):
            print(f"* {ms:6.2f}  {name}")


def producer(args: argparse.Namespace, env: Any, system: Any, out: Path) -> None:
    system.inputs(args.n)
    profile = cProfile.Profile()
    profile.enable()
    for i in range(args.n):  # into a queue no worker consumes; the private Redis goes at exit
        system.submit(i, queue="bench-profile")
    profile.disable()
    profile.dump_stats(str(out / "producer.pstats"))
    print(f"\nProducer: cProfile of {args.n} app.submit calls (cumulative, top 20)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(20)


def run(args: argparse.Namespace, env: Any, systems: dict[str, Any]) -> None:
    """perf and py-spy for every system asked for; the producer's cProfile for `fork`."""
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    for key, system in systems.items():
        if not shutil.which("perf"):
            print("perf not found: skipping the kernel view")
            break
        data = out / f"perf-{key}.data"
        perf = ["perf", "record", "-e", "cpu-clock", "-c", str(PERF_PERIOD_NS), "-g", "-q",
                "-k", "CLOCK_MONOTONIC", "-o", str(data), "--"]  # fmt: skip
        drained = profiled_drain(args, env, system, launcher=perf)
        show_perf(key, perf_summary(data, drained, args.n))
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("\npy-spy not found (`.venv/bin/python -m pip install py-spy`): no Python view")
    for key, system in systems.items() if Path(spy).exists() else ():
        raw = out / f"py-spy-{key}.txt"

        def attach(pid: int, raw: Path = raw) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--subprocesses", "-r", str(SPY_HZ),
                 "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

        drained = profiled_drain(args, env, system, attach=attach)
        print(f"\n## {key}")
        show_spy(spy_summary(raw, drained, args.n))
    if "fork" in systems:
        producer(args, env, systems["fork"], out)
