"""Memory over many isolated jobs: pool processes and zygotes must stay flat (issue 9).

    .venv/bin/python bench/soak.py [--jobs 10000] [--batch 500]

A `graftq worker -c 2` on a private redis-server runs `increment` (isolated, committed)
on fresh Counters, submitted with `submit_many` in batches and waited for. After a
warm-up of one batch, and then after every batch, it reads the anonymous memory of
each pool process and of each pool process's zygote (`/proc/<pid>/smaps_rollup`).
Prints the first and last readings and the growth; the goal is under 10 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _harness as h  # noqa: E402
from graftq.devserver import RedisServer  # noqa: E402


def readings(main_pid: int) -> dict[str, float]:
    """Anonymous MB of each pool process and of its zygote, by role and pid."""
    found: dict[str, float] = {}
    for pool in h.children(main_pid):
        found[f"pool {pool}"] = h.memory_mb(pool)["Anonymous"]
        for zygote in h.children(pool):
            found[f"zygote {zygote}"] = h.memory_mb(zygote)["Anonymous"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with RedisServer() as server:
        env = {"GRAFTQ_REDIS_URL": server.url}
        os.environ.update(env)
        from bench.graftq_app import Counter, app

        with h.worker(h.graftq_command(), env) as worker:
            first: dict[str, float] = {}
            done, started = 0, time.monotonic()
            while done < args.jobs + args.batch:  # the first batch warms up
                counters = [app.entities.put(Counter()) for _ in range(args.batch)]
                jobs = app.submit_many(
                    "increment", [{"counter": f"@{c.lineage_id}"} for c in counters]
                )
                for job in jobs:
                    job.get(timeout=120)
                done += args.batch
                now = readings(worker.pid)
                first = first or now
                print(
                    f"{done - args.batch:>6} jobs: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in now.items())
                )
            print(f"\n{args.jobs} jobs in {time.monotonic() - started:.0f} s; anonymous MB:")
            for key, start in first.items():
                end = now.get(key)
                if end is None:
                    print(f"  {key}: {start:.1f} -> gone (replaced)")
                    continue
                print(f"  {key}: {start:.1f} -> {end:.1f} ({(end - start) / start:+.1%})")


if __name__ == "__main__":
    main()
