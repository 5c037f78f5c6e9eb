"""Property: an isolated call returns and commits exactly what an inline call does.

Random stored inputs and random return values — entities of several classes, new
or edited inputs, nested in lists, tuples, dicts and a plain model — run under the
annotations of `tests.apps.faithful.ANNOTATIONS`, once with isolation="fork" and once
with isolation="none", each on its own copy of the same stored data (two key
prefixes, the same ids). Both must return equal values of the same classes, commit
the same versions (classes, fields, lineages, parents) and fail alike.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from graftq import App, Entity, EntityRegistry
from graftq.registry.entity import IDENTITY_FIELDS
from tests.apps.faithful import ANNOTATIONS, Pupil, Teacher, make_app
from tests.apps.school import Address, Counter, Student

EXAMPLES = int(os.environ.get("GRAFTQ_PROPERTY_EXAMPLES", "40"))
TEXT = st.text(alphabet="abcxyz", max_size=4)
SMALL = st.integers(min_value=-3, max_value=99)

STORED = st.one_of(
    st.builds(Counter, value=SMALL),
    st.builds(Student, name=TEXT, age=SMALL, address=st.none() | st.builds(Address, city=TEXT)),
    st.builds(Pupil, name=TEXT, grade=SMALL),
    st.builds(
        Teacher,
        name=TEXT,
        subject=TEXT,
        pupils=st.lists(st.builds(Pupil, name=TEXT, grade=SMALL), max_size=2),
    ),
)
EDITS: dict[type, dict[str, Any]] = {
    Counter: {"value": SMALL},
    Student: {"age": SMALL, "name": TEXT},
    Pupil: {"grade": SMALL},
    Teacher: {"subject": TEXT},
}
NEW_FIELDS: dict[str, dict[str, Any]] = {
    "Counter": {"value": SMALL},
    "Student": {"name": TEXT, "age": SMALL},
    "Pupil": {"name": TEXT, "grade": SMALL},
    "GraduateStudent": {"name": TEXT, "age": SMALL, "undergraduate_degree": TEXT},
}


@st.composite
def entity_recipe(draw: st.DrawFn, inputs: list[Entity], classes: tuple[str, ...]) -> Any:
    usable = [i for i, entity in enumerate(inputs) if type(entity).__name__ in classes]
    if usable and draw(st.booleans()):
        index = draw(st.sampled_from(usable))
        edits = EDITS[type(inputs[index])]
        changed = draw(st.dictionaries(st.sampled_from(sorted(edits)), st.just(None), max_size=1))
        return {"input": index, "set": {name: draw(edits[name]) for name in changed}}
    name = draw(st.sampled_from([c for c in classes if c in NEW_FIELDS]))
    ids = [str(draw(st.uuids(version=4))) for _ in range(2)]
    fields = {field: draw(strategy) for field, strategy in NEW_FIELDS[name].items()}
    return {"new": name, "ids": ids, "fields": fields}


ALL = ("Counter", "Student", "Pupil", "Teacher", "GraduateStudent")


def value_recipe(label: str, inputs: list[Entity]) -> st.SearchStrategy[Any]:
    entity = entity_recipe(inputs, ALL)
    scalar = st.one_of(SMALL, TEXT, st.none(), st.floats(allow_nan=False, width=32))
    tree = st.recursive(
        st.one_of(entity, scalar),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda items: {"list": items}),
            st.lists(inner, max_size=3).map(lambda items: {"tuple": items}),
            st.dictionaries(TEXT, inner, max_size=3).map(lambda items: {"dict": items}),
        ),
        max_leaves=5,
    )
    by_label: dict[str, st.SearchStrategy[Any]] = {
        "entity": entity,
        "person": entity_recipe(inputs, ("Pupil", "Teacher")),
        "any": tree,
        "dict": st.dictionaries(TEXT, tree, max_size=3).map(lambda items: {"dict": items}),
        "list": st.lists(tree, max_size=3).map(lambda items: {"list": items}),
        "union": tree,
        "report": entity.map(lambda inner: {"report": inner}),
    }
    return by_label[label]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Entity], list[bool], str, Any]:
    inputs = draw(st.lists(STORED, min_size=1, max_size=3))
    pinned = draw(st.lists(st.booleans(), min_size=len(inputs), max_size=len(inputs)))
    label = draw(st.sampled_from(sorted(ANNOTATIONS)))
    return inputs, pinned, label, draw(value_recipe(label, inputs))


def normalized(value: Any) -> Any:
    """What must agree between the two runs: classes, fields, lineages and parents."""
    if isinstance(value, Entity):
        fields = {
            name: normalized(item)
            for name, item in value.__dict__.items()
            if name not in IDENTITY_FIELDS
        }
        first = value.parent_id is None  # a first version keeps the id it was built with
        return (type(value), value.lineage_id, value.parent_id, first and value.ecs_id, fields)
    if isinstance(value, BaseModel):
        return (type(value), {name: normalized(item) for name, item in value.__dict__.items()})
    if isinstance(value, dict):
        return (dict, {key: normalized(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return (type(value), [normalized(item) for item in value])
    return (type(value), value)


def run(app: App, name: str, inputs: list[Entity], pinned: list[bool], value: Any) -> Any:
    store = app.entities
    stored = [store.put(entity) for entity in inputs]
    refs = [
        f"@{s.ecs_id}" if pin else f"@{s.lineage_id}" for s, pin in zip(stored, pinned, strict=True)
    ]
    try:
        result = app.execute(name, {"recipe": {"value": value}, "inputs": refs})
    except Exception as exc:
        return ("raised", type(exc))
    return ("returned", normalized(result), committed(store, result))


def committed(store: EntityRegistry, result: Any) -> Any:
    """The committed versions, read back from the store, in the execution's output order."""
    outputs = _outputs(store)
    return [normalized(store.get(ecs_id)) for ecs_id in outputs]


def _outputs(store: EntityRegistry) -> list[str]:
    keys = list(store.client.scan_iter(f"{store.keys.prefix}:exec:*"))
    assert len(keys) == 1
    execution = store.execution(keys[0].rsplit(":", 1)[1])
    assert execution is not None
    return execution.outputs


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_fork_and_inline_return_and_commit_the_same(
    redis_url: str, redis_client: redis.Redis, scenario: tuple[list[Entity], list[bool], str, Any]
) -> None:
    inputs, pinned, label, value = scenario
    redis_client.flushdb()
    forked = make_app("forked", redis_url=redis_url, key_prefix="forked")
    inline = make_app("inline", redis_url=redis_url, key_prefix="inline")

    by_fork = run(forked, f"build_{label}", inputs, pinned, value)
    by_inline = run(inline, f"build_{label}_inline", inputs, pinned, value)

    event(f"{label}: {by_fork[0]} {by_fork[1] if by_fork[0] == 'raised' else ''}")
    assert by_fork == by_inline
