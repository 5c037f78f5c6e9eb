"""The `celery.Celery` behind an App, with graftq's safe defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from graftq.errors import GraftError, InvalidSetting
from graftq.settings import Settings
from graftq.tasks.callables import CallableInfo
from graftq.worker import backend, broker
from graftq.worker.connections import celery_timeouts

BACKSTOP = 30.0  # seconds Celery's hard limit adds to a callable's own time limit


def make_celery(name: str, settings: Settings) -> Any:
    """A Celery app on the settings' broker and result backend.

    JSON only (no pickle from the broker), late acks with reject-on-worker-lost
    so a killed worker's job is redelivered, prefetch 1 so a long job does not
    hold others back, task events for Flower, results that expire, every broker and
    backend wait bounded by the connect timeout, for a Redis broker the transport
    of `graftq.worker.broker`, and for a Redis result backend `graftq.worker.backend`.
    """
    results = celery_url(settings.backend)
    if backend.handles(results):  # "module:Class+url" names Celery a class
        results = f"{backend.__name__}:{backend.RedisBackend.__name__}+{results}"
    broker_url = celery_url(settings.broker)
    celery = Celery(name, broker=broker_url, backend=results, set_as_current=False)
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
        result_expires=settings.result_expires,
        result_extended=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        **celery_timeouts(settings),
    )
    backend.bind(celery, settings)
    if urlsplit(broker_url).scheme in broker.SCHEMES:
        celery.conf.broker_transport = f"{broker.__name__}:Transport"
    return celery


def celery_url(url: str) -> str:
    """`url` as Celery names the same Redis: a Unix socket is ``redis+socket://PATH`` with
    its database as ``virtual_host`` for kombu and Celery's backend, where redis-py (and
    so GRAFTQ_REDIS_URL, the default broker and backend) takes ``unix://PATH?db=N``;
    Celery has no ``unix`` transport. A socket URL with more than a database (a
    password, say) is refused, naming the settings to give instead."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    query = parse_qs(parts.query)
    if parts.netloc or set(query) - {"db"} or len(query.get("db", [])) > 1:
        raise InvalidSetting(
            f"{maybe_sanitize_url(url)}: Celery cannot take its broker and result backend from "
            "a unix:// URL with more than a path and ?db=; set GRAFTQ_BROKER_URL and "
            "GRAFTQ_RESULT_BACKEND (redis+socket:///PATH?virtual_host=DB)"
        )
    return f"redis+socket://{parts.path}?virtual_host={query.get('db', ['0'])[0]}"


def unlimited(callables: Iterable[CallableInfo], visibility_timeout: float) -> list[str]:
    """Names of callables without a time limit; GraftError if one's limit reaches the timeout.

    Redis redelivers an unacknowledged job after the visibility timeout, also while it
    still runs: a limit (plus the hard-limit backstop) at or over it means duplicate runs.
    """
    too_long = [
        f"{info.name!r} may run {info.time_limit + BACKSTOP:g} s (time_limit "
        f"{info.time_limit:g} s + {BACKSTOP:g} s hard-limit backstop)"
        for info in callables
        if info.time_limit is not None and info.time_limit + BACKSTOP >= visibility_timeout
    ]
    if too_long:
        raise GraftError(
            f"{'; '.join(too_long)}: not below GRAFTQ_VISIBILITY_TIMEOUT={visibility_timeout:g} s, "
            "so Redis would deliver such a job again while it runs; raise the visibility "
            "timeout or lower the time limit"
        )
    return sorted(info.name for info in callables if info.time_limit is None)
