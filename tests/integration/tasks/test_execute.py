"""`app.execute` end to end: resolve, validate, run, commit, record (SPEC sections 4-5)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pydantic
import pytest
import redis

from graftq import (
    App,
    EntityRegistry,
    Execution,
    ExecutionStatus,
    InvalidEntity,
    InvalidInput,
    UnknownCallable,
)
from tests.apps.school import Counter, GraduateStudent, Student
from tests.entities import put_student
from tests.redis_state import changed_keys, exec_keys, snapshot, version_keys

# -- the seed's example ------------------------------------------------------------------


def test_bonus_resolves_a_field_reference_and_validates(app: App, store: EntityRegistry) -> None:
    student = put_student(store)

    result = app.execute("bonus", {"student_age": f"@{student.ecs_id}.age", "bonus_amount": 100.5})

    assert result == 20 * 100.5
    assert isinstance(result, float)


def test_str_field_for_an_int_parameter_is_a_validation_error(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    student = put_student(store)
    before = snapshot(redis_client)

    with pytest.raises(pydantic.ValidationError) as caught:
        app.execute("bonus", {"student_age": f"@{student.ecs_id}.name", "bonus_amount": 1.0})

    assert "student_age" in str(caught.value)
    assert snapshot(redis_client) == before


# -- lineage preserved, provenance -------------------------------------------------------


def test_birthday_by_lineage_makes_a_new_version_and_moves_the_head(
    app: App, store: EntityRegistry
) -> None:
    student = put_student(store)

    new = app.execute("birthday", {"student": f"@{student.lineage_id}"})

    assert isinstance(new, Student)
    assert new.age == 21
    assert new.ecs_id != student.ecs_id
    assert new.lineage_id == student.lineage_id
    assert new.parent_id == student.ecs_id
    assert new.derived_from is not None
    assert store.head_id(student.lineage_id) == str(new.ecs_id)
    assert store.get(new.ecs_id).model_dump() == new.model_dump()
    assert store.get(student.ecs_id).age == 20  # the old version is immutable


def test_provenance_of_an_executed_version(app: App, store: EntityRegistry) -> None:
    student = put_student(store)

    new = app.execute("birthday", {"student": f"@{student.lineage_id}"})
    run = store.provenance(new.ecs_id)

    assert run is not None
    assert run.id == new.derived_from
    assert run.callable == "birthday"
    assert run.callable_version == app.callables["birthday"].version
    assert run.inputs == {"student": str(student.ecs_id)}
    assert run.outputs == [str(new.ecs_id)]
    assert run.status is ExecutionStatus.SUCCESS
    assert run.started_at <= run.finished_at
    assert run.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert run.branched is False


@pytest.mark.parametrize("name", ["grade|v2", 'say"hi"', "f[1]", "x-->y", "a#quot;b", "<b>x</b>"])
def test_lineage_mermaid_quotes_a_callable_name_mermaid_would_read_as_syntax(
    app: App, store: EntityRegistry, name: str
) -> None:
    @app.register(name)
    def bump(counter: Counter) -> Counter:
        counter.value += 1
        return counter

    first = store.put(Counter())
    app.execute(name, {"counter": f"@{first.lineage_id}"})

    graph = store.lineage_mermaid(first.lineage_id)
    [edge] = [line for line in graph.splitlines() if "-->|" in line]
    label = edge.split("-->|", 1)[1].rsplit("| ", 1)[0]
    assert label.startswith('"') and label.endswith('"'), edge
    assert not set(label[1:-1]) & set('"|[]<>-'), edge  # a Mermaid entity code (#nn;) each
    decoded = re.sub(r"#(\d+);", lambda m: chr(int(m[1])), label[1:-1])
    assert decoded == name


def test_transform_makes_a_new_lineage(app: App, store: EntityRegistry) -> None:
    student = put_student(store)

    grad = app.execute("transform_student", {"student": f"@{student.ecs_id}"})

    assert isinstance(grad, GraduateStudent)
    assert (grad.name, grad.age, grad.undergraduate_degree) == ("Ada", 20, "math")
    assert grad.lineage_id != student.lineage_id
    assert grad.parent_id is None
    assert grad.derived_from is not None
    assert store.head_id(grad.lineage_id) == str(grad.ecs_id)
    assert store.head_id(student.lineage_id) == str(student.ecs_id)
    run = store.provenance(grad.ecs_id)
    assert run is not None and run.callable == "transform_student"
    assert run.inputs == {"student": str(student.ecs_id)}


# -- Entity objects as input -------------------------------------------------------------


def test_unstored_entity_input_is_stored_first(app: App, store: EntityRegistry) -> None:
    fresh = Student(name="Bo", age=7)

    new = app.execute("birthday", {"student": fresh})

    assert fresh.age == 7  # the caller's object is untouched
    run = store.provenance(new.ecs_id)
    assert run is not None
    stored_input = store.get(run.inputs["student"])
    assert isinstance(stored_input, Student)
    assert stored_input.age == 7
    assert stored_input.lineage_id == fresh.lineage_id
    assert store.version_ids(fresh.lineage_id) == [run.inputs["student"], str(new.ecs_id)]
    assert new.parent_id == UUID(run.inputs["student"])
    assert store.head_id(fresh.lineage_id) == str(new.ecs_id)


def test_modified_stored_entity_input_is_forked_first(app: App, store: EntityRegistry) -> None:
    original = put_student(store)
    original.age = 50

    new = app.execute("birthday", {"student": original})

    run = store.provenance(new.ecs_id)
    assert run is not None
    forked_id = run.inputs["student"]
    assert forked_id != str(original.ecs_id)
    forked = store.get(forked_id)
    assert isinstance(forked, Student)
    assert forked.parent_id == original.ecs_id
    assert forked.age == 50
    assert new.age == 51
    assert new.parent_id == forked.ecs_id
    assert store.get(original.ecs_id).age == 20


def test_unchanged_stored_entity_input_is_used_as_is(app: App, store: EntityRegistry) -> None:
    original = put_student(store)

    new = app.execute("birthday", {"student": original})

    run = store.provenance(new.ecs_id)
    assert run is not None and run.inputs == {"student": str(original.ecs_id)}
    assert store.version_ids(original.lineage_id) == [str(original.ecs_id), str(new.ecs_id)]


# -- several entities returned -------------------------------------------------------------


def test_tuple_return_commits_both_entities_in_one_execution(
    app: App, store: EntityRegistry
) -> None:
    student = put_student(store)

    older, grad = app.execute("pair", {"student": f"@{student.lineage_id}"})

    assert isinstance(older, Student) and isinstance(grad, GraduateStudent)
    assert older.age == grad.age == 21
    assert older.parent_id == student.ecs_id
    assert grad.parent_id is None and grad.lineage_id != student.lineage_id
    assert older.derived_from == grad.derived_from is not None
    run = store.provenance(grad.ecs_id)
    assert run is not None
    assert run.outputs == [str(older.ecs_id), str(grad.ecs_id)]
    assert store.provenance(older.ecs_id) == run
    assert store.head_id(student.lineage_id) == str(older.ecs_id)
    assert store.head_id(grad.lineage_id) == str(grad.ecs_id)


# -- async callables -----------------------------------------------------------------------


def test_async_callable_via_execute(app: App, store: EntityRegistry) -> None:
    student = put_student(store)

    new = app.execute("async_birthday", {"student": f"@{student.lineage_id}"})

    assert isinstance(new, Student) and new.age == 21
    assert store.head_id(student.lineage_id) == str(new.ecs_id)


def test_async_callable_via_aexecute(app: App, store: EntityRegistry) -> None:
    student = put_student(store)

    new = asyncio.run(app.aexecute("async_birthday", {"student": f"@{student.lineage_id}"}))

    assert isinstance(new, Student) and new.age == 21
    assert new.parent_id == student.ecs_id
    assert store.head_id(student.lineage_id) == str(new.ecs_id)


def test_concurrent_aexecute_calls(app: App, store: EntityRegistry) -> None:
    students = [put_student(store, age=n) for n in range(3)]

    async def main() -> list[Student]:
        calls = [app.aexecute("async_birthday", {"student": f"@{s.lineage_id}"}) for s in students]
        return list(await asyncio.gather(*calls))

    older = asyncio.run(main())

    assert [s.age for s in older] == [1, 2, 3]
    for before, after in zip(students, older, strict=True):
        assert after.parent_id == before.ecs_id
        assert store.head_id(before.lineage_id) == str(after.ecs_id)


@pytest.mark.parametrize("name", ["async_birthday", "birthday", "inline_birthday"])
def test_execute_inside_a_running_event_loop(app: App, store: EntityRegistry, name: str) -> None:
    student = put_student(store)

    async def main() -> Student:
        asyncio.get_running_loop()  # really inside a loop
        result: Student = app.execute(name, {"student": f"@{student.lineage_id}"})
        return result

    new = asyncio.run(main())

    assert isinstance(new, Student) and new.age == 21
    assert store.head_id(student.lineage_id) == str(new.ecs_id)


def test_async_inline_callable_inside_a_running_event_loop(app: App, store: EntityRegistry) -> None:
    @app.register(isolation="none")
    async def async_inline_bump(counter: Counter) -> Counter:
        await asyncio.sleep(0)
        counter.value += 1
        return counter

    counter = store.put(Counter(value=4))

    async def main() -> Counter:
        result: Counter = app.execute("async_inline_bump", {"counter": f"@{counter.ecs_id}"})
        return result

    assert app.execute("async_inline_bump", {"counter": f"@{counter.ecs_id}"}).value == 5
    assert asyncio.run(main()).value == 5


# -- isolation="none" ----------------------------------------------------------------------


def test_inline_callable_commits_and_leaves_the_callers_object_alone(
    app: App, store: EntityRegistry
) -> None:
    student = put_student(store)
    expected = student.model_dump()

    new = app.execute("inline_birthday", {"student": student})

    assert student.model_dump() == expected
    assert isinstance(new, Student) and new.age == 21
    assert new.parent_id == student.ecs_id
    assert store.head_id(student.lineage_id) == str(new.ecs_id)
    run = store.provenance(new.ecs_id)
    assert run is not None and run.callable == "inline_birthday"


def test_inline_callable_gets_private_copies_of_nested_input(
    app: App, store: EntityRegistry
) -> None:
    @app.register(isolation="none")
    def inline_scribble(students: list[Student], data: dict[str, list[int]]) -> int:
        students[0].age = 99
        students[1].tags.append("scribbled")
        data["x"].append(5)
        return len(students)

    fresh = Student(name="Bo", age=7)
    stored = put_student(store)
    data = {"x": [1]}

    assert app.execute("inline_scribble", {"students": [fresh, stored], "data": data}) == 2

    assert fresh.age == 7 and stored.tags == []
    assert data == {"x": [1]}
    assert store.head(fresh.lineage_id).age == 7
    assert store.head(stored.lineage_id).model_dump() == stored.model_dump()


def test_inline_callable_mutating_an_input_it_does_not_return_commits_nothing(
    app: App, store: EntityRegistry, redis_client: redis.Redis
) -> None:
    @app.register(isolation="none")
    def inline_meddle(student: Student) -> int:
        student.age = 999
        return 1

    student = put_student(store)
    before = snapshot(redis_client)

    assert app.execute("inline_meddle", {"student": f"@{student.lineage_id}"}) == 1

    changed = changed_keys(before, snapshot(redis_client))
    assert len(changed) == 1 and exec_keys(changed) == changed
    assert store.head(student.lineage_id).model_dump() == student.model_dump()


# -- errors --------------------------------------------------------------------------------


def test_unknown_callable_lists_the_registered_names(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(UnknownCallable) as caught:
        app.execute("no_such_function", {})

    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "no_such_function" in message
    for name in ("birthday", "bonus", "transform_student", "slow_square"):
        assert name in message
    assert snapshot(redis_client) == {}


@pytest.mark.parametrize("bad", [[1, 2], "student", None, 42])
def test_input_that_is_not_a_dict_is_refused(
    app: App, redis_client: redis.Redis, bad: object
) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        app.execute("bonus", bad)  # type: ignore[arg-type]

    assert "dict" in str(caught.value)
    assert snapshot(redis_client) == {}


def test_missing_parameter_is_a_validation_error(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        app.execute("bonus", {"student_age": 3})

    assert "bonus_amount" in str(caught.value)
    assert snapshot(redis_client) == {}


def test_unknown_parameter_is_a_validation_error(app: App, redis_client: redis.Redis) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        app.execute("bonus", {"student_age": 3, "bonus_amount": 1.0, "extra": 1})

    assert "extra" in str(caught.value)
    assert snapshot(redis_client) == {}


def test_literal_only_execution_records_its_inputs(app: App, redis_client: redis.Redis) -> None:
    assert app.execute("bonus", {"student_age": 3, "bonus_amount": 0.5}) == 1.5

    keys = snapshot(redis_client)
    assert not version_keys(keys)
    (record,) = exec_keys(keys)
    run = Execution.model_validate_json(keys[record])
    assert run.callable == "bonus"
    assert run.inputs == {"student_age": 3, "bonus_amount": 0.5}
    assert run.outputs == []
    assert run.result == 1.5


@pytest.mark.parametrize("isolation", ["fork", "none"])
def test_a_result_holding_an_input_and_its_changed_copy_commits_both(
    app: App, store: EntityRegistry, isolation: str
) -> None:
    # SPEC 5, per entity: the unchanged one is the stored version, the changed copy of the
    # same version a new version of its lineage (it was refused: "given twice")
    @app.register(name=f"before_after_{isolation}", isolation=isolation)  # type: ignore[arg-type]
    def before_after(student: Student) -> tuple[Student, Student]:
        after = student.model_copy(deep=True)
        after.age += 1
        return student, after

    ada = store.put(Student(name="Ada", age=20))
    before, after = app.execute(f"before_after_{isolation}", {"student": f"@{ada.ecs_id}"})

    assert before.ecs_id == ada.ecs_id and before.age == 20
    assert after.parent_id == ada.ecs_id and after.age == 21
    assert store.head(ada.lineage_id).ecs_id == after.ecs_id
    assert [v.age for v in store.history(ada.lineage_id)] == [20, 21]


def test_two_changed_copies_of_one_version_are_refused_naming_it(
    app: App, store: EntityRegistry
) -> None:
    @app.register
    def both_ways(student: Student) -> tuple[Student, Student]:
        older, younger = student.model_copy(deep=True), student.model_copy(deep=True)
        older.age += 1
        younger.age -= 1
        return older, younger

    ada = store.put(Student(name="Ada", age=20))
    with pytest.raises(InvalidEntity, match=f"{ada.ecs_id} .*changed in two different ways"):
        app.execute("both_ways", {"student": f"@{ada.ecs_id}"})
    assert [v.age for v in store.history(ada.lineage_id)] == [20]


# -- literal entity data ----------------------------------------------------------------


def test_literal_entity_data_claiming_a_stored_identity_is_refused(
    app: App, store: EntityRegistry
) -> None:
    """A dict is a literal: it cannot name itself a stored version it differs from, so a
    raw client cannot make a history whose step was never stored (SPEC 5: every execution
    names exact stored input versions)."""
    stored = put_student(store)
    forged = stored.model_dump(mode="json") | {"name": "Evil", "age": 99}
    before = snapshot(store.client)

    with pytest.raises(InvalidEntity) as caught:
        app.execute("birthday", {"student": forged})

    assert "ecs_id" in str(caught.value) and f"@{stored.ecs_id}" in str(caught.value)
    assert snapshot(store.client) == before
    assert store.version_ids(stored.lineage_id) == [str(stored.ecs_id)]


class Enrolment(pydantic.BaseModel):
    """A plain model holding an entity, as a job's input."""

    student: Student
    course: str


def enrolment_app() -> App:
    app = App("enrolments")

    @app.register
    def enrol(enrolment: Enrolment) -> Student:
        enrolment.student.major = enrolment.course
        return enrolment.student

    @app.register
    def memo_texts(memo: Memo) -> list[str]:
        return [memo.text, *memo.tags, *memo.meta.values(), *(memo.model_extra or {}).values()]

    return app


class Memo(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    text: str
    tags: list[str] = []
    meta: dict[str, str] = {}


@pytest.mark.parametrize("changed", [False, True])
def test_entity_inside_a_model_input_is_stored_and_passed_by_version(
    make_school: Callable[..., App], store: EntityRegistry, changed: bool
) -> None:
    """SPEC 5: an Entity object in the input — here inside a plain model — names an exact
    stored version: a modified one is forked first, an unchanged one used as is."""
    app = make_school(make=enrolment_app)
    stored = put_student(store)
    given = stored.model_copy(update={"age": 50} if changed else {})

    new = app.execute("enrol", {"enrolment": Enrolment(student=given, course="physics")})

    run = store.provenance(new.ecs_id)
    assert run is not None
    read = run.inputs["enrolment"]["student"]
    assert new.parent_id == UUID(read) and new.major == "physics"
    assert (read != str(stored.ecs_id)) is changed
    assert store.get(read).age == (50 if changed else 20)
    assert store.get(read).parent_id == (stored.ecs_id if changed else None)
    assert given.age == (50 if changed else 20) and given.major == "math"


TEXTS = ["@physics", "@@physics", "@" + "0" * 32, "@"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_str_starting_with_at_inside_a_model_input_is_that_str(
    make_school: Callable[..., App], store: EntityRegistry, text: str
) -> None:
    """References are strings in the input's dicts and lists (SPEC 4), never a plain
    model's field values: those were read as references — "@physics" an InvalidReference,
    "@@physics" silently "@physics", "@<uuid>" whatever that uuid named."""
    app = make_school(make=enrolment_app)
    given = Memo(text=text, tags=[text], meta={"k": text}, more=text)

    assert app.execute("memo_texts", {"memo": given}) == [text] * 4
    student = put_student(store)
    new = app.execute("enrol", {"enrolment": Enrolment(student=student, course=text)})
    assert new.major == text


def test_a_lone_surrogate_inside_a_model_input_is_invalid_input(
    make_school: Callable[..., App], store: EntityRegistry
) -> None:
    """A model's fields are dumped by pydantic, not walked by the input bounds: a lone
    surrogate there ran the body and then failed writing the Execution record."""
    app = make_school(make=enrolment_app)
    before = snapshot(store.client)

    with pytest.raises(InvalidInput, match="surrogate"):
        app.execute("memo_texts", {"memo": Memo(text="caf\ud800")})
    assert snapshot(store.client) == before


class ByValidationAlias(pydantic.BaseModel):
    """Pydantic validates a field by its validation alias, never by its name here."""

    student: Student = pydantic.Field(validation_alias="pupil")
    course: str = pydantic.Field(validation_alias=pydantic.AliasChoices("courseName", "c"))


class BySerializationAlias(pydantic.BaseModel):
    """Dumped as "pupil", validated only as "student"."""

    student: Student = pydantic.Field(serialization_alias="pupil")
    course: str = pydantic.Field(serialization_alias="courseName")


class ByNameOnly(pydantic.BaseModel):
    """An alias for the outside, but validated by field name only."""

    model_config = pydantic.ConfigDict(validate_by_name=True, validate_by_alias=False)

    student: Student = pydantic.Field(alias="pupil")
    course: str = pydantic.Field(alias="courseName")


class Grade(pydantic.BaseModel):
    score: int = pydantic.Field(validation_alias="Score")


class Transcript(pydantic.BaseModel):
    """No entity in it: aliases count all the same, at every depth."""

    grades: list[Grade] = pydantic.Field(serialization_alias="Grades")


ALIASED_INPUTS = [ByValidationAlias, BySerializationAlias, ByNameOnly]


def aliased_app() -> App:
    app = App("aliased")

    @app.register
    def total(transcript: Transcript) -> int:
        return sum(grade.score for grade in transcript.grades)

    for model in ALIASED_INPUTS:

        def enrol(enrolment: Any) -> Student:
            enrolment.student.major = enrolment.course
            return enrolment.student

        enrol.__annotations__ = {"enrolment": model, "return": Student}
        app.register(enrol, model.__name__)
    return app


@pytest.mark.parametrize("model", ALIASED_INPUTS, ids=lambda model: model.__name__)
def test_a_model_input_with_aliases_arrives_as_given(
    make_school: Callable[..., App], store: EntityRegistry, model: type[pydantic.BaseModel]
) -> None:
    """A plain model given as input travels in a form its class validates, whatever its
    aliases say: it was dumped by field name or by serialization alias, and refused with
    InvalidInput ("does not survive the broker's JSON") as a model it could never be."""
    app = make_school(make=aliased_app)
    stored = put_student(store)
    given = model.model_construct(student=stored, course="physics")

    new = app.execute(model.__name__, {"enrolment": given})

    assert new.major == "physics" and new.parent_id == stored.ecs_id


def test_a_model_input_without_entities_arrives_by_its_validation_aliases(
    make_school: Callable[..., App],
) -> None:
    app = make_school(make=aliased_app)
    given = Transcript.model_construct(grades=[Grade.model_construct(score=2)])

    assert app.execute("total", {"transcript": given}) == 2


def test_literal_entity_data_without_identity_is_new_data(app: App, store: EntityRegistry) -> None:
    new = app.execute("birthday", {"student": {"name": "Bo", "age": 7}})

    assert new.age == 8 and new.parent_id is None
    assert store.version_ids(new.lineage_id) == [str(new.ecs_id)]
