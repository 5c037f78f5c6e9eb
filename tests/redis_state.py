"""What a Redis database holds, so a test can tell exactly what a call wrote."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from graftq import Execution
from graftq.devserver import RedisServer
from tests.processes import wait_until


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key of the database with its full value (the client decodes responses)."""
    found: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            found[key] = client.get(key)
        elif kind == "list":
            found[key] = client.lrange(key, 0, -1)
        elif kind == "hash":
            found[key] = client.hgetall(key)
        elif kind == "set":
            found[key] = client.smembers(key)
        elif kind == "zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            found[key] = (kind, None)
    return found


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Keys added, removed or holding a different value."""
    return {key for key in set(before) | set(after) if before.get(key) != after.get(key)}


def version_keys(keys: Iterable[str]) -> set[str]:
    """The version documents (`graftq:v:*`) among `keys` (a set, or a snapshot)."""
    return {key for key in keys if key.startswith("graftq:v:")}


def exec_keys(keys: Iterable[str]) -> set[str]:
    """The execution records (`graftq:exec:*`) among `keys` (a set, or a snapshot)."""
    return {key for key in keys if key.startswith("graftq:exec:")}


def only_a_failure_record(client: redis.Redis, before: dict[str, Any], error: str) -> Execution:
    """Assert that since `before` exactly one key changed: a FAILURE Execution naming `error`.

    SPEC section 5: a failed job leaves an Execution with status FAILURE and the
    error, and commits nothing else.
    """
    changed = changed_keys(before, snapshot(client))
    assert len(changed) == 1 and changed == exec_keys(changed), changed
    (key,) = changed
    record = Execution.model_validate_json(client.get(key) or "")
    assert record.status == "FAILURE", record
    assert record.outputs == [], record
    assert record.error is not None and record.error.startswith(f"{error}: "), record.error
    return record


def restart(server: RedisServer) -> None:
    """Restart the server on its port and wait until it has loaded its data back.

    A restarted server answers INFO at once, but every data command with LOADING
    until its append-only file is read: the restart is over only then.
    """
    server.restart()
    with redis.Redis.from_url(server.url) as client:
        wait_until(lambda: client.info("persistence")["loading"] == 0, 60, "Redis loaded its data")
