"""Bounded waits on Redis and the broker, and one error for a server that does not answer.

`Settings.connect_timeout` is the longest a call waits on a server that does not
answer (kombu and redis-py wait forever, or minutes, by default: a stopped Redis
or a listener that never answers hung `submit`). The worst path makes three
waits in a row — kombu's publish times out, reconnects (connect and PING) and
publishes again — so every client gives up on one connection attempt or reply
after a third of it (`wait`). Clients retry once, at once, only after a
dropped connection (what a restarted server looks like), so the same App
works again as soon as the server is back; Celery's result backend does not
retry, since its own reconnect is already a second wait.

`reachable` turns what the clients raise when a server is down — redis-py's
ConnectionError and TimeoutError, kombu's OperationalError, Celery's
RuntimeError that the result backend "must be restarted" (it need not) — into
`Unreachable`, naming the URLs (passwords masked), the timeout and the error met (for
Celery's RuntimeError, the one it was raised over: its own text names no cause). The store's
client (`redis_client`) does so on every command and pipeline it runs.

redis-py and kombu are imported where they are used, so that a producer's
`import graftq` (and the zygote's import of the App's module) stays light: an
error can only be one of theirs once they are imported.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from graftq.errors import Unreachable
from graftq.settings import Settings

if TYPE_CHECKING:
    import redis

WAITS = 3  # the most waits in a row on one call (see above)
_AT_ONCE = {"interval_start": 0, "interval_step": 0, "interval_max": 0}
_BACKEND_GAVE_UP = "Retry limit exceeded while trying to reconnect"  # Celery's RuntimeError


def redis_client(url: str, settings: Settings) -> redis.Redis:
    """A decoding redis-py client for the store whose waits are bounded and whose
    unanswered calls raise `Unreachable` (the store is as public as `submit`)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    store: redis.Redis = _reachable_client_class().from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=wait(settings),
        socket_timeout=wait(settings),
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    store.graftq_settings = settings  # type: ignore[attr-defined]
    return store


@functools.cache
def _reachable_client_class() -> type[redis.Redis]:
    """A redis-py client and pipeline that raise `Unreachable` for a server that does not
    answer; redis-py's own retry (once, after a dropped connection) happens inside."""
    import redis
    from redis.client import Pipeline

    class ReachablePipeline(Pipeline):
        graftq_settings: Settings

        def execute(self, raise_on_error: bool = True) -> Any:
            with reachable(self.graftq_settings):
                return super().execute(raise_on_error)

        def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
            with reachable(self.graftq_settings):  # WATCH and the reads made while watching
                return super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]

        def watch_and_read(self, watched: Sequence[str], keys: Sequence[str]) -> list[Any]:
            """``WATCH watched`` then ``MGET keys``, sent together: one round trip where
            `watch` and then `mget` take two. The pipeline is left watching on its own
            connection, as after `watch`, for `multi` and `execute`. Failures as in
            redis-py's `watch`: the connection's own retry before the WATCH is answered;
            a connection dropped after it is a WatchError (the caller re-plans).
            """
            if self.watching or self.explicit_transaction:
                raise redis.RedisError("watch_and_read must come before any WATCH or MULTI")
            with reachable(self.graftq_settings):  # getting a connection connects it
                conn: Any = self.connection or self.connection_pool.get_connection()
                self.connection = conn
                packed = conn.pack_commands([("WATCH", *watched), ("MGET", *keys)])

                def send() -> list[Any]:
                    conn.send_packed_command(packed)
                    conn.read_response()
                    self.watching = True
                    values: list[Any] = conn.read_response()
                    return values

                def dropped(error: Exception) -> None:
                    conn.disconnect()  # a half-read reply must not meet the next command
                    if self.watching:  # the WATCH went with it
                        self.reset()
                        raise redis.WatchError("connection dropped while watching") from error

                try:
                    return cast(list[Any], conn.retry.call_with_retry(send, dropped))
                except redis.WatchError:
                    raise
                except BaseException:  # not retried (a timeout, an error reply): start clean
                    self.watching = False
                    conn.disconnect()
                    raise

    class ReachableRedis(redis.Redis):
        graftq_settings: Settings

        def execute_command(self, *args: Any, **options: Any) -> Any:
            with reachable(self.graftq_settings):
                return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            pipe = ReachablePipeline(
                self.connection_pool, self.response_callbacks, transaction, shard_hint
            )
            pipe.graftq_settings = self.graftq_settings
            return pipe

    return ReachableRedis


def celery_timeouts(settings: Settings) -> dict[str, Any]:
    """Celery configuration that bounds every broker and result-backend wait."""
    timeout = wait(settings)
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": timeout,  # kombu: publish and other synchronous commands
        "socket_connect_timeout": timeout,
        # Sweep for jobs of dead workers every 10 s, not every 100 s (kombu's default
        # throttle): redelivery then comes within visibility timeout + 10 s.
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_connection_timeout": timeout,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            **transport,
            "retry_policy": {"max_retries": 0, **_AT_ONCE},
        },
        "redis_socket_timeout": timeout,
        "redis_socket_connect_timeout": timeout,
        "task_publish_retry_policy": {"max_retries": 1, **_AT_ONCE},
    }


def wait(settings: Settings) -> float:
    """Seconds one connection attempt or reply may take."""
    return settings.connect_timeout / WAITS


@contextlib.contextmanager
def reachable(settings: Settings) -> Iterator[None]:
    """Raise `Unreachable` for a server that refused, dropped or did not answer in time."""
    try:
        yield
    except Exception as exc:
        if not _unanswered(exc):
            raise
        raise unreachable(settings, exc) from exc


def _unanswered(exc: Exception) -> bool:
    """Whether `exc` says a server refused, dropped or did not answer in time."""
    if isinstance(exc, RuntimeError):
        return _BACKEND_GAVE_UP in str(exc)
    if _batch_failed(exc):
        return isinstance(exc.__cause__, Exception) and _unanswered(exc.__cause__)
    return isinstance(exc, (TimeoutError, *_connection_errors()))


def _batch_failed(exc: BaseException) -> bool:
    """Whether `exc` is kombu's word that a batched publish (`submit_many`) failed; it is
    raised over what the server did."""
    kombu = sys.modules.get("kombu.exceptions")
    return kombu is not None and isinstance(exc, kombu.BatchPublishError)


def refused(exc: BaseException) -> bool:
    """Whether `exc` says a server refused or dropped a connection — what a restarting one
    does for a moment — rather than not answering in time."""
    exc = _met(exc)
    if (redis := sys.modules.get("redis")) is not None and isinstance(
        exc, redis.TimeoutError | redis.AuthenticationError
    ):
        return False  # not answering in time; a wrong password: no restart mends it
    connection_errors: tuple[type[BaseException], ...] = (ConnectionError, *_connection_errors())
    return isinstance(exc, connection_errors) and not isinstance(exc, TimeoutError)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What redis-py and kombu, of those loaded, raise for a server that refused, dropped
    or did not answer in time."""
    kinds: list[type[BaseException]] = []
    if (redis := sys.modules.get("redis")) is not None:
        kinds += [redis.ConnectionError, redis.TimeoutError]
    if (kombu := sys.modules.get("kombu.exceptions")) is not None:
        kinds.append(kombu.OperationalError)
    return tuple(kinds)


def _met(exc: BaseException) -> BaseException:
    """The error the server gave, under what Celery and kombu raised over it: the one
    Celery's result backend met when it gave up (its RuntimeError's own text names no
    cause: a refused password, a refusal), the redis-py error under kombu's
    OperationalError or failed batch; else `exc`."""
    kombu = sys.modules.get("kombu.exceptions")
    if (isinstance(exc, RuntimeError) and _BACKEND_GAVE_UP in str(exc)) or (
        kombu is not None and isinstance(exc, kombu.OperationalError | kombu.BatchPublishError)
    ):
        return exc.__cause__ or exc.__context__ or exc
    return exc


def unreachable(settings: Settings, exc: BaseException) -> Unreachable:
    from kombu.utils.url import maybe_sanitize_url

    urls = dict.fromkeys(
        maybe_sanitize_url(url) for url in (settings.redis_url, settings.broker, settings.backend)
    )
    uncertain = " (a part of the batch may have been enqueued)" if _batch_failed(exc) else ""
    exc = _met(exc)
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return Unreachable(
        f"cannot reach {' / '.join(urls)} within {settings.connect_timeout:g} s "
        f"(GRAFTQ_CONNECT_TIMEOUT): {type(exc).__name__}: {cause:.300}{uncertain}"
    )
