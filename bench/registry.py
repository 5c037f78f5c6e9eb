"""Benchmark of the graftq entity store against hand-written Redis commits.

Run by hand (not in CI), from the repository root::

    .venv/bin/python bench/registry.py [--n 2000] [--profile]

Everything runs against one private redis-server (graftq.devserver.RedisServer,
stopped by PID on exit). It prints:

1. the commit rate of a one-entity change: graftq `put` in a read-modify-put
   loop, versus a hand-written WATCH/GET/MULTI/SET/RPUSH/SET/EXEC of the same
   writes with plain redis-py, and a Lua script (EVALSHA) doing the same CAS +
   writes; with Redis commands and client round trips per commit;
2. footprint growth when one sub-entity of a 200- or 1000-node tree changes;
3. `get` of the whole tree: latency and round trips.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

import pydantic
import redis
from redis.connection import AbstractConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graftq.devserver import RedisServer, find_redis_server
from graftq.registry.entity import Entity
from graftq.registry.keys import Keys
from graftq.registry.store import EntityRegistry

REPS = 3
CHUNK = 100  # commits per interleaved slice in part 1
PREFIX = "graftq"


class Counter(Entity):
    graftq_type: ClassVar[str] = "bench.Counter"
    value: int
    name: str


class Student(Entity):
    graftq_type: ClassVar[str] = "bench.Student"
    name: str
    age: int
    email: str
    major: str
    tags: list[str] = pydantic.Field(default_factory=list)


class Course(Entity):
    graftq_type: ClassVar[str] = "bench.Course"
    title: str
    students: list[Student]


class Department(Entity):
    graftq_type: ClassVar[str] = "bench.Department"
    name: str
    courses: list[Course]


# -- measuring helpers ---------------------------------------------------------


class Wire:
    """Counts client → server sends (one per round trip; a pipeline is one send)."""

    sends = 0


@contextmanager
def counting_round_trips() -> Iterator[type[Wire]]:
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        Wire.sends += 1
        original(self, command, check_health)

    Wire.sends = 0
    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield Wire
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def per_op(
    client: redis.Redis, ops: int, run: Callable[[], object]
) -> tuple[dict[str, float], float]:
    """Redis commands per op (INFO commandstats delta) and client round trips per op."""
    before = command_calls(client)
    with counting_round_trips() as wire:
        run()
        sends = wire.sends
    after = command_calls(client)
    delta = {
        name: (after[name] - before.get(name, 0)) / ops
        for name in after
        if name != "info" and after[name] != before.get(name, 0)
    }
    return delta, sends / ops


def fmt_calls(calls: dict[str, float]) -> str:
    return " ".join(f"{name.upper()} {n:g}" for name, n in sorted(calls.items()))


def median_time(run: Callable[[], object], reps: int = REPS) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- 1. commit rate of a one-entity change --------------------------------------


def graftq_commits(reg: EntityRegistry, n: int) -> Callable[[], None]:
    """A fresh lineage, then n puts each changing one field of the version returned."""
    counter = reg.put(Counter(value=0, name="visits to the reading room"))

    def run() -> None:
        nonlocal counter
        for _ in range(n):
            counter.value += 1
            counter = reg.put(counter)

    return run


def fake_doc(ecs_id: str, lineage: str, parent: str, value: int, name: str) -> str:
    """A version document shaped like graftq's, built the way hand-written code would."""
    doc = {
        "type": "bench.Counter",
        "ecs_id": ecs_id,
        "lineage_id": lineage,
        "parent_id": parent,
        "created_at": datetime.now(UTC).isoformat(),
        "derived_from": None,
        "kids": [],
        "data": {"value": value, "name": name},
    }
    return json.dumps(doc, separators=(",", ":"))


def padded_name(doc_size: int) -> str:
    """A name that makes `fake_doc` exactly `doc_size` bytes (for a 1-digit value)."""
    ids = str(uuid4())
    bare = len(fake_doc(ids, ids, ids, 1, ""))
    return "x" * max(0, doc_size - bare)


class Manual:
    """One lineage written by hand with the same keys graftq uses."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.keys = Keys(PREFIX)
        self.name = name
        self.lineage = str(uuid4())
        self.head = str(uuid4())
        self.value = 0
        client.set(self.keys.version(self.head), fake_doc(self.head, self.lineage, "", 0, name))
        client.rpush(self.keys.history(self.lineage), self.head)
        client.set(self.keys.head(self.lineage), self.head)

    def next_doc(self) -> tuple[str, str]:
        self.value += 1
        new_id = str(uuid4())
        return new_id, fake_doc(new_id, self.lineage, self.head, self.value, self.name)


def watch_commits(client: redis.Redis, n: int, name: str) -> Callable[[], None]:
    """WATCH head and the prune key; MGET both (CAS check); MULTI; SET doc; RPUSH
    history; SET head; EXEC — what graftq's commit does for a new version of an
    existing lineage (it indexes a lineage only when it starts or changes type)."""
    m = Manual(client, name)
    head_key, hist_key = m.keys.head(m.lineage), m.keys.history(m.lineage)

    def run() -> None:
        for _ in range(n):
            new_id, doc = m.next_doc()
            with client.pipeline(transaction=True) as pipe:
                pipe.watch(head_key, m.keys.prune)
                if pipe.mget(head_key, m.keys.prune)[0] != m.head:
                    raise RuntimeError("head moved")
                pipe.multi()
                pipe.set(m.keys.version(new_id), doc)
                pipe.rpush(hist_key, new_id)
                pipe.set(head_key, new_id)
                pipe.execute()
            m.head = new_id

    return run


CAS_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


def lua_commits(client: redis.Redis, n: int, name: str) -> Callable[[], None]:
    """The same CAS and writes as one EVALSHA."""
    m = Manual(client, name)
    head_key, hist_key = m.keys.head(m.lineage), m.keys.history(m.lineage)
    script = client.register_script(CAS_LUA)

    def run() -> None:
        for _ in range(n):
            new_id, doc = m.next_doc()
            keys = [head_key, m.keys.version(new_id), hist_key]
            if script(keys=keys, args=[m.head, new_id, doc]) != 1:
                raise RuntimeError("head moved")
            m.head = new_id

    return run


def bench_commits(client: redis.Redis, reg: EntityRegistry, n: int) -> None:
    n -= n % min(n, CHUNK)
    print(f"\n## 1. Commit rate of a one-entity change (N = {n} commits, median of {REPS})\n")
    probe = reg.put(Counter(value=1, name="visits to the reading room"))
    probe.value += 1
    probe = reg.put(probe)  # a second version: parent_id set, like every timed commit
    doc_size = client.strlen(reg.keys.version(probe.ecs_id))
    name = padded_name(doc_size)
    ids = str(uuid4())
    manual_size = len(fake_doc(ids, ids, ids, 1, name))
    print(f"version document: graftq {doc_size} B, hand-written {manual_size} B")

    makers: dict[str, Callable[[int], Callable[[], None]]] = {
        "graftq put": lambda k: graftq_commits(reg, k),
        "WATCH/MULTI/EXEC": lambda k: watch_commits(client, k, name),
        "Lua EVALSHA": lambda k: lua_commits(client, k, name),
    }
    for make in makers.values():  # warm up: imports, script load, pydantic caches
        make(min(n, 200))()
    times: dict[str, list[float]] = {label: [] for label in makers}
    cpu: dict[str, list[float]] = {label: [] for label in makers}
    chunk = min(n, CHUNK)
    for _ in range(REPS):
        # Interleaved in chunks of CHUNK commits (rotating order), so a burst of load
        # from other processes on the machine hits every variant alike.
        runs = {label: make(chunk) for label, make in makers.items()}
        wall = dict.fromkeys(makers, 0.0)
        busy = dict.fromkeys(makers, 0.0)
        labels = list(makers)
        for r in range(n // chunk):
            for label in labels[r % 3 :] + labels[: r % 3]:
                start, start_cpu = time.perf_counter(), time.process_time()
                runs[label]()
                wall[label] += time.perf_counter() - start
                busy[label] += time.process_time() - start_cpu
        for label in makers:
            times[label].append(wall[label])
            cpu[label].append(busy[label])

    sample = min(n, 500)
    rate = {label: n / statistics.median(t) for label, t in times.items()}
    print(f"\n{'variant':<18} {'commits/s':>10} {'µs/commit':>10} {'client CPU µs':>14} "
          f"{'RTT/commit':>11}  Redis commands per commit")  # fmt: skip
    for label, make in makers.items():
        calls, trips = per_op(client, sample, make(sample))
        cpu_us = 1e6 * statistics.median(cpu[label]) / n
        print(f"{label:<18} {rate[label]:>10,.0f} {1e6 / rate[label]:>10.1f} {cpu_us:>14.1f} "
              f"{trips:>11.2f}  {fmt_calls(calls)}")  # fmt: skip
    base, lua = rate["WATCH/MULTI/EXEC"], rate["Lua EVALSHA"]
    ratio = rate["graftq put"] / base
    verdict = "MET" if ratio >= 0.8 else "MISSED"
    pairs = [b / g for g, b in zip(times["graftq put"], times["WATCH/MULTI/EXEC"], strict=True)]
    spread = ", ".join(f"{r:.2f}" for r in pairs)
    print(f"\ngraftq / WATCH-baseline = {ratio:.3f}  (goal >= 0.80: {verdict}; per rep: {spread})")
    print(f"graftq / Lua            = {rate['graftq put'] / lua:.2f}")
    print(f"WATCH-baseline / Lua    = {base / lua:.2f}")


# -- 2. footprint growth, 3. get -------------------------------------------------


def student(i: int) -> Student:
    return Student(
        name=f"Student Number{i}",
        age=18 + i % 10,
        email=f"student{i}@university.example.edu",
        major=("physics", "history", "computer science", "biology")[i % 4],
        tags=["year-" + str(1 + i % 4), "scholarship" if i % 3 == 0 else "self-funded"],
    )


def flat_tree(size: int) -> Course:
    return Course(title=f"Introduction ({size})", students=[student(i) for i in range(size)])


def deep_tree(groups: int, per_group: int) -> Department:
    courses = [
        Course(title=f"Course {g}", students=[student(g * per_group + i) for i in range(per_group)])
        for g in range(groups)
    ]
    return Department(name="Faculty of Science", courses=courses)


def change_one(tree: Entity, k: int) -> None:
    """Change one student in the middle of the stored tree (in place, on the copy)."""
    if isinstance(tree, Course):
        tree.students[len(tree.students) // 2].age += 1 + k
    else:
        assert isinstance(tree, Department)
        middle = tree.courses[len(tree.courses) // 2]
        middle.students[len(middle.students) // 2].age += 1 + k


def footprint(client: redis.Redis) -> tuple[int, int]:
    """Sum of MEMORY USAGE (exact, SAMPLES 0) over every key, and the number of keys."""
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(pipe.execute()), len(keys)


def bench_tree(
    client: redis.Redis, reg: EntityRegistry, label: str, tree: Entity
) -> dict[str, Any]:
    client.flushdb()
    start = time.perf_counter()
    stored = reg.put(tree)
    full_put = time.perf_counter() - start
    full, nkeys = footprint(client)
    growths, puts = [], []
    for k in range(REPS):  # one sub-entity changed per put; median growth per change
        change_one(stored, k)
        before = footprint(client)[0]
        start = time.perf_counter()
        stored = reg.put(stored)
        puts.append(time.perf_counter() - start)
        growths.append(footprint(client)[0] - before)
    root = str(stored.ecs_id)
    reg.get(root)  # warm up
    get_time = median_time(lambda: reg.get(root), reps=7)
    calls, trips = per_op(client, 1, lambda: reg.get(root))
    growth = statistics.median(growths)
    return {
        "label": label,
        "nodes": nkeys // 3,
        "keys": nkeys,
        "full": full,
        "growth": growth,
        "pct": 100 * growth / full,
        "full_put": full_put,
        "put": statistics.median(puts),
        "get": get_time,
        "get_trips": trips,
        "get_calls": calls,
    }


def bench_trees(client: redis.Redis, reg: EntityRegistry) -> None:
    print(f"\n## 2. Footprint growth when one sub-entity changes (median of {REPS} changes)\n")
    rows = [
        bench_tree(client, reg, "flat 200", flat_tree(200)),
        bench_tree(client, reg, "flat 1000", flat_tree(1000)),
        bench_tree(client, reg, "deep 10 x 100", deep_tree(10, 100)),
    ]
    header = (
        f"{'tree':<14} {'nodes':>6} {'keys':>6} {'full tree B':>12} {'growth B':>10} "
        f"{'growth %':>9} {'goal <=10%':>10} {'put full ms':>12} {'put 1 chg ms':>13}"
    )
    print(header)
    for r in rows:
        verdict = "MET" if r["pct"] <= 10 else "MISSED"
        print(f"{r['label']:<14} {r['nodes']:>6} {r['keys']:>6} {r['full']:>12,} "
              f"{r['growth']:>10,.0f} {r['pct']:>8.2f}% {verdict:>10} "
              f"{1e3 * r['full_put']:>12.1f} {1e3 * r['put']:>13.1f}")  # fmt: skip

    print("\n## 3. get of the whole tree (median of 7)\n")
    print(f"{'tree':<14} {'nodes':>6} {'get ms':>8} {'RTT/get':>8}  Redis commands per get")
    for r in rows:
        print(f"{r['label']:<14} {r['nodes']:>6} {1e3 * r['get']:>8.1f} {r['get_trips']:>8.0f}  "
              f"{fmt_calls(r['get_calls'])}")  # fmt: skip


# -- profile, main ----------------------------------------------------------------


def profile(client: redis.Redis, reg: EntityRegistry, n: int) -> None:
    print(f"\n## cProfile: {n} graftq puts of a one-field change (top 15 by cumulative)\n")
    run = graftq_commits(reg, n)
    prof = cProfile.Profile()
    prof.runcall(run)
    pstats.Stats(prof).strip_dirs().sort_stats("cumulative").print_stats(15)
    print(f"\n## cProfile: the same {n} puts, top 15 by own (tottime) time\n")
    pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(15)
    print(f"\n## cProfile: the same {n} puts, graftq's own functions only\n")
    pstats.Stats(prof).sort_stats("cumulative").print_stats("graftq/registry", 15)

    client.flushdb()
    stored = reg.put(flat_tree(1000))
    change_one(stored, 0)
    print("\n## cProfile: one put of a one-student change in the flat 1000 tree (graftq)\n")
    prof = cProfile.Profile()
    prof.runcall(reg.put, stored)
    pstats.Stats(prof).sort_stats("cumulative").print_stats("graftq/registry|pydantic", 15)


def machine() -> str:
    server = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    version = next((w.removeprefix("v=") for w in server if w.startswith("v=")), "?")
    cpu = "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")), "?"
        )  # fmt: skip
    return (
        f"nproc {os.cpu_count()} ({cpu}), Python {platform.python_version()}, "
        f"redis-server {version}, redis-py {redis.__version__}, pydantic {pydantic.VERSION}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="commits per timed run")
    parser.add_argument("--profile", action="store_true", help="also print cProfile hot spots")
    args = parser.parse_args()
    print(f"# graftq registry benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(machine())
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        print(f"private redis-server pid {server.pid} on port {server.port}")
        reg = EntityRegistry(client, prefix=PREFIX)
        bench_commits(client, reg, args.n)
        bench_trees(client, reg)
        if args.profile:
            profile(client, reg, min(args.n, 2000))
        client.close()
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
