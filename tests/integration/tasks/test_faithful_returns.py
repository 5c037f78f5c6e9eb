"""Return values cross the fork with their concrete classes (SPEC section 5, issue 7 item 1).

Each callable of `tests.apps.faithful` returns values its annotation only admits
through a base class, `Any`, `dict` or a plain model; isolated (fork) and inline
runs must return the same classes and commit the same versions.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from graftq import App, EntityRegistry
from graftq.tasks.runner import Call, run_call
from tests.apps.faithful import Counter, Pupil, Report
from tests.apps.school import Address, GraduateStudent, Student


@pytest.fixture
def app(faithful: App) -> App:
    return faithful


@pytest.fixture
def store(faithful: App) -> EntityRegistry:
    return faithful.entities


def stored_student(store: EntityRegistry) -> Student:
    student = store.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    assert isinstance(student, Student)
    return student


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_entity_annotation_keeps_the_concrete_class(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    student = stored_student(store)

    result = app.execute("older" + suffix, {"student": f"@{student.lineage_id}"})

    assert type(result) is Student
    assert result.age == 21 and result.name == "Ada" and result.address.city == "Paris"
    head = store.head(student.lineage_id)
    assert type(head) is Student
    assert head.model_dump() == result.model_dump()
    assert head.parent_id == student.ecs_id


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_base_class_annotation_keeps_the_subclass(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    pupil = store.put(Pupil(name="Bo", grade=3, address=Address(city="Oslo")))

    result = app.execute("promote" + suffix, {"pupil": f"@{pupil.lineage_id}"})

    assert type(result) is Pupil and result.grade == 4
    assert type(result.address) is Address and result.address.city == "Oslo"
    assert type(store.head(pupil.lineage_id)) is Pupil
    assert store.head(pupil.lineage_id).grade == 4


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_any_annotation_commits_the_entities_inside(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    student = stored_student(store)

    result = app.execute("wrapped_any" + suffix, {"student": f"@{student.lineage_id}"})

    assert type(result) is dict
    assert type(result["student"]) is Student and result["student"].age == 21
    assert result["tags"] == ("a", 1) and type(result["tags"]) is tuple
    assert result["n"] == 2.5
    assert store.head_id(student.lineage_id) == str(result["student"].ecs_id)
    assert store.provenance(result["student"].ecs_id) is not None


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_dict_annotation_commits_new_and_changed_entities(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    student = stored_student(store)

    result = app.execute("wrapped_dict" + suffix, {"student": f"@{student.lineage_id}"})

    assert type(result["student"]) is Student and type(result["new"]) is Counter
    assert store.get(result["new"].ecs_id) == result["new"]
    assert store.head(student.lineage_id).age == 21


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_list_of_base_class_keeps_each_class(app: App, store: EntityRegistry, suffix: str) -> None:
    student = stored_student(store)

    result = app.execute("wrapped_list" + suffix, {"student": f"@{student.lineage_id}"})

    assert [type(item) for item in result] == [Student, GraduateStudent]
    assert type(store.get(result[1].ecs_id)) is GraduateStudent


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_entities_inside_a_plain_model_are_committed(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    student = stored_student(store)

    result = app.execute("reported" + suffix, {"student": f"@{student.lineage_id}"})

    assert type(result) is Report
    assert type(result.subject) is Student and result.subject.age == 21
    assert result.extras == {"when": (1, 2)}
    assert store.head_id(student.lineage_id) == str(result.subject.ecs_id)
    run = store.provenance(result.subject.ecs_id)
    assert run is not None and run.outputs == [str(result.subject.ecs_id)]


@pytest.mark.parametrize("suffix", ["", "_inline"])
def test_union_annotation_keeps_the_member_returned(
    app: App, store: EntityRegistry, suffix: str
) -> None:
    student = stored_student(store)

    result = app.execute("either" + suffix, {"student": f"@{student.ecs_id}"})

    assert type(result) is Counter and result.value == 20


def test_replayed_result_has_the_same_classes(app: App, store: EntityRegistry) -> None:
    """A redelivered job is answered from its record, with the same classes."""
    student = stored_student(store)
    call = Call(execution_id=str(uuid4()), worker="w", check_replay=True)
    info = app.callables["reported"]
    data = {"student": f"@{student.lineage_id}"}
    value = run_call(store, info, data, call).value

    again = run_call(store, info, data, call)

    assert again.value == value and type(again.value.subject) is Student
    assert again.execution.outputs == [str(value.subject.ecs_id)]
    assert len(store.history(student.lineage_id)) == 2  # the replay wrote nothing


def test_person_list_field_keeps_subclasses(app: App, store: EntityRegistry) -> None:
    """A field annotated with a base class holds subclasses; they must survive the fork."""
    from tests.apps.faithful import Teacher

    teacher = Teacher(ecs_id=_uuid(1), lineage_id=_uuid(2), name="T", subject="math", pupils=[])
    pupil = {
        "new": "Pupil",
        "ids": [str(_uuid(3)), str(_uuid(4))],
        "fields": {"name": "P", "grade": 2},
    }
    fields = {"name": "T", "subject": "m", "pupils": {"list": [pupil]}}
    recipe = {
        "value": {
            "new": "Teacher",
            "ids": [str(teacher.ecs_id), str(teacher.lineage_id)],
            "fields": fields,
        }
    }

    for name in ("build_person", "build_person_inline"):
        store.client.flushdb()
        result = app.execute(name, {"recipe": recipe, "inputs": []})
        assert type(result.pupils[0]) is Pupil
        assert type(store.get(result.ecs_id).pupils[0]) is Pupil


def _uuid(n: int) -> Any:
    from uuid import UUID

    return UUID(int=n, version=4)
