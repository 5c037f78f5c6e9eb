"""The consistency checker finds each kind of half-written commit (it must be able to fail)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from graftq.registry.keys import Keys
from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Student
from tests.reliability import consistency

KEYS = Keys()


@pytest.fixture
def reg(redis_client: redis.Redis) -> EntityRegistry:
    return EntityRegistry(redis_client)


def lineage(reg: EntityRegistry) -> tuple[str, str, str]:
    """(lineage, first version, second version) of a stored Student."""
    first = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    second = reg.put(first.model_copy(update={"age": 21}))
    return str(first.lineage_id), str(first.ecs_id), str(second.ecs_id)


BREAKAGES: dict[str, Callable[[redis.Redis, tuple[str, str, str]], object]] = {
    "head names a missing version": lambda r, ids: r.delete(KEYS.version(ids[2])),
    "history lists a missing version": lambda r, ids: r.rpush(KEYS.history(ids[0]), "nope"),
    "version in no history": lambda r, ids: r.lrem(KEYS.history(ids[0]), 0, ids[1]),
    "head without history": lambda r, ids: r.delete(KEYS.history(ids[0])),
    "history without head": lambda r, ids: r.delete(KEYS.head(ids[0])),
    "duplicate history entry": lambda r, ids: r.rpush(KEYS.history(ids[0]), ids[1]),
}


def test_an_intact_store_is_consistent(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    lineage(reg)
    report = consistency.check(redis_client)
    assert report.problems == [] and report.versions == 3  # two students, one address


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_breakage_is_found(
    reg: EntityRegistry, redis_client: redis.Redis, breakage: str
) -> None:
    BREAKAGES[breakage](redis_client, lineage(reg))
    assert consistency.check(redis_client).problems != []


def test_a_missing_sub_entity_is_found(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    stored = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert stored.address is not None
    redis_client.delete(KEYS.version(stored.address.ecs_id))
    problems = consistency.check(redis_client).problems
    assert any("sub-entity" in problem for problem in problems)
