"""Helpers shared by the registry tests: Redis key snapshots and identity stripping."""

from __future__ import annotations

from typing import Any

import redis

# The identity fields of SPEC section 2, spelled out here rather than imported.
IDENTITY = frozenset({"ecs_id", "lineage_id", "parent_id", "created_at", "derived_from"})


def snapshot(client: redis.Redis) -> dict[str, tuple[str, Any]]:
    """Every key of the database with its type and full value."""
    out: dict[str, tuple[str, Any]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = None
        out[key] = (kind, value)
    return out


def version_keys(client: redis.Redis) -> dict[str, str]:
    """`graftq:v:*` keys and their documents."""
    return {key: client.get(key) for key in client.scan_iter(match="graftq:v:*", count=1000)}


def strip(value: Any, fields: frozenset[str] = IDENTITY) -> Any:
    """A model_dump() with the given identity fields removed at every depth."""
    if isinstance(value, dict):
        return {k: strip(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list | tuple):
        return [strip(v, fields) for v in value]
    return value
