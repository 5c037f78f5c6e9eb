"""`EntityRegistry.isolate()`: reads fall through to Redis, writes stay in this process."""

from __future__ import annotations

import pytest
import redis

from graftq.errors import EntityNotFound, VersionConflict
from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Student
from tests.entities import ids
from tests.redis_state import snapshot


def test_isolated_writes_are_visible_in_process_only(
    reg: EntityRegistry, redis_client: redis.Redis, redis_url: str
) -> None:
    v1 = reg.put(Student(name="Ada", age=30, address=Address(city="London")))
    before = snapshot(redis_client)
    assert not reg.isolated

    reg.isolate()
    assert reg.isolated
    # Reads see what Redis holds.
    assert reg.get(v1.ecs_id).model_dump() == v1.model_dump()

    new = reg.put(Student(name="Bob", age=20, friends=[Address(city="Paris")]))
    assert reg.get(new.ecs_id).model_dump() == new.model_dump()
    assert reg.get(new.friends[0].ecs_id).model_dump() == new.friends[0].model_dump()
    assert reg.head(new.lineage_id).ecs_id == new.ecs_id

    edit = reg.get(v1.ecs_id)
    assert edit.address is not None
    edit.address.city = "Cambridge"
    v2 = reg.put(edit)
    assert v2.parent_id == v1.ecs_id
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id
    assert ids(reg.history(v1.lineage_id)) == [v1.ecs_id, v2.ecs_id]
    assert v1.address is not None and v2.address is not None
    assert reg.head(v1.address.lineage_id).ecs_id == v2.address.ecs_id
    assert reg.get(v1.ecs_id).model_dump() == v1.model_dump()

    # The overlay still refuses stale writes.
    stale = reg.get(v1.ecs_id)
    stale.age = 99
    with pytest.raises(VersionConflict):
        reg.put(stale)

    # Nothing reached Redis.
    assert snapshot(redis_client) == before
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        fresh = EntityRegistry(client)
        for unseen in (new.ecs_id, v2.ecs_id, v2.address.ecs_id):
            with pytest.raises(EntityNotFound):
                fresh.get(unseen)
        with pytest.raises(EntityNotFound):
            fresh.head(new.lineage_id)
        assert fresh.head(v1.lineage_id).model_dump() == v1.model_dump()
        assert ids(fresh.history(v1.lineage_id)) == [v1.ecs_id]


def test_isolate_twice_keeps_the_overlay(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    reg.isolate()
    stored = reg.put(Address(city="x"))
    reg.isolate()
    assert reg.get(stored.ecs_id).model_dump() == stored.model_dump()
    assert redis_client.dbsize() == 0
