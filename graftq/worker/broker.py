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

Selected for ``redis://`` brokers (`graftq.worker.config`); other URLs keep kombu's own.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

SCHEMES = ("redis",)


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed under this channel")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel
