"""Entity trees: re-versioning up to the root, containers, and structural sharing."""

from __future__ import annotations

import pytest
import redis

from graftq.registry.store import EntityRegistry
from tests.entities import ids, strip
from tests.integration.registry.models import (
    Address,
    Aliased,
    Bag,
    Computed,
    Course,
    Envelope,
    Floor,
    Leaf,
    Letter,
    Loose,
    Site,
    Student,
)
from tests.redis_state import snapshot, version_keys

NO_TIME = frozenset({"created_at"})


def course() -> Course:
    return Course(
        title="Engines",
        mentor=Student(
            name="Ada",
            age=30,
            address=Address(city="London"),
            friends=[Address(city="Paris"), Address(city="Turin")],
        ),
        pair=(Address(city="p0"), Address(city="p1")),
        stops=(Address(city="s0"), Address(city="s1"), Address(city="s2")),
        by_name={"home": Address(city="h"), "work": Address(city="w")},
        groups={"g": [Address(city="g0"), Address(city="g1")], "empty": []},
        grid=[[Address(city="00"), Address(city="01")], [], [Address(city="20")]],
        mixed=[None, Address(city="m1"), None, Address(city="m3")],
        scores={"a": 1, "b": 2},
        labelled={"n": 7, "addr": Address(city="l"), "z": 9},
    )


def all_ids(dump) -> set[str]:
    """Every ecs_id in a model_dump()."""
    found: set[str] = set()
    if isinstance(dump, dict):
        if "ecs_id" in dump:
            found.add(str(dump["ecs_id"]))
        for value in dump.values():
            found |= all_ids(value)
    elif isinstance(dump, list | tuple):
        for value in dump:
            found |= all_ids(value)
    return found


def test_every_container_kind_round_trips(reg: EntityRegistry) -> None:
    original = course()
    stored = reg.put(original)
    read = reg.get(original.ecs_id)

    # Same values and, for first versions, the same ids, at every depth.
    assert strip(stored.model_dump(), NO_TIME) == strip(original.model_dump(), NO_TIME)
    assert read.model_dump() == stored.model_dump()
    assert isinstance(read, Course)
    assert isinstance(read.pair, tuple) and isinstance(read.stops, tuple)
    assert all(isinstance(a, Address) for a in read.stops)
    assert isinstance(read.by_name["home"], Address)
    assert isinstance(read.groups["g"][1], Address)
    assert isinstance(read.grid[2][0], Address)
    assert read.mixed[0] is None and isinstance(read.mixed[3], Address)
    assert isinstance(read.labelled["addr"], Address) and read.labelled["z"] == 9
    assert read.labelled == stored.labelled
    # Each sub-entity is its own version, readable on its own.
    assert read.grid[0][1].model_dump() == reg.get(original.grid[0][1].ecs_id).model_dump()
    assert len(all_ids(read.model_dump())) == 1 + 4 + 2 + 3 + 2 + 2 + 3 + 2 + 1


def test_dict_key_order_survives_when_entities_and_values_mix(reg: EntityRegistry) -> None:
    original = Course(title="t", labelled={"n": 7, "addr": Address(city="l"), "z": 9})
    reg.put(original)
    read = reg.get(original.ecs_id)
    assert isinstance(read, Course)
    assert list(read.labelled) == ["n", "addr", "z"]


def test_dict_key_named_all_keeps_its_sibling_values(reg: EntityRegistry) -> None:
    original = Course(title="t", labelled={"__all__": Address(city="l"), "n": 7})
    stored = reg.put(original)
    assert isinstance(stored, Course)
    assert stored.labelled.get("n") == 7
    read = reg.get(original.ecs_id)
    assert isinstance(read, Course)
    assert read.labelled.get("n") == 7


def test_unchanged_tree_with_containers_writes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(course())
    before = snapshot(redis_client)
    assert reg.put(reg.get(stored.ecs_id)).model_dump() == stored.model_dump()
    assert snapshot(redis_client) == before


def test_nested_change_reversions_the_path_to_the_root_only(reg: EntityRegistry) -> None:
    v1 = reg.put(course())
    edit = reg.get(v1.ecs_id)
    assert edit.mentor is not None and edit.mentor.address is not None
    edit.mentor.address.city = "Cambridge"
    v2 = reg.put(edit)

    assert v1.mentor is not None and v2.mentor is not None
    assert v1.mentor.address is not None and v2.mentor.address is not None
    changed = [(v1, v2), (v1.mentor, v2.mentor), (v1.mentor.address, v2.mentor.address)]
    for old, new in changed:
        assert new.ecs_id != old.ecs_id
        assert new.lineage_id == old.lineage_id
        assert new.parent_id == old.ecs_id
        assert reg.head(old.lineage_id).ecs_id == new.ecs_id
        assert ids(reg.history(old.lineage_id)) == [old.ecs_id, new.ecs_id]
    assert v2.mentor.address.city == "Cambridge"
    assert reg.get(v1.mentor.address.ecs_id).city == "London"

    # Siblings at every level keep their version.
    changed_ids = {str(e.ecs_id) for pair in changed for e in pair}
    assert all_ids(v1.model_dump()) - changed_ids == all_ids(v2.model_dump()) - changed_ids
    assert ids(v2.mentor.friends) == ids(v1.mentor.friends)
    assert ids(v2.stops) == ids(v1.stops)


@pytest.mark.parametrize(
    ("edit", "changed_path"),
    [
        pytest.param(lambda c: setattr(c.pair[1], "city", "x"), ("pair", 1), id="tuple"),
        pytest.param(lambda c: setattr(c.stops[2], "city", "x"), ("stops", 2), id="var-tuple"),
        pytest.param(
            lambda c: setattr(c.by_name["work"], "city", "x"), ("by_name", "work"), id="dict"
        ),
        pytest.param(
            lambda c: setattr(c.groups["g"][0], "city", "x"), ("groups", "g", 0), id="dict-list"
        ),
        pytest.param(lambda c: setattr(c.grid[2][0], "city", "x"), ("grid", 2, 0), id="grid"),
        pytest.param(lambda c: setattr(c.mixed[3], "city", "x"), ("mixed", 3), id="optional"),
        pytest.param(
            lambda c: setattr(c.labelled["addr"], "city", "x"), ("labelled", "addr"), id="union"
        ),
    ],
)
def test_change_inside_a_container_reversions_only_that_entity_and_root(
    reg: EntityRegistry, edit, changed_path
) -> None:
    v1 = reg.put(course())
    copy = reg.get(v1.ecs_id)
    edit(copy)
    v2 = reg.put(copy)

    def at(tree, path):
        tree = getattr(tree, path[0])
        for part in path[1:]:
            tree = tree[part]
        return tree

    old, new = at(v1, changed_path), at(v2, changed_path)
    assert new.city == "x"
    assert new.parent_id == old.ecs_id and new.lineage_id == old.lineage_id
    assert v2.parent_id == v1.ecs_id
    assert all_ids(v1.model_dump()) - all_ids(v2.model_dump()) == {
        str(v1.ecs_id),
        str(old.ecs_id),
    }
    assert strip(reg.get(v2.ecs_id).model_dump()) == strip(copy.model_dump())
    assert reg.get(old.ecs_id).model_dump() == old.model_dump()


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s.friends.reverse(), id="reorder"),
        pytest.param(lambda s: s.friends.pop(0), id="remove"),
        pytest.param(lambda s: s.friends.append(Address(city="Rome")), id="append"),
        pytest.param(lambda s: s.friends.__setitem__(0, Address(city="Paris")), id="replace"),
        pytest.param(lambda s: setattr(s, "address", None), id="optional-to-none"),
        pytest.param(lambda s: setattr(s, "address", Address(city="Oslo")), id="optional-new"),
    ],
)
def test_structural_edits_are_changes_that_keep_untouched_sub_entities(
    reg: EntityRegistry, edit
) -> None:
    v1 = reg.put(
        Student(
            name="Ada",
            age=30,
            address=Address(city="London"),
            friends=[Address(city="Paris"), Address(city="Turin"), Address(city="Pisa")],
        )
    )
    copy = reg.get(v1.ecs_id)
    edit(copy)
    v2 = reg.put(copy)

    assert v2.ecs_id != v1.ecs_id
    assert v2.parent_id == v1.ecs_id
    assert reg.head(v1.lineage_id).ecs_id == v2.ecs_id
    assert strip(reg.get(v2.ecs_id).model_dump()) == strip(copy.model_dump())
    # Sub-entities that were only moved, or kept, keep their version ids; new ones keep theirs.
    assert ids(v2.friends) == ids(copy.friends)
    assert (v2.address and v2.address.ecs_id) == (copy.address and copy.address.ecs_id)
    assert all(f.parent_id is None for f in v2.friends)
    assert reg.get(v1.ecs_id).model_dump() == v1.model_dump()


def test_replacing_a_sub_entity_starts_a_new_lineage(reg: EntityRegistry) -> None:
    v1 = reg.put(Student(name="Ada", age=30, address=Address(city="London")))
    copy = reg.get(v1.ecs_id)
    fresh = Address(city="London")
    copy.address = fresh
    v2 = reg.put(copy)

    assert v2.ecs_id != v1.ecs_id
    assert v1.address is not None and v2.address is not None
    assert v2.address.ecs_id == fresh.ecs_id
    assert v2.address.lineage_id == fresh.lineage_id != v1.address.lineage_id
    assert v2.address.parent_id is None
    assert reg.head(v1.address.lineage_id).ecs_id == v1.address.ecs_id


def test_sub_entity_read_from_another_tree_is_shared_not_copied(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    first = reg.put(Student(name="Ada", age=30, address=Address(city="London")))
    assert first.address is not None
    before = version_keys(snapshot(redis_client))
    second = reg.put(Student(name="Bob", age=20, address=reg.get(first.address.ecs_id)))

    assert second.address is not None
    assert second.address.ecs_id == first.address.ecs_id
    assert version_keys(snapshot(redis_client)) - before == {f"graftq:v:{second.ecs_id}"}


def test_one_leaf_change_in_a_big_tree_writes_two_versions(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    v1 = reg.put(Bag(name="bag", leaves=[Leaf(value=n) for n in range(50)]))
    before = snapshot(redis_client)
    assert len(version_keys(before)) == 51

    copy = reg.get(v1.ecs_id)
    assert isinstance(copy, Bag)
    copy.leaves[17].value = 1700
    v2 = reg.put(copy)

    after = snapshot(redis_client)
    assert version_keys(after) - version_keys(before) == {
        f"graftq:v:{v2.ecs_id}",
        f"graftq:v:{v2.leaves[17].ecs_id}",
    }
    assert {key: after[key] for key in version_keys(before)} == {
        key: before[key] for key in version_keys(before)
    }  # old documents untouched
    assert ids(v2.leaves[:17]) + ids(v2.leaves[18:]) == ids(v1.leaves[:17]) + ids(v1.leaves[18:])
    assert reg.get(v1.ecs_id).model_dump() == v1.model_dump()


def test_subclass_and_union_sub_entities_keep_their_class(reg: EntityRegistry) -> None:
    original = Site(place=Floor(city="x", level=3), either=Student(name="s", age=1))
    reg.put(original)
    read = reg.get(original.ecs_id)

    assert isinstance(read, Site)
    assert type(read.place) is Floor and read.place.level == 3
    assert type(read.either) is Student
    assert type(reg.get(original.place.ecs_id)) is Floor
    read.place.level = 4
    v2 = reg.put(read)
    assert isinstance(v2, Site) and type(v2.place) is Floor
    assert reg.get(v2.place.ecs_id).model_dump()["level"] == 4


def test_aliased_fields_round_trip(reg: EntityRegistry) -> None:
    original = Aliased(fullName="Ada Lovelace")
    stored = reg.put(original)
    assert isinstance(stored, Aliased) and stored.full_name == "Ada Lovelace"
    read = reg.get(original.ecs_id)
    assert isinstance(read, Aliased) and read.full_name == "Ada Lovelace"


def test_computed_fields_round_trip(reg: EntityRegistry) -> None:
    original = Computed(a=2)
    reg.put(original)
    read = reg.get(original.ecs_id)
    assert isinstance(read, Computed) and read.double == 4


def test_entities_in_extra_fields_are_versioned_sub_entities(reg: EntityRegistry) -> None:
    loose = Loose(name="l", home=Address(city="Paris"), stops=[Address(city="Lyon")])

    stored = reg.put(loose)
    home = stored.home  # type: ignore[attr-defined]
    assert isinstance(home, Address) and reg.get(home.ecs_id) == home  # stored on its own
    read = reg.get(stored.ecs_id)
    assert read.home == home and read.stops[0].city == "Lyon"  # type: ignore[attr-defined]

    read.home.city = "Nice"  # type: ignore[attr-defined]
    moved = reg.put(read)
    assert reg.head(home.lineage_id).city == "Nice"
    assert moved.stops[0].ecs_id == stored.stops[0].ecs_id  # type: ignore[attr-defined]


def test_entities_inside_plain_models_are_versioned_sub_entities(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    letter = Letter(
        envelope=Envelope(to=Address(city="Paris")), copies=[Envelope(to=Address(city="Rome"))]
    )

    stored = reg.put(letter)
    to = stored.envelope.to
    assert reg.get(to.ecs_id) == to  # stored on its own, not inline
    assert isinstance(reg.get(stored.ecs_id).envelope, Envelope)

    edited = reg.get(stored.ecs_id)
    edited.envelope.to.city = "Lyon"
    keys = len(version_keys(snapshot(redis_client)))
    moved = reg.put(edited)
    assert moved.envelope.to.parent_id == to.ecs_id and reg.head(to.lineage_id).city == "Lyon"
    assert moved.copies[0].to.ecs_id == stored.copies[0].to.ecs_id  # the untouched one stays
    assert len(version_keys(snapshot(redis_client))) == keys + 2  # the address, the letter
    assert reg.put(reg.get(moved.ecs_id)).ecs_id == moved.ecs_id  # unchanged: nothing written
