"""Entity classes change after versions were stored (issue 10, "Schema evolution").

A field added with a default leaves old versions loadable; a change that makes an old
version unloadable is a GraftError naming the version and the field. A stored type
name resolves only to Entity classes this process defines: nothing is imported.
"""

from __future__ import annotations

import json
import sys

import pytest
import redis

from graftq import CorruptVersion, Entity, GraftError, UnknownEntityType
from graftq.registry.keys import Keys
from graftq.registry.store import EntityRegistry

TYPE = "tests.evolution.Pupil"


def define(**fields: type) -> type[Entity]:
    """(Re)define the Entity class stored under TYPE with these annotations (and defaults)."""
    namespace: dict[str, object] = {"__annotations__": dict(fields), "graftq_type": TYPE}
    namespace["__module__"] = __name__
    if "grade" in fields:
        namespace["grade"] = 1
    return type("Pupil", (Entity,), namespace)


def test_added_field_with_a_default_still_loads_old_versions(reg: EntityRegistry) -> None:
    old = reg.put(define(name=str)(name="Ada"))  # type: ignore[call-arg]
    define(name=str, grade=int)

    loaded = reg.get(old.ecs_id)

    assert loaded.name == "Ada" and loaded.grade == 1  # type: ignore[attr-defined]
    assert reg.put(loaded.model_copy(update={"grade": 2})).parent_id == old.ecs_id


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"name": int}, "name"), ({"name": str, "age": int}, "age")],
    ids=["retyped", "added-without-default"],
)
def test_a_version_the_class_no_longer_admits_names_version_and_field(
    reg: EntityRegistry, fields: dict[str, type], field: str
) -> None:
    old = reg.put(define(name=str)(name="Ada"))  # type: ignore[call-arg]
    define(**fields)

    with pytest.raises(CorruptVersion) as raised:
        reg.get(old.ecs_id)

    assert isinstance(raised.value, GraftError)
    assert str(old.ecs_id) in str(raised.value) and field in str(raised.value)


@pytest.mark.parametrize("type_name", ["antigravity.fly", "subprocess.Popen", "builtins.dict"])
def test_a_stored_type_name_resolves_only_to_known_entity_classes(
    reg: EntityRegistry, redis_client: redis.Redis, type_name: str
) -> None:
    stored = reg.put(define(name=str)(name="Ada"))  # type: ignore[call-arg]
    key = Keys().version(stored.ecs_id)
    doc = json.loads(redis_client.get(key) or "")
    doc["type"] = type_name
    redis_client.set(key, json.dumps(doc))
    already = set(sys.modules)

    with pytest.raises(UnknownEntityType, match=type_name):
        reg.get(stored.ecs_id)

    assert set(sys.modules) == already  # nothing was imported on the data's say-so
