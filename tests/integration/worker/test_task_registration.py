"""Each App's Celery tasks run that App's own callables (SPEC 7: `app.celery`).

In-process (eager `Task.apply`): what is checked is which function a task name is
bound to on a Celery app, which is the same in a worker process.
"""

from __future__ import annotations

import warnings

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
        task = second.celery.tasks["graftq.which"]
        ran = task.apply(args=[{"x": 1}])
        payload = ran.get(timeout=30)

    recorded = second.entities.execution(payload["execution_id"])
    assert recorded is not None and recorded.result == "second"
    assert first.entities.execution(ran.id) is None
    duplicates = [w for w in caught if issubclass(w.category, DuplicateTaskNameWarning)]
    assert not [w for w in duplicates if "graftq.which" in str(w.message)]
