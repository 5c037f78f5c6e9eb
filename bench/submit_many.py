"""Producer-side rate: `app.submit` one by one versus `app.submit_many`, same inputs.

    .venv/bin/python bench/submit_many.py [--n 1000] [--reps 3]

Each input references a stored entity by lineage (`{"counter": "@<lineage_id>"}`), as
in bench/throughput.py. No worker runs: the jobs stay queued, so only the producer's
work counts (resolve, validate, publish). One private redis-server holds the store
(db 0) and the broker and results (db 1); the queue is emptied between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graftq.devserver import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with RedisServer() as server:
        broker = f"redis://127.0.0.1:{server.port}/1"
        os.environ.update(
            GRAFTQ_REDIS_URL=server.url, GRAFTQ_BROKER_URL=broker, GRAFTQ_RESULT_BACKEND=broker
        )
        from bench.graftq_app import Counter, app

        inputs = [{"counter": f"@{app.entities.put(Counter()).lineage_id}"} for _ in range(args.n)]
        app.submit_many("increment", inputs[:5])  # warm up connections and scripts
        queue = redis.Redis.from_url(broker)
        rates: dict[str, list[float]] = {"submit": [], "submit_many": []}
        for _ in range(args.reps):
            for label in rates:
                queue.flushdb()
                start = time.perf_counter()
                if label == "submit":
                    for data in inputs:
                        app.submit("increment", data)
                else:
                    app.submit_many("increment", inputs)
                rates[label].append(args.n / (time.perf_counter() - start))
        single, batch = (statistics.median(rates[label]) for label in rates)
        print(f"load average at start: {os.getloadavg()[0]:.2f}; n={args.n}, reps={args.reps}")
        for label, rate in (("submit", single), ("submit_many", batch)):
            reps = ", ".join(f"{r:.0f}" for r in rates[label])
            print(f"{label:<12} {rate:8.0f} jobs/s  (per rep: {reps})")
        print(f"submit_many / submit = {batch / single:.2f}  (goal >= 5)")


if __name__ == "__main__":
    main()
