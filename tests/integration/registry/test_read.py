"""`get`, `head`, `history`, `provenance` and `lineage_mermaid` (SPEC section 3)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Student
from tests.entities import ids
from tests.integration.registry.models import Holder, Leaf


def stored_student(reg: EntityRegistry) -> Student:
    stored = reg.put(
        Student(
            name="Ada",
            age=30,
            address=Address(city="London"),
            tags=["a", "b"],
            friends=[Address(city="Paris")],
        )
    )
    assert isinstance(stored, Student)
    return stored


def test_get_returns_a_fresh_copy_each_time(reg: EntityRegistry) -> None:
    stored = stored_student(reg)
    expected = stored.model_dump()

    first = reg.get(stored.ecs_id)
    second = reg.get(stored.ecs_id)
    assert isinstance(first, Student) and isinstance(second, Student)
    assert first is not second
    assert first.address is not second.address
    assert first.tags is not second.tags
    assert first.model_dump() == second.model_dump() == expected

    first.name = "changed"
    first.tags.append("changed")
    assert first.address is not None
    first.address.city = "changed"
    first.friends.pop()
    assert reg.get(stored.ecs_id).model_dump() == expected


def test_get_accepts_uuid_and_str(reg: EntityRegistry) -> None:
    stored = stored_student(reg)
    assert reg.get(str(stored.ecs_id)).model_dump() == reg.get(stored.ecs_id).model_dump()
    assert reg.get(str(stored.ecs_id).upper()).ecs_id == stored.ecs_id
    assert reg.head(str(stored.lineage_id)).ecs_id == stored.ecs_id
    assert ids(reg.history(str(stored.lineage_id))) == [stored.ecs_id]


def test_get_of_a_sub_entity_version(reg: EntityRegistry) -> None:
    stored = stored_student(reg)
    assert stored.address is not None

    address = reg.get(stored.address.ecs_id)
    assert isinstance(address, Address)
    assert address.model_dump() == stored.address.model_dump()
    friend = reg.get(stored.friends[0].ecs_id)
    assert isinstance(friend, Address) and friend.city == "Paris"
    assert reg.head(stored.address.lineage_id).model_dump() == stored.address.model_dump()
    assert ids(reg.history(stored.address.lineage_id)) == [stored.address.ecs_id]


def test_old_versions_read_back_their_old_values(reg: EntityRegistry) -> None:
    current = stored_student(reg)
    dumps = {current.ecs_id: current.model_dump()}
    for n in range(10):
        current.age += 1
        current.tags.append(str(n))
        assert current.address is not None
        current.address.city = f"city{n}"
        current = reg.put(current)
        dumps[current.ecs_id] = current.model_dump()
        if current.address is not None:
            dumps[current.address.ecs_id] = current.address.model_dump()

    for ecs_id, dump in dumps.items():
        assert reg.get(ecs_id).model_dump() == dump
    history = reg.history(current.lineage_id)
    assert [v.age for v in history] == list(range(30, 41))
    assert [v.model_dump() for v in history] == [dumps[i] for i in ids(history)]


def branched_lineage(reg: EntityRegistry) -> tuple[Student, Student, Student, Student]:
    """v1 → v2 → v3 (head), plus a branch of v1 stored between v2 and v3."""
    v1 = stored_student(reg)
    stale = reg.get(v1.ecs_id)
    v1.age = 31
    v2 = reg.put(v1)
    stale.age = 99
    branch = reg.put(stale, branch=True)
    v2.age = 32
    v3 = reg.put(v2)
    return v1, v2, branch, v3


def test_history_is_oldest_first_including_branches(reg: EntityRegistry) -> None:
    v1, v2, branch, v3 = branched_lineage(reg)

    history = reg.history(v1.lineage_id)
    assert ids(history) == [v1.ecs_id, v2.ecs_id, branch.ecs_id, v3.ecs_id]
    assert [v.age for v in history] == [30, 31, 99, 32]
    assert [v.parent_id for v in history] == [None, v1.ecs_id, v1.ecs_id, v2.ecs_id]
    assert reg.head(v1.lineage_id).ecs_id == v3.ecs_id


def test_provenance_is_none_for_directly_stored_versions(reg: EntityRegistry) -> None:
    v1 = stored_student(reg)
    v1.age = 31
    v2 = reg.put(v1)
    assert v2.address is not None

    for version in (v1.ecs_id, v2.ecs_id, v2.address.ecs_id, v2.friends[0].ecs_id):
        assert reg.provenance(version) is None
    assert all(v.derived_from is None for v in reg.history(v1.lineage_id))


def _node_in(side: str, ecs_id) -> bool:
    return ecs_id.hex in side.replace("-", "")


def test_lineage_mermaid_has_every_version_and_every_parent_edge(reg: EntityRegistry) -> None:
    v1, v2, branch, v3 = branched_lineage(reg)

    text = reg.lineage_mermaid(v1.lineage_id)
    lines = text.splitlines()
    assert lines[0].strip() == "graph TD"
    body = text.replace("-", "")
    for version in (v1, v2, branch, v3):
        assert version.ecs_id.hex in body

    edges = [line.split("-->", 1) for line in lines if "-->" in line]
    assert len(edges) == 3
    for parent, child in [(v1, v2), (v1, branch), (v2, v3)]:
        assert any(
            _node_in(left, parent.ecs_id) and _node_in(right, child.ecs_id) for left, right in edges
        ), (parent.ecs_id, child.ecs_id, text)
    # No edge points at the first version.
    assert not any(_node_in(right, v1.ecs_id) for _, right in edges)


def test_lineage_mermaid_of_a_single_version_has_no_edges(reg: EntityRegistry) -> None:
    v1 = stored_student(reg)
    text = reg.lineage_mermaid(v1.lineage_id)
    assert text.startswith("graph TD")
    assert v1.ecs_id.hex in text.replace("-", "")
    assert not re.search(r"-->", text)


def test_a_generic_entity_reads_back_where_it_was_parametrized_elsewhere(
    reg: EntityRegistry, redis_url: str
) -> None:
    """Pydantic gives `Holder[Leaf]` the module of the code that first writes it: here this
    test module, in a worker or script another one. Its stored type name was taken from
    that, so another process could not read it back (UnknownEntityType)."""
    stored = reg.put(Holder[Leaf](item=Leaf(value=1), items=[Leaf(value=2)]))
    reader = textwrap.dedent(f"""
        import redis
        from graftq.registry.store import EntityRegistry
        from tests.integration.registry.models import Holder, Leaf
        kind = Holder[Leaf]
        reg = EntityRegistry(redis.Redis.from_url({redis_url!r}, decode_responses=True))
        read = reg.get({str(stored.ecs_id)!r})
        assert type(read) is kind, type(read)
        print(read.items[0].value)
    """)

    run = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True)

    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "2"
