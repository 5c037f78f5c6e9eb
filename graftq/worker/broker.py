"""The Redis broker transport: kombu's, made to survive Redis going away under a busy worker.

When the broker connection breaks while a job is delivered and not yet acknowledged
(graftq acknowledges late), Celery collects the connection and then closes it. Closing
the channel makes kombu put the unacknowledged message back through a client built
from that connection — which Celery has already let go of, so kombu raises
`AttributeError` instead of a connection error, Celery's `ignore_errors` lets it
through, and the worker stops ("Unrecoverable error"). Here that case is a connection
error: Celery ignores it and reconnects, and the job's message stays in kombu's
unacknowledged set, acknowledged when the job ends or delivered again after the
visibility timeout (the execution record then replays it: nothing runs twice).

It also builds one redis-py client per connection pool, where kombu builds a new one
for every publish, acknowledgement and event (`conn_or_acquire`): a client is only a
handle on the pool, but building one fills a table of 170 reply parsers in Python
(0.1 to 0.2 ms), so a submit paid twice (message, task-sent event) and a worker's main
process four times per job (acknowledgement, three events). bench/RESULTS.md has the
figures.

A batch (`submit_many`) is published in one MULTI...EXEC, all or nothing
(`Channel.create_publish_batch`).

Selected for ``redis://`` brokers (`graftq.worker.config`); other URLs keep kombu's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

SCHEMES = ("redis",)


class Channel(kombu_redis.Channel):
    _sync: tuple[Any, redis.Redis] | None = None  # (pool, the client built on it)

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        """`client`, else this channel's client on its current pool (built once per pool:
        kombu replaces the pool when it reconnects)."""
        if client:
            yield client
            return
        pool = self.pool  # raises as `_connparams` says once the connection is gone
        if self._sync is None or self._sync[0] is not pool:
            self._sync = (pool, self._create_client())  # type: ignore[no-untyped-call]
        yield self._sync[1]

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed under this channel")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def create_publish_batch(self, max_size: int) -> Any:
        """kombu's batched publish (`submit_many`), sent as one MULTI...EXEC: a batch cut
        off on its way (the server stalled, the send timed out part-written) is
        discarded whole by Redis, where kombu's plain pipeline left the server running
        the messages that had reached it — part of a batch enqueued. Its one flush per
        batch is one transaction (`submit_many` sizes the batch to its messages)."""
        batch = super().create_publish_batch(max_size)  # type: ignore[no-untyped-call]
        batch.pipeline.transaction = True  # read by redis-py's `execute`
        return batch


class Transport(kombu_redis.Transport):
    Channel = Channel
