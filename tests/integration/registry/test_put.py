"""`EntityRegistry.put` (SPEC section 3): first versions, no-op puts, new versions, conflicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
import redis

from graftq.errors import InvalidEntity, VersionConflict
from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Student
from tests.entities import ids, strip
from tests.integration.registry.models import Box, Color, Gauge, Numbers, Strict, StrictFields
from tests.redis_state import snapshot


def ada() -> Student:
    return Student(
        name="Ada",
        age=30,
        address=Address(city="London"),
        tags=["math", "engines"],
        friends=[Address(city="Paris"), Address(city="Turin")],
    )


# -- first version ------------------------------------------------------------


def test_first_put_starts_a_lineage_with_the_objects_ids(reg: EntityRegistry) -> None:
    student = ada()
    before = datetime.now(UTC)
    stored = reg.put(student)

    assert stored is not student
    assert stored.ecs_id == student.ecs_id
    assert stored.lineage_id == student.lineage_id
    assert stored.lineage_id != stored.ecs_id
    assert stored.parent_id is None
    assert stored.derived_from is None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= stored.created_at <= datetime.now(UTC)
    assert strip(stored.model_dump()) == strip(student.model_dump())
    # Every sub-entity is a first version of its own lineage too.
    assert stored.address is not None and student.address is not None
    assert stored.address.ecs_id == student.address.ecs_id
    assert stored.address.parent_id is None
    assert ids(stored.friends) == ids(student.friends)


def test_first_put_makes_head_and_history(reg: EntityRegistry) -> None:
    stored = reg.put(ada())

    assert reg.head(stored.lineage_id).model_dump() == stored.model_dump()
    assert ids(reg.history(stored.lineage_id)) == [stored.ecs_id]
    assert stored.address is not None
    assert reg.head(stored.address.lineage_id).ecs_id == stored.address.ecs_id
    assert reg.provenance(stored.ecs_id) is None


def test_first_put_writes_a_version_key_per_entity(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(ada())
    assert stored.address is not None
    expected = {stored.ecs_id, stored.address.ecs_id, *ids(stored.friends)}
    found = {key.removeprefix("graftq:v:") for key in redis_client.scan_iter("graftq:v:*")}
    assert found == {str(i) for i in expected}


@pytest.mark.parametrize("where", ["root", "sub-entity"])
def test_first_version_lineage_id_never_equals_an_ecs_id(
    reg: EntityRegistry, redis_client: redis.Redis, where: str
) -> None:
    same = uuid4()
    clash = Address(city="Oslo", ecs_id=same, lineage_id=same)
    entity = clash if where == "root" else Student(name="Ada", age=30, address=clash)

    with pytest.raises(InvalidEntity, match=str(same)):
        reg.put(entity)

    assert redis_client.dbsize() == 0


# -- unchanged put --------------------------------------------------------------


def test_unchanged_put_writes_nothing_and_returns_the_stored_version(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = ada()
    stored = reg.put(student)
    before = snapshot(redis_client)

    for same in (student, stored, reg.get(stored.ecs_id)):
        again = reg.put(same)
        assert again.model_dump() == stored.model_dump()
        assert again is not same
    assert snapshot(redis_client) == before


def test_an_unchanged_set_is_no_change_whatever_order_it_iterates_in(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    """A set's order comes from its hash table, not its values: one that shrank iterates
    otherwise than the same set read back, and an unchanged put of it wrote a new version."""
    stored = reg.put(Numbers(numbers=set(range(20)), labels=frozenset({"x"})))
    edited = reg.get(stored.ecs_id)
    edited.numbers -= set(range(20)) - {3, 17}  # in place: the table keeps its size
    changed = reg.put(edited)
    before = snapshot(redis_client)

    again = reg.put(reg.get(changed.ecs_id))

    assert again.ecs_id == changed.ecs_id and again.numbers == {3, 17}
    assert snapshot(redis_client) == before


def test_an_unchanged_nan_is_no_change(reg: EntityRegistry, redis_client: redis.Redis) -> None:
    """NaN is not equal to itself, so comparing documents with == saw every NaN as an edit."""
    stored = reg.put(Gauge(value=float("nan"), values=[1.5, float("nan"), float("inf")]))
    before = snapshot(redis_client)

    again = reg.put(reg.get(stored.ecs_id))

    assert again.ecs_id == stored.ecs_id
    assert snapshot(redis_client) == before


def test_identity_fields_alone_are_not_a_change(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(ada())
    before = snapshot(redis_client)
    touched = stored.model_copy(
        update={"created_at": datetime(2000, 1, 1, tzinfo=UTC), "derived_from": "x"}
    )

    assert reg.put(touched).model_dump() == stored.model_dump()
    assert snapshot(redis_client) == before


def test_unchanged_stale_put_returns_that_version_without_conflict(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    v1 = reg.put(ada())
    reg.put(v1.model_copy(update={"age": 31}))
    before = snapshot(redis_client)

    assert reg.put(v1).model_dump() == v1.model_dump()
    assert snapshot(redis_client) == before


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_data_nested_deeper_than_the_json_parser_reads_is_refused(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    """SPEC 3: a stored version can always be read back. Data nested 200 deep was written,
    then every read of it was a CorruptVersion: pydantic's JSON parser stops at 200 levels."""
    readable = reg.put(Box(content=nested_lists(150)))
    assert reg.get(readable.ecs_id).content == nested_lists(150)
    before = snapshot(redis_client)

    for depth in (200, 240):
        with pytest.raises(InvalidEntity, match=r"Box .*nest"):
            reg.put(Box(content=nested_lists(depth)))
    assert snapshot(redis_client) == before


# -- changed put ----------------------------------------------------------------


def test_changed_put_makes_a_new_version_and_advances_the_head(reg: EntityRegistry) -> None:
    v1 = reg.put(ada())
    edit = reg.get(v1.ecs_id)
    edit.age = 31
    v2 = reg.put(edit)

    assert v2.ecs_id not in (v1.ecs_id, edit.ecs_id)
    assert v2.lineage_id == v1.lineage_id
    assert v2.parent_id == v1.ecs_id
    assert v2.age == 31
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id
    assert ids(reg.history(v1.lineage_id)) == [v1.ecs_id, v2.ecs_id]
    assert reg.get(v1.ecs_id).age == 30


def test_parent_is_the_version_read_as_along_a_chain(reg: EntityRegistry) -> None:
    current = reg.put(Student(name="Ada", age=0))
    chain = [current]
    for age in range(1, 6):
        current.age = age
        current = reg.put(current)
        chain.append(current)

    assert [v.parent_id for v in chain] == [None, *ids(chain[:-1])]
    assert ids(reg.history(current.lineage_id)) == ids(chain)
    assert [reg.get(v.ecs_id).age for v in chain] == list(range(6))
    assert reg.head(current.lineage_id).age == 5


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: setattr(s, "name", "Grace"), id="str"),
        pytest.param(lambda s: setattr(s, "major", "undeclared!"), id="default-field"),
        pytest.param(lambda s: s.tags.reverse(), id="scalar-list-order"),
        pytest.param(lambda s: s.tags.pop(), id="scalar-list-removal"),
        pytest.param(lambda s: s.tags.append("x"), id="scalar-list-append"),
    ],
)
def test_each_kind_of_own_field_edit_is_a_change(reg: EntityRegistry, edit) -> None:
    v1 = reg.put(ada())
    copy = reg.get(v1.ecs_id)
    edit(copy)
    v2 = reg.put(copy)

    assert v2.ecs_id != v1.ecs_id
    assert v2.parent_id == v1.ecs_id
    assert strip(reg.get(v2.ecs_id).model_dump()) == strip(copy.model_dump())
    # Only the root changed: every sub-entity keeps its version.
    assert v2.address is not None and v1.address is not None
    assert v2.address.ecs_id == v1.address.ecs_id
    assert ids(v2.friends) == ids(v1.friends)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(1, True, id="int-to-bool"),
        pytest.param(0, False, id="int-to-false"),
        pytest.param(1, 1.0, id="int-to-float"),
        pytest.param(0.0, -0.0, id="zero-to-negative-zero"),
        pytest.param({"k": [1]}, {"k": [1.0]}, id="nested-int-to-float"),
    ],
)
def test_a_value_equal_under_double_equals_but_of_another_type_is_a_change(
    reg: EntityRegistry, old: object, new: object
) -> None:
    """True == 1 == 1.0 and -0.0 == 0.0 in Python, but they are different values that
    read back differently: an edit between them was dropped, the old value kept."""
    v1 = reg.put(Box(content=old))
    edit = reg.get(v1.ecs_id)
    edit.content = new
    v2 = reg.put(edit)

    assert v2.ecs_id != v1.ecs_id
    for read in (v2, reg.head(v1.lineage_id)):
        assert repr(read.content) == repr(new)


# -- stale put --------------------------------------------------------------------


def test_stale_put_raises_version_conflict_and_writes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    v1 = reg.put(ada())
    first, second = reg.get(v1.ecs_id), reg.get(v1.ecs_id)
    first.age = 31
    v2 = reg.put(first)
    second.age = 32
    before = snapshot(redis_client)

    with pytest.raises(VersionConflict) as caught:
        reg.put(second)

    assert str(v1.lineage_id) in str(caught.value)
    assert snapshot(redis_client) == before
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id


def test_stale_put_of_the_callers_original_object_conflicts(reg: EntityRegistry) -> None:
    original = Student(name="Ada", age=30)
    reg.put(original)
    original.age = 31
    reg.put(original)  # original still names the first version: it was not mutated
    original.age = 32

    with pytest.raises(VersionConflict):
        reg.put(original)


def test_stale_nested_change_conflicts_on_the_sub_entity(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    v1 = reg.put(ada())
    first, second = reg.get(v1.ecs_id), reg.get(v1.ecs_id)
    first.friends[0].city = "Lyon"
    reg.put(first)
    second.friends[0].city = "Nice"
    before = snapshot(redis_client)

    with pytest.raises(VersionConflict):
        reg.put(second)
    assert snapshot(redis_client) == before


def test_branch_put_stores_a_stale_version_without_moving_the_head(
    reg: EntityRegistry,
) -> None:
    v1 = reg.put(ada())
    first, second = reg.get(v1.ecs_id), reg.get(v1.ecs_id)
    first.age = 31
    v2 = reg.put(first)
    second.age = 40

    branch = reg.put(second, branch=True)

    assert branch.ecs_id not in (v1.ecs_id, v2.ecs_id)
    assert branch.parent_id == v1.ecs_id
    assert branch.lineage_id == v1.lineage_id
    assert branch.age == 40
    assert reg.get(branch.ecs_id).age == 40
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id
    assert ids(reg.history(v1.lineage_id)) == [v1.ecs_id, v2.ecs_id, branch.ecs_id]

    # The branch is not the head: changing it again conflicts, or branches again.
    branch.age = 41
    with pytest.raises(VersionConflict):
        reg.put(branch)
    twig = reg.put(branch, branch=True)
    assert twig.parent_id == branch.ecs_id
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id


def test_branch_flag_on_a_current_version_is_an_ordinary_put(reg: EntityRegistry) -> None:
    v1 = reg.put(ada())
    v1.age = 31
    v2 = reg.put(v1, branch=True)

    assert v2.parent_id == v1.ecs_id
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id


# -- the caller's object ------------------------------------------------------------


def test_put_never_mutates_the_callers_object(reg: EntityRegistry) -> None:
    student = ada()
    address, friends = student.address, list(student.friends)

    def unchanged_by(call, refused: type[Exception] | None = None) -> None:
        before = student.model_dump()
        if refused is None:
            call()
        else:
            with pytest.raises(refused):
                call()
        assert student.model_dump() == before
        assert student.address is address
        assert all(a is b for a, b in zip(student.friends, friends, strict=True))

    unchanged_by(lambda: reg.put(student))  # first version
    unchanged_by(lambda: reg.put(student))  # unchanged
    student.age = 31
    student.friends[1].city = "Milan"
    unchanged_by(lambda: reg.put(student))  # changed, nested
    student.age = 32
    # Still the first version's ids, so stale: the head is the nested change's version.
    unchanged_by(lambda: reg.put(student), refused=VersionConflict)
    unchanged_by(lambda: reg.put(student, branch=True))  # stale: branch


def test_mutating_the_returned_copy_does_not_change_the_store(reg: EntityRegistry) -> None:
    stored = reg.put(ada())
    expected = stored.model_dump()
    stored.name = "changed"
    stored.tags.append("changed")
    assert stored.address is not None
    stored.address.city = "changed"
    stored.friends.clear()

    assert reg.get(expected["ecs_id"]).model_dump() == expected


def test_strict_models_and_fields_are_stored_and_read_back(reg: EntityRegistry) -> None:
    fields = StrictFields(when=datetime.now(UTC), ref=uuid4(), pair=(1, 2), color=Color.RED)
    strict = Strict(value=1, inner=fields)

    stored = reg.put(strict)
    assert reg.get(stored.ecs_id) == stored
    assert stored.inner is not None and stored.inner.pair == (1, 2)
    assert reg.get(stored.inner.ecs_id).color is Color.RED
    assert reg.put(reg.get(stored.ecs_id)).ecs_id == stored.ecs_id  # unchanged: not written
