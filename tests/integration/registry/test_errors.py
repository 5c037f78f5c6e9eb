"""Invalid input and unreadable data (SPEC sections 2, 3 and 8)."""

from __future__ import annotations

import json
from uuid import uuid4

import pydantic
import pytest
import redis

from graftq import Entity
from graftq.errors import CorruptVersion, EntityNotFound, InvalidEntity, UnknownEntityType
from graftq.registry.store import EntityRegistry
from tests.integration.registry.models import (
    Address,
    Attachment,
    Binary,
    Blob,
    Box,
    Course,
    Link,
    Mail,
    Node,
    Student,
)
from tests.redis_state import snapshot


class NotAnEntity(pydantic.BaseModel):
    city: str


@pytest.mark.parametrize(
    "value",
    [None, "text", 3, {"city": "x"}, [Address(city="x")], NotAnEntity(city="x"), Address],
    ids=["none", "str", "int", "dict", "list-of-entities", "plain-model", "class"],
)
def test_put_of_a_non_entity_is_invalid(
    reg: EntityRegistry, redis_client: redis.Redis, value
) -> None:
    with pytest.raises(InvalidEntity):
        reg.put(value)
    assert redis_client.dbsize() == 0


def two_link_cycle() -> Link:
    a, b = Link(name="a"), Link(name="b")
    a.child = b
    b.child = a  # plain assignment skips validation
    return a


def self_cycle() -> Link:
    a = Link(name="a")
    a.child = a
    return a


def deep_cycle() -> Link:
    a = Link(name="a", child=Link(name="b", child=Link(name="c")))
    assert a.child is not None and a.child.child is not None
    a.child.child.child = a
    return a


def twice_in_a_list() -> Student:
    friend = Address(city="x")
    return Student(name="s", age=1, friends=[friend, friend])


def twice_in_two_fields() -> Student:
    friend = Address(city="x")
    return Student(name="s", age=1, address=friend, friends=[friend])


def twice_in_nested_containers() -> Course:
    stop = Address(city="x")
    return Course(title="c", by_name={"a": stop}, grid=[[], [stop]])


def twice_at_two_depths() -> Course:
    home = Address(city="x")
    return Course(title="c", mentor=Student(name="s", age=1, address=home), stops=(home,))


def list_inside_itself() -> Box:
    box = Box(content=[1])
    box.content.append(box.content)
    return box


def dict_inside_itself_under_a_sub_entity() -> Box:
    inner = Box(content={"a": {}})
    inner.content["a"]["back"] = inner.content
    return Box(content=[inner])


def tuple_inside_itself() -> Box:
    inner: list[object] = []
    outer = (inner,)
    inner.append(outer)
    return Box(content=outer)


@pytest.mark.parametrize(
    "make",
    [
        two_link_cycle,
        self_cycle,
        deep_cycle,
        list_inside_itself,
        dict_inside_itself_under_a_sub_entity,
        tuple_inside_itself,
        twice_in_a_list,
        twice_in_two_fields,
        twice_in_nested_containers,
        twice_at_two_depths,
    ],
)
def test_cycles_and_one_object_twice_are_invalid_and_write_nothing(
    reg: EntityRegistry, redis_client: redis.Redis, make
) -> None:
    reg.put(Student(name="existing", age=1, address=Address(city="y")))
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity):
        reg.put(make())
    assert snapshot(redis_client) == before


def twice_under_two_list_items() -> tuple[Node, str]:
    shared = Node(value=1)
    return Node(children=[Node(opt=shared), Node(opt=shared)]), "children.0.opt and children.1.opt"


def twice_under_a_sub_entity() -> tuple[Course, str]:
    home = Address(city="x")
    mentor = Student(name="s", age=1, address=home, friends=[home])
    return Course(title="c", mentor=mentor), "mentor.address and mentor.friends.0"


def twice_at_two_depths_with_paths() -> tuple[Course, str]:
    return twice_at_two_depths(), "mentor.address and stops.0"


def cycle_through_the_root() -> tuple[Link, str]:
    return deep_cycle(), "at the root contains itself at child.child.child"


def cycle_below_the_root() -> tuple[Link, str]:
    return Link(name="r", child=two_link_cycle()), "at child contains itself at child.child.child"


@pytest.mark.parametrize(
    "make",
    [
        twice_under_two_list_items,
        twice_under_a_sub_entity,
        twice_at_two_depths_with_paths,
        cycle_through_the_root,
        cycle_below_the_root,
    ],
)
def test_cycle_and_twice_messages_give_paths_from_the_root(reg: EntityRegistry, make) -> None:
    root, paths = make()

    with pytest.raises(InvalidEntity) as caught:
        reg.put(root)
    assert paths in str(caught.value)


def test_a_container_inside_itself_is_named_where_it_loops(reg: EntityRegistry) -> None:
    with pytest.raises(InvalidEntity, match=r"dict at content contains itself at content\.a\.back"):
        reg.put(dict_inside_itself_under_a_sub_entity())


def test_one_object_twice_in_a_stored_tree_is_invalid(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Student(name="s", age=1, friends=[Address(city="x")]))
    stored.address = stored.friends[0]
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity):
        reg.put(stored)
    assert snapshot(redis_client) == before


def test_equal_copies_of_one_version_are_not_the_same_object(reg: EntityRegistry) -> None:
    friend = reg.put(Address(city="x"))
    twice = reg.put(
        Student(name="s", age=1, friends=[reg.get(friend.ecs_id), reg.get(friend.ecs_id)])
    )
    assert [f.ecs_id for f in twice.friends] == [friend.ecs_id, friend.ecs_id]
    assert twice.friends[0] is not twice.friends[1]


NOT_UTF8 = b"\x89PNG\r\n\x1a\n\x00\xff"


def bytes_field() -> tuple[Entity, Entity, str, str]:
    """(root to put, entity the message names, path in it, class to configure)"""
    blob = Blob(data=NOT_UTF8)
    return blob, blob, "data", "Blob"


def bytes_in_a_sub_entity() -> tuple[Entity, Entity, str, str]:
    blob = Blob(data=NOT_UTF8)
    return Mail(subject="s", blob=blob), blob, "data", "Blob"


def bytes_in_a_list() -> tuple[Entity, Entity, str, str]:
    mail = Mail(subject="s", chunks=[b"text", NOT_UTF8])
    return mail, mail, "chunks.1", "Mail"


def bytes_in_a_plain_model() -> tuple[Entity, Entity, str, str]:
    mail = Mail(subject="s", attachments={"logo": Attachment(data=NOT_UTF8)})
    return mail, mail, "attachments.logo.data", "Attachment"


@pytest.mark.parametrize(
    "make", [bytes_field, bytes_in_a_sub_entity, bytes_in_a_list, bytes_in_a_plain_model]
)
def test_bytes_that_are_not_utf8_are_invalid_naming_class_id_and_path(
    reg: EntityRegistry, redis_client: redis.Redis, make
) -> None:
    root, named, path, holder = make()
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity) as caught:
        reg.put(root)
    message = str(caught.value)
    assert f"{type(named).__name__} {named.ecs_id}" in message
    assert f" {path} " in message
    assert 'ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")' in message
    assert f"on {holder}" in message
    assert snapshot(redis_client) == before


def test_text_json_cannot_carry_is_invalid_naming_class_and_id(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    lone = Student(name="a\ud800b", age=1)  # a lone surrogate: no UTF-8, so no JSON text
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity, match=f"Student {lone.ecs_id}: .* as JSON"):
        reg.put(lone)
    assert snapshot(redis_client) == before


@pytest.mark.parametrize(
    "content, path",
    [(object(), "content"), ({"k": [1, lambda: 1]}, "content.k.1")],
    ids=["object", "function-deep-in-a-dict"],
)
def test_a_value_with_no_json_form_is_invalid_naming_class_id_and_path(
    reg: EntityRegistry, redis_client: redis.Redis, content, path
) -> None:
    """SPEC 8: an `Any` field may hold what its annotation admits but JSON cannot carry.
    `put` raised pydantic's bare PydanticSerializationError ("Unable to serialize unknown
    type: <class 'object'>"), a ValueError naming neither the entity nor the field."""
    box = Box(content="kept")
    box.content = content
    root = Box(content={"kid": box})  # the failing entity is a sub-entity
    before = snapshot(redis_client)

    with pytest.raises(InvalidEntity) as caught:
        reg.put(root)
    message = str(caught.value)
    assert f"Box {box.ecs_id}" in message and f" {path} " in message
    assert "no JSON form" in message
    assert snapshot(redis_client) == before


def test_base64_bytes_round_trip_at_any_depth(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    """The configuration the InvalidEntity message recommends does store any bytes."""
    mail = Mail(subject="s", binary=Binary(data=NOT_UTF8), binaries=[Binary(data=b"\xff")])
    stored = reg.put(Binary(data=NOT_UTF8))
    tree = reg.put(mail)
    assert tree.binary is not None

    assert reg.get(stored.ecs_id).data == NOT_UTF8
    back = reg.get(tree.ecs_id)
    assert isinstance(back, Mail) and back.binary is not None
    assert back.binary.data == NOT_UTF8 and back.binaries[0].data == b"\xff"
    assert reg.get(tree.binary.ecs_id).data == NOT_UTF8
    before = snapshot(redis_client)
    assert reg.put(back) == tree  # read back unchanged: nothing written
    assert snapshot(redis_client) == before


def test_utf8_bytes_are_stored_as_their_text(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    """The stored form of bytes stays pydantic's default, so existing data reads the same."""
    stored = reg.put(Blob(data="café".encode()))

    assert json.loads(redis_client.get(f"graftq:v:{stored.ecs_id}"))["data"] == {"data": "café"}
    assert reg.get(stored.ecs_id).data == "café".encode()


@pytest.mark.parametrize("call", ["get", "head", "history", "provenance", "lineage_mermaid"])
def test_unknown_uuid_is_entity_not_found_naming_it(reg: EntityRegistry, call) -> None:
    reg.put(Address(city="x"))
    unknown = uuid4()
    for form in (unknown, str(unknown)):
        with pytest.raises(EntityNotFound) as caught:
            getattr(reg, call)(form)
        assert str(unknown) in str(caught.value)


@pytest.mark.parametrize("call", ["get", "head", "history", "provenance", "lineage_mermaid"])
@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234", "graftq:v:abc"])
def test_malformed_id_is_entity_not_found_naming_it(reg: EntityRegistry, call, bad) -> None:
    with pytest.raises(EntityNotFound) as caught:
        getattr(reg, call)(bad)
    assert repr(bad) in str(caught.value) or (bad and bad in str(caught.value))


def test_lineage_and_version_ids_are_not_interchangeable(reg: EntityRegistry) -> None:
    stored = reg.put(Address(city="x"))
    with pytest.raises(EntityNotFound, match=str(stored.lineage_id)):
        reg.get(stored.lineage_id)
    with pytest.raises(EntityNotFound, match=str(stored.ecs_id)):
        reg.head(stored.ecs_id)
    with pytest.raises(EntityNotFound, match=str(stored.ecs_id)):
        reg.history(stored.ecs_id)


def test_corrupt_json_is_corrupt_version_naming_the_id(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Address(city="x"))
    redis_client.set(f"graftq:v:{stored.ecs_id}", '{"type": "oops", "data": {')

    for call, arg in [
        (reg.get, stored.ecs_id),
        (reg.head, stored.lineage_id),
        (reg.history, stored.lineage_id),
        (reg.provenance, stored.ecs_id),
    ]:
        with pytest.raises(CorruptVersion) as caught:
            call(arg)
        assert str(stored.ecs_id) in str(caught.value)


def test_corrupt_sub_entity_is_corrupt_version_naming_the_sub_entity(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Student(name="s", age=1, address=Address(city="x")))
    assert stored.address is not None
    redis_client.set(f"graftq:v:{stored.address.ecs_id}", "garbage")

    with pytest.raises(CorruptVersion, match=str(stored.address.ecs_id)):
        reg.get(stored.ecs_id)


def test_put_over_a_corrupt_version_is_corrupt_version_and_writes_nothing(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Address(city="x"))
    redis_client.set(f"graftq:v:{stored.ecs_id}", "[1, 2")
    before = snapshot(redis_client)
    stored.city = "y"

    with pytest.raises(CorruptVersion, match=str(stored.ecs_id)):
        reg.put(stored)
    assert snapshot(redis_client) == before


def _rewrite(redis_client: redis.Redis, ecs_id, change) -> None:
    key = f"graftq:v:{ecs_id}"
    doc = json.loads(redis_client.get(key))
    change(doc)
    redis_client.set(key, json.dumps(doc))


def test_invalid_stored_values_are_corrupt_version(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Student(name="s", age=1))
    # Valid JSON that does not validate as a Student: the wrong type for `age`.
    blob = redis_client.get(f"graftq:v:{stored.ecs_id}")
    assert blob is not None and '"age":1' in blob.replace(" ", "")
    redis_client.set(f"graftq:v:{stored.ecs_id}", blob.replace('"age":1', '"age":"old"'))

    with pytest.raises(CorruptVersion, match=str(stored.ecs_id)):
        reg.get(stored.ecs_id)


@pytest.mark.parametrize("payload", ["null", "[]", '"text"', "42", '{"data": []}'], ids=lambda p: p)
def test_documents_of_the_wrong_shape_are_corrupt_version(
    reg: EntityRegistry, redis_client: redis.Redis, payload
) -> None:
    stored = reg.put(Address(city="x"))
    redis_client.set(f"graftq:v:{stored.ecs_id}", payload)

    with pytest.raises(CorruptVersion, match=str(stored.ecs_id)):
        reg.get(stored.ecs_id)


@pytest.mark.parametrize("member", ["type", "lineage_id", "created_at"])
def test_documents_missing_a_member_are_corrupt_version(
    reg: EntityRegistry, redis_client: redis.Redis, member
) -> None:
    stored = reg.put(Address(city="x"))
    _rewrite(redis_client, stored.ecs_id, lambda doc: doc.pop(member))

    with pytest.raises(CorruptVersion, match=str(stored.ecs_id)):
        reg.get(stored.ecs_id)


def test_unknown_stored_type_is_unknown_entity_type(
    reg: EntityRegistry, redis_client: redis.Redis
) -> None:
    stored = reg.put(Address(city="x"))
    _rewrite(redis_client, stored.ecs_id, lambda doc: doc.update(type="nowhere.Missing"))

    with pytest.raises(UnknownEntityType, match=r"nowhere\.Missing"):
        reg.get(stored.ecs_id)
    with pytest.raises(UnknownEntityType):
        reg.head(stored.lineage_id)
