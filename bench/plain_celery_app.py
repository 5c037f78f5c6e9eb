"""A plain Celery app with one no-op task, the baseline of bench/throughput.py.

Configured like graftq's `app.celery` (graftq/worker/config.py): JSON only, late
acks with reject-on-worker-lost, prefetch 1, task events and sent events, started
state tracked, extended results, Redis broker and result backend. Broker and
backend URL from BENCH_PLAIN_URL. The broker transport is kombu's own, as a Celery
user has it (graftq's, which builds fewer redis-py clients, is part of what graftq
brings); BENCH_PLAIN_TRANSPORT=graftq gives plain Celery graftq's transport, to see
what that part is worth. Started by the benchmark as::

    celery -A bench.plain_celery_app worker --pool=prefork -c 2
"""

from __future__ import annotations

import os

from bench import _rtt, _timing
from graftq.settings import Settings
from graftq.worker.config import make_celery

URL = os.environ.get("BENCH_PLAIN_URL", "redis://127.0.0.1:6379/1")

# The same Celery configuration graftq uses (JSON, late acks, prefetch 1, events,
# extended results), so the ratio measures graftq's own work and nothing else.
celery = make_celery("plain", Settings(redis_url=URL))
if os.environ.get("BENCH_PLAIN_TRANSPORT") != "graftq":
    celery.conf.broker_transport = None  # kombu's, from the URL's scheme
app = celery


@celery.task(name="noop")  # type: ignore[untyped-decorator]
def noop(x: int) -> int:
    return x


_rtt.install_from_env()
_timing.install_from_env(graftq=False)
