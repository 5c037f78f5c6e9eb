"""A plain Celery app with one no-op task, the baseline of bench/throughput.py.

Configured like graftq's `app.celery` (graftq/worker/config.py): JSON only, late
acks with reject-on-worker-lost, prefetch 1, task events and sent events, started
state tracked, extended results, Redis broker and result backend. Broker and
backend URL from BENCH_PLAIN_URL. Started by the benchmark as::

    celery -A bench.plain_celery_app worker --pool=prefork -c 2
"""

from __future__ import annotations

import os

from celery import Celery

from bench._rtt import install_from_env

URL = os.environ.get("BENCH_PLAIN_URL", "redis://127.0.0.1:6379/1")

celery = Celery("plain", broker=URL, backend=URL, set_as_current=False)
celery.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    event_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=86400,
    result_extended=True,
    broker_transport_options={"visibility_timeout": 3600},
    result_backend_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    enable_utc=True,
)
app = celery


@celery.task(name="noop")  # type: ignore[untyped-decorator]
def noop(x: int) -> int:
    return x


install_from_env()
