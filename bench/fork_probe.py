"""What one isolated call costs, by who forks the child and how work reaches it.

Run by hand (not in CI), from the repository root::

    .venv/bin/python bench/fork_probe.py [--calls 400] [--reps 3] [--gap-ms 2]

Every variant runs in a fresh subprocess of this script (``--variant NAME``), one
after the other, interleaved over ``--reps`` repetitions; the table shows the median
over repetitions (min..max in brackets). The work of one call is the same everywhere:
``Doc.model_validate_json`` of a ~250-byte entity-like document, one increment,
``model_dump_json`` — what an isolated ``increment`` does around its body.

* ``big-*``: the caller imported celery, kombu, redis-py and graftq (``bench.graftq_app``)
  and is topped up with small Python objects to ``--anon-mb`` of anonymous memory (55 MB:
  a pool child of the bench worker after a few jobs), and forks itself per call: ``fork`` is bare
  ``os.fork`` + ``os._exit`` + ``waitpid`` (no work), ``isolated`` is graftq's own
  ``run_isolated`` doing the work (today's path), ``freeze`` is ``fork`` after
  ``gc.freeze()``, ``ahead`` forks the next child ahead of demand from the big process
  itself and hands it the JSON over a pipe.
* ``lean-*``: the caller (the same big process) talks over pipes to a lean subprocess
  (pydantic and the model only: no celery, kombu, redis-py or graftq), which forks the
  next child ahead of demand. ``relay``: the lean process passes the request to the
  waiting child and the result back (4 pipe hops). ``direct``: the waiting child reads
  the request from, and writes the result to, the pipes it inherited (2 hops); the lean
  process only reaps and forks. ``steady``: no fork at all — the lean process does the
  work itself (the floor of the pipe protocol, with no isolation).
* ``*-thp``: that process started with ``PYTHONMALLOC=malloc
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (its heap in transparent huge pages when THP
  is in ``madvise`` or ``always`` mode and glibc >= 2.35).

Per call: latency p50/p90 in the caller with ``--gap-ms`` of idle time between calls
(an idle queue: a fork ahead of demand has time to finish), the calls/s back to back
(no gap: what a busy worker gets), and CPU per call from the back-to-back run — the
caller, the lean process and the children (reaped), from getrusage and /proc.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
THP_ENV = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
_LEN = struct.Struct("!I")
_EOF_EXIT = 3  # a waiting child that found the request pipe closed
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# name: (what it measures, environment of the forking process)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "big-fork": ("(a) big process: fork + _exit + waitpid, no work", {}),
    "big-fork-thp": ("(a) the same, big process's heap in THP", THP_ENV),
    "big-freeze": ("(d) big process: gc.freeze(), then fork + _exit + waitpid", {}),
    "big-isolated": ("(a) big process: run_isolated(work) — today's path", {}),
    "big-isolated-thp": ("(a) the same, big process's heap in THP", THP_ENV),
    "big-ahead": ("(d) big process forks ahead of demand, JSON over a pipe", {}),
    "lean-relay": ("(b) lean process forks ahead, relays JSON", {}),
    "lean-relay-thp": ("(c) the same, lean heap in THP", THP_ENV),
    "lean-direct": ("(d) lean process forks ahead, child talks to the caller", {}),
    "lean-direct-thp": ("(d) the same, lean heap in THP", THP_ENV),
    "lean-steady": ("(d) lean process, no fork (pipe floor, no isolation)", {}),
}


# -- the work and the frames (also all the lean process needs) --------------------


def model() -> Any:
    """An entity-like pydantic model, defined late so the lean process imports only pydantic."""
    from datetime import datetime
    from uuid import UUID

    from pydantic import BaseModel

    class Doc(BaseModel):
        ecs_id: UUID
        lineage_id: UUID
        parent_id: UUID | None = None
        created_at: datetime
        derived_from: str | None = None
        value: int = 0

    return Doc


def request_bytes() -> bytes:
    doc = {
        "ecs_id": "6b0e3f3c-0c7e-4f55-9a36-3f7d1c2b9e11",
        "lineage_id": "0f4f0b32-8b59-4b53-8f0e-5d7f2a7f6c20",
        "parent_id": None,
        "created_at": "2026-11-26T10:00:00+00:00",
        "derived_from": "c7e5d6b4-3a21-4c1e-9d2f-0b8e7a6f5c43",
        "value": 41,
    }
    return json.dumps(doc).encode()


def work(doc_type: Any, request: bytes) -> bytes:
    doc = doc_type.model_validate_json(request)
    doc.value += 1
    result: bytes = doc.model_dump_json().encode()
    return result


def read_exact(fd: int, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(fd: int) -> bytes | None:
    head = read_exact(fd, _LEN.size)
    return None if head is None else read_exact(fd, _LEN.unpack(head)[0])


def write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(_LEN.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


# -- the lean process (``--lean MODE``; reads requests on fd 0, answers on fd 1) -----


def fork_waiting(doc_type: Any) -> tuple[int, int, int]:
    """A child forked ahead of demand, blocked on its request pipe: (pid, req_w, res_r)."""
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(req_w)
        os.close(res_r)
        request = read_frame(req_r)
        if request is None:
            os._exit(_EOF_EXIT)
        write_frame(res_w, work(doc_type, request))
        os._exit(0)
    os.close(req_r)
    os.close(res_w)
    return pid, req_w, res_r


def lean_relay(doc_type: Any) -> None:
    """Request → waiting child → result → caller; then reap it and fork the next."""
    pid, req_w, res_r = fork_waiting(doc_type)
    while (request := read_frame(0)) is not None:
        write_frame(req_w, request)
        result = read_frame(res_r)
        write_frame(1, result or b"")
        os.close(req_w)
        os.close(res_r)
        os.waitpid(pid, 0)
        pid, req_w, res_r = fork_waiting(doc_type)
    os.close(req_w)
    os.close(res_r)
    os.waitpid(pid, 0)


def lean_direct(doc_type: Any) -> None:
    """The waiting child reads fd 0 and answers on fd 1 itself; here we only fork and reap."""
    while True:
        pid = os.fork()
        if pid == 0:
            request = read_frame(0)
            if request is None:
                os._exit(_EOF_EXIT)
            write_frame(1, work(doc_type, request))
            os._exit(0)
        status = os.waitpid(pid, 0)[1]
        if os.waitstatus_to_exitcode(status) != 0:
            return


def lean_steady(doc_type: Any) -> None:
    while (request := read_frame(0)) is not None:
        write_frame(1, work(doc_type, request))


def lean_main(mode: str) -> None:
    doc_type = model()
    work(doc_type, request_bytes())  # warm pydantic's validators before any fork
    {"relay": lean_relay, "direct": lean_direct, "steady": lean_steady}[mode](doc_type)


# -- the caller (``--variant NAME``; prints one JSON line) --------------------------


def stat_usage(pid: int) -> tuple[float, float, int]:
    """(own CPU s, reaped children's CPU s, reaped children's minor faults) from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = int(stat[11]) + int(stat[12]), int(stat[13]) + int(stat[14])
    return own / CLOCK_TICKS, reaped / CLOCK_TICKS, int(stat[8])


class Lean:
    """A lean subprocess of this script, talked to over its stdin and stdout."""

    def __init__(self, mode: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--lean", mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env},
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.out, self.inp = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.pid = self.proc.pid

    def call(self, request: bytes) -> bytes:
        write_frame(self.out, request)
        result = read_frame(self.inp)
        assert result is not None, "the lean process died"
        return result

    def idle(self) -> None:
        """Nothing to do here: the lean process forks the next child by itself."""

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class Big:
    """A `big-*` variant: this (big) process forks, per call or ahead of demand."""

    def __init__(self, variant: str, doc_type: Any) -> None:
        self.variant, self.doc_type, self.pid = variant, doc_type, os.getpid()
        self.waiting: list[tuple[int, int, int]] = []
        if variant == "big-freeze":
            gc.freeze()
        if variant == "big-ahead":
            self.waiting.append(fork_waiting(doc_type))

    def call(self, request: bytes) -> bytes:
        if self.variant.startswith(("big-fork", "big-freeze")):
            if (pid := os.fork()) == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return work(self.doc_type, request)  # (not timed apart; it is ~50 µs)
        if self.variant.startswith("big-isolated"):
            from graftq.tasks.isolation import run_isolated

            def body() -> bytes:
                return work(self.doc_type, request)

            return run_isolated(body, encode=lambda v: v, decode=lambda b: b)
        pid, req_w, res_r = self.waiting[0]
        write_frame(req_w, request)
        return read_frame(res_r) or b""

    def idle(self) -> None:
        """`big-ahead`: reap the child that answered and fork the next, between calls."""
        if self.waiting:
            pid, req_w, res_r = self.waiting.pop()
            os.close(req_w)
            os.close(res_r)
            os.waitpid(pid, 0)
            self.waiting.append(fork_waiting(self.doc_type))

    def close(self) -> None:
        for pid, req_w, res_r in self.waiting:
            os.close(req_w)
            os.close(res_r)
            os.waitpid(pid, 0)


def memory(pid: int) -> dict[str, float]:
    """MB of resident set, anonymous memory and anonymous memory in huge pages."""
    fields = {"Rss": "rss_mb", "Anonymous": "anon_mb", "AnonHugePages": "thp_mb"}
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            found[fields[key]] = int(rest.split()[0]) / 1024
    return found


_BALLAST: list[Any] = []


def big_process(anon_mb: float) -> Any:
    """Import what a worker pool child holds, then top its heap up to `anon_mb` of
    anonymous memory with small Python objects (a pool child has run Celery's consumer
    set-up and holds more than its imports); the entity model used by the calls."""
    import celery.apps.worker
    import celery.concurrency.prefork  # noqa: F401
    import kombu.transport.redis  # noqa: F401
    import redis  # noqa: F401

    import graftq.cli  # noqa: F401
    from bench import graftq_app

    graftq_app.app.celery.loader.import_default_modules()
    while memory(os.getpid())["anon_mb"] < anon_mb:
        _BALLAST.extend({"n": i, "s": f"ballast {i}"} for i in range(10_000))
    return model()


def usage(helper: int | None) -> tuple[float, float, float, int]:
    """CPU s of (this process, the lean helper, all reaped children); children's faults."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    lean_own, lean_kids, lean_faults = stat_usage(helper) if helper else (0.0, 0.0, 0)
    return (
        own.ru_utime + own.ru_stime,
        lean_own,
        kids.ru_utime + kids.ru_stime + lean_kids,
        kids.ru_minflt + lean_faults,
    )


def measure(variant: str, calls: int, gap: float, anon_mb: float) -> dict[str, Any]:
    doc_type = big_process(anon_mb)
    request = request_bytes()
    expected = work(doc_type, request)
    path: Lean | Big
    if variant.startswith("lean-"):
        path = Lean(variant.split("-")[1], VARIANTS[variant][1])
    else:
        path = Big(variant, doc_type)
    for _ in range(30):  # warm up
        assert path.call(request) == expected
        path.idle()
    forker = memory(path.pid)
    latencies = []
    for _ in range(calls):
        time.sleep(gap)
        start = time.perf_counter()
        path.call(request)
        latencies.append(time.perf_counter() - start)
        path.idle()
    helper = path.pid if isinstance(path, Lean) else None
    before, start = usage(helper), time.perf_counter()
    for _ in range(calls):
        path.call(request)
        path.idle()
    wall, after = time.perf_counter() - start, usage(helper)
    path.close()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    per = 1e3 / calls
    return {
        "p50_ms": q[49] * 1e3,
        "p90_ms": q[89] * 1e3,
        "calls_s": calls / wall,
        "cpu_caller_ms": (after[0] - before[0]) * per,
        "cpu_lean_ms": (after[1] - before[1]) * per,
        "cpu_children_ms": (after[2] - before[2]) * per,
        "child_faults": (after[3] - before[3]) / calls,
        **{f"forker_{key}": value for key, value in forker.items()},
    }


# -- the orchestrator --------------------------------------------------------------


def run_variant(name: str, calls: int, gap_ms: float, anon_mb: float) -> dict[str, Any]:
    env = dict(os.environ)
    if name.startswith("big-"):
        env.update(VARIANTS[name][1])
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, __file__, "--variant", name, "--calls", str(calls),
         "--gap-ms", str(gap_ms), "--anon-mb", str(anon_mb)],
        env={**env, "PYTHONPATH": path}, capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "(absent)"


THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def host() -> str:
    return (
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"glibc {platform.libc_ver()[1]}, kernel {platform.release()}, "
        f"THP enabled: {_read(THP_ENABLED)}, "
        f"defrag: {_read('/sys/kernel/mm/transparent_hugepage/defrag')}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def thp_verdict() -> str:
    """Whether `*-thp` variants can get huge pages here, and what the host would need."""
    mode = next((w[1:-1] for w in _read(THP_ENABLED).split() if w.startswith("[")), "absent")
    version = tuple(int(p) for p in platform.libc_ver()[1].split(".") if p.isdigit())
    needs = []
    if mode not in ("madvise", "always"):
        needs.append(f"THP is '{mode}': set it to 'madvise' (or 'always')")
    if version < (2, 35):
        glibc = platform.libc_ver()[1] or "?"
        needs.append(f"glibc {glibc} ignores glibc.malloc.hugetlb (needs >= 2.35)")
    if not needs:
        return (
            f"THP '{mode}' and glibc {platform.libc_ver()[1]}: PYTHONMALLOC=malloc + "
            "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 puts the malloc heap in huge pages here "
            "(see the 'in THP MB' column)"
        )
    return "huge pages unavailable: " + "; ".join(needs) + " — *-thp rows fall back to 4 KiB"


COLUMNS = [
    ("p50 ms", "p50_ms", 2),
    ("p90 ms", "p90_ms", 2),
    ("calls/s", "calls_s", 0),
    ("CPU/call ms", "cpu_total_ms", 2),
    ("caller", "cpu_caller_ms", 2),
    ("lean", "cpu_lean_ms", 2),
    ("children", "cpu_children_ms", 2),
    ("child faults", "child_faults", 0),
    ("forker RSS MB", "forker_rss_mb", 0),
    ("anon MB", "forker_anon_mb", 0),
    ("in THP MB", "forker_thp_mb", 0),
]


def table(results: dict[str, list[dict[str, Any]]]) -> None:
    print("\n| variant | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name, runs in results.items():
        for run in runs:
            parts = ("cpu_caller_ms", "cpu_lean_ms", "cpu_children_ms")
            run["cpu_total_ms"] = sum(run[k] for k in parts)
        cells = []
        for _, key, digits in COLUMNS:
            values = [run[key] for run in runs]
            mid = f"{statistics.median(values):,.{digits}f}"
            spread = f" ({min(values):,.{digits}f}..{max(values):,.{digits}f})"
            shown = len(runs) > 1 and key in ("p50_ms", "cpu_total_ms")
            cells.append(mid + (spread if shown else ""))
        print(f"| {name}: {VARIANTS[name][0]} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per variant and phase")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=2.0, help="idle time between calls")
    parser.add_argument(
        "--anon-mb", type=float, default=55.0,
        help="anonymous memory of the big process (a bench worker's pool child: 55 MB)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--lean", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lean:
        lean_main(args.lean)
        return
    if args.variant:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(args.variant, args.calls, args.gap_ms / 1e3, args.anon_mb)))
        return
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')} — {host()}")
    print(f"# {thp_verdict()}")
    names = args.only or list(VARIANTS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names:
            results[name].append(run_variant(name, args.calls, args.gap_ms, args.anon_mb))
        print(f"rep {rep + 1} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    table(results)


if __name__ == "__main__":
    main()
