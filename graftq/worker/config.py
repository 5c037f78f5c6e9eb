"""The `celery.Celery` behind an App, with graftq's safe defaults."""

from __future__ import annotations

from typing import Any

from celery import Celery

from graftq.settings import Settings


def make_celery(name: str, settings: Settings) -> Any:
    """A Celery app on the settings' broker and result backend.

    JSON only (no pickle from the broker), late acks with reject-on-worker-lost
    so a killed worker's job is redelivered, prefetch 1 so a long job does not
    hold others back, task events for Flower, and results that expire.
    """
    celery = Celery(name, broker=settings.broker, backend=settings.backend, set_as_current=False)
    transport = {"visibility_timeout": settings.visibility_timeout}
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
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return celery
