"""`heads(EntityType)`: every lineage's head, from the index the commit keeps."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from graftq.registry.store import EntityRegistry
from tests.integration.registry.models import Address, Counter, Student

pytestmark = pytest.mark.integration


class Freshman(Student):
    """A subclass: its lineages are Students too."""


def test_heads_lists_each_lineage_once_at_its_head(reg: EntityRegistry) -> None:
    ada = reg.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    bob = reg.put(Student(name="Bob", age=30))
    ada2 = reg.put(ada.model_copy(update={"age": 21}))
    reg.put(ada.model_copy(update={"age": 99}), branch=True)  # a branch: the head stays
    reg.put(Counter(value=1))

    heads = list(reg.heads(Student))
    assert [h.ecs_id for h in heads] == [ada2.ecs_id, bob.ecs_id]  # oldest lineage first
    assert heads[0].address is not None and heads[0].address.city == "Paris"
    assert [c.value for c in reg.heads(Counter)] == [1]
    assert [a.city for a in reg.heads(Address)] == ["Paris"]  # sub-entities have lineages


def test_heads_include_subclasses_and_page_through_batches(reg: EntityRegistry) -> None:
    stored = [reg.put(Student(name=f"s{n}", age=n)) for n in range(7)]
    fresh = reg.put(Freshman(name="f", age=18))
    found = list(reg.heads(Student, batch=3))
    assert [h.ecs_id for h in found] == [s.ecs_id for s in stored] + [fresh.ecs_id]
    assert isinstance(found[-1], Freshman)
    assert [h.ecs_id for h in reg.heads(Freshman)] == [fresh.ecs_id]


def test_a_lineage_whose_head_changed_type_is_listed_under_the_new_type(
    reg: EntityRegistry,
) -> None:
    ada = reg.put(Student(name="Ada", age=20))
    changed = Freshman(name="Ada", age=20, ecs_id=ada.ecs_id, lineage_id=ada.lineage_id)
    reg.put(changed)
    assert [h.lineage_id for h in reg.heads(Freshman)] == [ada.lineage_id]
    assert [type(h) for h in reg.heads(Student)] == [Freshman]  # once, as its head is


def test_heads_never_scan_the_keyspace(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    for n in range(5):
        reg.put(Student(name=f"s{n}", age=n))
    seen: list[str] = []
    real = redis_client.execute_command

    def spy(*args: object, **options: object) -> object:
        seen.append(str(args[0]).upper())
        return real(*args, **options)

    redis_client.execute_command = spy  # type: ignore[method-assign]
    try:
        assert len(list(reg.heads(Student))) == 5
    finally:
        del redis_client.execute_command
    assert seen and not {"KEYS", "SCAN"} & set(seen), seen
    assert "ZRANGE" in seen


@pytest.mark.parametrize("given", ["Student", Student(name="a", age=1), int])
def test_heads_of_something_not_an_entity_class_is_a_type_error(
    reg: EntityRegistry, given: Any
) -> None:
    with pytest.raises(TypeError, match="heads\\(\\) takes an Entity class"):
        next(reg.heads(given))
