"""Each App's Celery tasks run that App's own callables (SPEC 7: `app.celery`).

In-process (eager `Task.apply`): what is checked is which function a task name is
bound to on a Celery app, which is the same in a worker process. What a run returned
is read where SPEC section 5 promises it, the Execution record, not from Celery's
result (which is to hold only what is needed to find that record).
"""

from __future__ import annotations

import warnings

import pytest
from celery.exceptions import DuplicateTaskNameWarning

from graftq import App


def test_two_apps_in_one_process_each_run_their_own_callable(redis_url: str) -> None:
    first = App("first", redis_url, key_prefix="first")
    second = App("second", redis_url, key_prefix="second")

    @first.register(name="which", isolation="none")
    def which_first(x: int) -> str:
        return "first"

    @second.register(name="which", isolation="none")
    def which_second(x: int) -> str:
        return "second"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ran = second.celery.tasks["graftq.which"].apply(args=[{"x": 1}])
        ran.get(timeout=30)  # re-raises whatever the task raised
        ran_first = first.celery.tasks["graftq.which"].apply(args=[{"x": 1}])
        ran_first.get(timeout=30)

    for app, job_id, other, expected in [
        (second, ran.id, first, "second"),
        (first, ran_first.id, second, "first"),
    ]:
        record = app.entities.execution(job_id)
        assert record is not None and record.status == "SUCCESS"
        assert record.result == expected
        assert record.callable_version == app.callables["which"].version
        assert other.entities.execution(job_id) is None
    duplicates = [w for w in caught if issubclass(w.category, DuplicateTaskNameWarning)]
    assert not [w for w in duplicates if "graftq.which" in str(w.message)]


@pytest.mark.parametrize("name", ["math.add-2", "naïve✓", "2fast", "class"])
def test_a_name_that_is_no_python_identifier_is_a_task_all_the_same(
    redis_url: str, name: str
) -> None:
    # Celery writes a task's signature as Python source named after its function: the
    # function must not be named after the callable, or the worker could not start.
    app = App("names", redis_url)

    @app.register(name=name, isolation="none")
    def add_one(x: int) -> int:
        return x + 1

    ran = app.celery.tasks[f"graftq.{name}"].apply(args=[{"x": 1}])
    ran.get(timeout=30)

    record = app.entities.execution(ran.id)
    assert record is not None and record.status == "SUCCESS" and record.result == 2
    assert record.callable == name
