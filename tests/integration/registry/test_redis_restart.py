"""The store over a Redis that restarts (AOF keeps the data) or goes away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from graftq.devserver import RedisServer
from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Student
from tests.redis_state import restart


@pytest.fixture
def server() -> Iterator[RedisServer]:
    private = RedisServer(appendonly=True).start()
    try:
        yield private
    finally:
        private.stop()


def test_versions_survive_a_restart_with_aof(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    reg = EntityRegistry(client)
    v1 = reg.put(Student(name="Ada", age=30, address=Address(city="London")))
    v1.age = 31
    v2 = reg.put(v1)
    first_pid = server.pid

    restart(server)
    assert server.pid != first_pid

    with redis.Redis.from_url(server.url, decode_responses=True) as fresh_client:
        fresh = EntityRegistry(fresh_client)
        assert fresh.get(v1.ecs_id).age == 30
        assert fresh.get(v2.ecs_id).model_dump() == v2.model_dump()
        assert fresh.head(v1.lineage_id).ecs_id == v2.ecs_id
        assert [v.ecs_id for v in fresh.history(v1.lineage_id)] == [v1.ecs_id, v2.ecs_id]
    # The registry made before the restart reconnects, and keeps versioning.
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id
    v2.age = 32
    v3 = reg.put(v2)
    assert v3.parent_id == v2.ecs_id
    client.close()


def test_store_calls_raise_connection_error_while_redis_is_down(server: RedisServer) -> None:
    """Every store call on a stopped server raises, none answers from what it read before.

    A stopped server refuses connections at once, so this says nothing about how long
    a call may wait: a server that accepts and never answers (SPEC section 7, a
    GraftError naming the URL within the connect timeout) is
    tests/integration/worker/test_unreachable.py::test_listener_that_never_answers.
    """
    client = redis.Redis.from_url(server.url, decode_responses=True)
    reg = EntityRegistry(client)
    stored = reg.put(Address(city="x"))
    server.stop(keep_data=True)

    with pytest.raises(redis.ConnectionError):
        reg.get(stored.ecs_id)
    with pytest.raises(redis.ConnectionError):
        reg.head(stored.lineage_id)
    stored.city = "y"
    with pytest.raises(redis.ConnectionError):
        reg.put(stored)
    with pytest.raises(redis.ConnectionError):
        with redis.Redis.from_url(server.url, decode_responses=True) as other:
            EntityRegistry(other).put(Address(city="z"))
    client.close()
