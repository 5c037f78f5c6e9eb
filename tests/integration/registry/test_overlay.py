"""`isolate_stores()`: reads fall through to Redis, writes stay in the isolated process.

Isolation is for the rest of a process's life, so each test runs its isolated part
in a forked child (`run_isolated`, as an isolated call does); an AssertionError
there comes back here.
"""

from __future__ import annotations

import pickle

import pytest
import redis

from graftq.errors import EntityNotFound, VersionConflict
from graftq.registry.overlay import isolate_stores
from graftq.registry.store import EntityRegistry
from graftq.tasks.isolation import run_isolated
from tests.integration.registry.helpers import snapshot
from tests.integration.registry.models import Address, Student


def ids(entities):
    return [e.ecs_id for e in entities]


def test_isolated_writes_are_visible_in_process_only(
    reg: EntityRegistry, redis_client: redis.Redis, redis_url: str
) -> None:
    v1 = reg.put(Student(name="Ada", age=30, address=Address(city="London")))
    before = snapshot(redis_client)
    assert not reg.isolated

    new, v2 = run_isolated(
        lambda: _isolated_writes(reg, v1), encode=pickle.dumps, decode=pickle.loads,
        setup=isolate_stores,
    )  # fmt: skip

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
        assert ids(fresh.heads(Student)) == [v1.ecs_id]


def _isolated_writes(reg: EntityRegistry, v1: Student) -> tuple[Student, Student]:
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

    # heads() sees the overlay's new lineages after the stored ones, at their overlay heads.
    assert ids(reg.heads(Student)) == [v2.ecs_id, new.ecs_id]

    # The overlay still refuses stale writes.
    stale = reg.get(v1.ecs_id)
    stale.age = 99
    with pytest.raises(VersionConflict):
        reg.put(stale)
    return new, v2


def test_a_store_made_after_isolation_is_isolated_too(
    reg: EntityRegistry, redis_client: redis.Redis, redis_url: str
) -> None:
    assert not reg.isolated

    def late_store() -> str:
        late = EntityRegistry(redis.Redis.from_url(redis_url, decode_responses=True))
        stored = late.put(Address(city="x"))
        late.client.set("probe", "1")
        assert late.isolated and late.get(stored.ecs_id) == stored
        return "ok"

    assert run_isolated(late_store, encode=str.encode, decode=bytes.decode, setup=isolate_stores)
    assert redis_client.dbsize() == 0
    assert not reg.isolated  # only the child was isolated
