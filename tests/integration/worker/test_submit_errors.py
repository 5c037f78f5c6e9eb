"""Submit-time errors are raised by `submit` and enqueue nothing (SPEC 5 "Running").

No worker consumes this module's queue, so its length is what submit enqueued.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pydantic
import pytest
import redis

import graftq
from graftq import App
from tests.apps.school import Counter, Student


@pytest.fixture
def app(client_app: Callable[..., App], queue: str) -> App:
    return client_app(queue)


def bad_inputs(app: App) -> list[tuple[str, dict[str, Any], type[Exception]]]:
    student = app.entities.put(Student(name="Al", age=20))
    counter = app.entities.put(Counter(value=1))
    return [
        ("birthday", {"student": f"@{uuid.uuid4()}"}, graftq.EntityNotFound),
        ("birthday", {"student": f"@{student.lineage_id}.no_such_field"}, graftq.InvalidReference),
        ("birthday", {"student": f"@{counter.lineage_id}"}, pydantic.ValidationError),
        ("bonus", {"student_age": f"@{student.lineage_id}.name", "bonus_amount": 1.0},
         pydantic.ValidationError),
        ("bonus", {"student_age": "x", "bonus_amount": 1.0}, pydantic.ValidationError),
    ]  # fmt: skip


def test_submit_errors_enqueue_nothing(app: App, queue: str, broker: redis.Redis) -> None:
    for name, data, raised in bad_inputs(app):
        with pytest.raises(raised):
            app.submit(name, data)
        assert broker.llen(queue) == 0, f"{name}({data}) enqueued a message"

    # The control: a valid submission does land in the very queue watched above.
    student = app.entities.put(Student(name="Bea", age=20))
    app.submit("birthday", {"student": f"@{student.lineage_id}"})
    assert broker.llen(queue) == 1


def test_unknown_callable_enqueues_nothing(app: App, queue: str, broker: redis.Redis) -> None:
    with pytest.raises(graftq.UnknownCallable):
        app.submit("no_such_callable", {})
    assert broker.llen(queue) == 0


def looked_up(code: str) -> str:
    """A validator whose own lookup times out."""
    raise TimeoutError("the upstream lookup timed out")


def test_a_validators_timeout_error_is_its_own_not_an_unreachable_server(
    app: App, queue: str, broker: redis.Redis
) -> None:
    @app.register
    def lookup(code: Annotated[str, pydantic.AfterValidator(looked_up)]) -> int:
        return len(code)

    for submit in (app.submit, app.submit_many):
        with pytest.raises(TimeoutError, match="upstream lookup") as caught:
            submit("lookup", {"code": "x"} if submit == app.submit else [{"code": "x"}])
        assert not isinstance(caught.value, graftq.Unreachable)
    assert broker.llen(queue) == 0
