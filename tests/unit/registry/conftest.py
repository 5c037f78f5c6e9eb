"""A store over the per-test clean database of the session's private redis-server."""

from __future__ import annotations

import pytest
import redis

from graftq.registry.store import EntityRegistry


@pytest.fixture
def reg(redis_client: redis.Redis) -> EntityRegistry:
    return EntityRegistry(redis_client)
