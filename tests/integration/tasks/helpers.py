"""Store snapshots and small builders shared by the execute tests."""

from __future__ import annotations

from typing import Any

import redis

from graftq import EntityRegistry
from tests.apps.school import Student


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key with its value, so a test can tell exactly what a call wrote."""
    found: dict[str, Any] = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == "string":
            found[key] = client.get(key)
        elif kind == "list":
            found[key] = client.lrange(key, 0, -1)
        elif kind == "hash":
            found[key] = client.hgetall(key)
        elif kind == "set":
            found[key] = client.smembers(key)
        else:
            found[key] = kind
    return found


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Keys added, removed or holding a different value."""
    return {key for key in set(before) | set(after) if before.get(key) != after.get(key)}


def version_keys(keys: set[str] | dict[str, Any]) -> set[str]:
    return {key for key in keys if key.startswith("graftq:v:")}


def exec_keys(keys: set[str] | dict[str, Any]) -> set[str]:
    return {key for key in keys if key.startswith("graftq:exec:")}


def put_student(store: EntityRegistry, **fields: Any) -> Student:
    """A stored student (Ada, 20, math unless `fields` say otherwise)."""
    stored = store.put(Student(**{"name": "Ada", "age": 20, "major": "math", **fields}))
    assert isinstance(stored, Student)
    return stored
