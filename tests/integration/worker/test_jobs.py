"""Jobs through one shared `graftq worker -c 2`: results, conflicts, errors (SPEC 5-7)."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

import graftq
from graftq import App
from tests.apps.school import Boom, Counter, QuotaError, Student
from tests.entities import chain_from_head, put_counter
from tests.integration.worker.conftest import Node
from tests.processes import lives, read_proc, wait_until


@pytest.fixture
def app(client_app: Callable[..., App], shared_worker: Node) -> App:
    return client_app(shared_worker.queue)


def failure_record(app: App, job_id: str, error: str) -> graftq.Execution:
    """The FAILURE Execution SPEC section 5 promises for a failed job, naming `error`."""
    run = app.entities.execution(job_id)
    assert run is not None, f"job {job_id} failed but left no Execution record"
    assert run.status == "FAILURE" and run.outputs == [], run
    assert run.error is not None and error in run.error, run.error
    return run


def test_birthday_by_lineage_reference_returns_the_new_version(
    app: App, shared_worker: Node
) -> None:
    student = app.entities.put(Student(name="Ada", age=20))
    job = app.submit("birthday", {"student": f"@{student.lineage_id}"})

    new = job.get(timeout=30)

    assert isinstance(new, Student) and new.age == 21 and new.name == "Ada"
    assert new.lineage_id == student.lineage_id and new.parent_id == student.ecs_id
    assert new.derived_from == job.id
    assert job.status == "SUCCESS"
    assert app.entities.head_id(student.lineage_id) == str(new.ecs_id)
    run = app.entities.provenance(new.ecs_id)
    assert run is not None and run.id == job.id and run.callable == "birthday"
    assert run.worker == shared_worker.node
    assert run.inputs == {"student": str(student.ecs_id)}
    assert run.outputs == [str(new.ecs_id)] and not run.branched


def test_concurrent_lineage_increments_form_one_chain(app: App) -> None:
    counter = put_counter(app.entities)
    jobs = [app.submit("increment", {"counter": f"@{counter.lineage_id}"}) for _ in range(20)]

    values = sorted(job.get(timeout=60).value for job in jobs)

    assert values == list(range(1, 21))
    store = app.entities
    head = store.head(counter.lineage_id)
    assert isinstance(head, Counter) and head.value == 20
    versions = store.history(counter.lineage_id)
    assert len(versions) == 21
    chain = chain_from_head(versions, head)
    assert len(chain) == 21  # every stored version lies on the one chain
    assert [getattr(version, "value", None) for version in chain] == list(range(21))
    runs = {job.id: store.execution(job.id) for job in jobs}
    assert all(run is not None and run.status == "SUCCESS" for run in runs.values())
    assert not any(run.branched for run in runs.values() if run is not None)
    # Each job committed exactly one version, and each new version is one job's output.
    made_by = sorted(str(version.derived_from) for version in chain[1:])
    assert made_by == sorted(runs)
    outputs = sorted(out for run in runs.values() if run is not None for out in run.outputs)
    assert outputs == sorted(str(version.ecs_id) for version in chain[1:])


def test_pinned_jobs_branch_and_move_the_head_once(app: App) -> None:
    counter = put_counter(app.entities)
    jobs = [app.submit("increment", {"counter": f"@{counter.ecs_id}"}) for _ in range(5)]

    results = [job.get(timeout=60) for job in jobs]

    assert [result.value for result in results] == [1] * 5
    store = app.entities
    versions = store.history(counter.lineage_id)
    children = [version for version in versions if version.ecs_id != counter.ecs_id]
    assert len(children) == 5
    assert all(child.parent_id == counter.ecs_id for child in children)
    runs = [store.execution(job.id) for job in jobs]
    assert all(run is not None and run.inputs == {"counter": str(counter.ecs_id)} for run in runs)
    branched = [run for run in runs if run is not None and run.branched]
    moved = [run for run in runs if run is not None and not run.branched]
    assert len(branched) == 4 and len(moved) == 1
    assert moved[0].outputs == [store.head_id(counter.lineage_id)]


def test_hanging_job_hits_its_time_limit_and_the_worker_keeps_serving(
    app: App, tmp_path: Path
) -> None:
    pid_file = tmp_path / "hang.pid"
    job = app.submit("hang", {"pid_file": str(pid_file)})

    with pytest.raises(graftq.TimeLimitExceeded):
        job.get(timeout=30)

    assert job.status == "FAILURE"
    failure_record(app, job.id, "TimeLimitExceeded")
    child = read_proc(pid_file)
    wait_until(lambda: not lives(child), 30, f"isolated child {child} is gone")
    student = app.entities.put(Student(name="Bo", age=30))
    assert app.submit("birthday", {"student": f"@{student.lineage_id}"}).get(timeout=30).age == 31


@pytest.mark.parametrize(
    ("name", "data", "raised", "message"),
    [
        ("fail", {"message": "no such course"}, ValueError, "no such course"),
        ("fail_custom", {"message": "kaboom"}, Boom, "kaboom"),
        ("crash", {"how": "exit"}, graftq.IsolationError, "exited with status 3"),
        ("over_quota", {"n": 3}, QuotaError, "quota of 3 exceeded"),
        ("over_quota_inline", {"n": 4}, QuotaError, "quota of 4 exceeded"),
        # the body's own TimeoutError, not a server that did not answer (`Unreachable`)
        ("upstream_timeout", {"message": "API was slow"}, TimeoutError, "API was slow"),
        # types that pickle, but that Celery's JSON (their args) does not make again as
        # they were: json's needs more than its message, an OSError's names its file, a
        # tuple in the args would come back a list
        ("parse", {"text": "{bad"}, json.JSONDecodeError, "Expecting property name"),
        ("read", {"path": "/nonexistent/x"}, FileNotFoundError, "directory: '/nonexistent/x'"),
        ("fail_pair", {"message": "off", "pair": [1, 2]}, ValueError, r"^\('off', \(1, 2\)\)$"),
    ],
)
def test_exception_types_round_trip(
    app: App, name: str, data: dict[str, str], raised: type[Exception], message: str
) -> None:
    job = app.submit(name, data)

    with pytest.raises(raised, match=message) as caught:
        job.get(timeout=30)

    assert type(caught.value) is raised
    assert job.status == "FAILURE"
    failure_record(app, job.id, f"{raised.__name__}: ")


def test_a_body_out_of_memory_fails_its_job_and_the_worker_serves_on(app: App) -> None:
    # Celery takes a task's MemoryError for its pool process running out and shuts the
    # whole worker down; the body's ran out in its own child, so only the job fails.
    job = app.submit("out_of_memory", {"megabytes": 10**9})

    with pytest.raises(graftq.IsolationError, match="MemoryError: cannot allocate"):
        job.get(timeout=30)

    assert job.status == "FAILURE"
    failure_record(app, job.id, "MemoryError: cannot allocate")
    assert app.submit("bonus", {"student_age": 2, "bonus_amount": 2.0}).get(timeout=30) == 4.0


def test_a_reused_task_id_is_refused_never_answered_with_another_jobs_result(
    app: App, shared_worker: Node
) -> None:
    task_id = f"reused-{uuid.uuid4().hex[:8]}"
    first = app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}, task_id=task_id)
    assert first.get(timeout=30) == 3.0
    student = app.entities.put(Student(name="Gus", age=80))

    # Celery's result backend keeps the first job's SUCCESS over the refusals that follow,
    # so these can only be told apart by what the execution record says it ran.
    other_inputs = app.submit("bonus", {"student_age": 20, "bonus_amount": 1.5}, task_id=task_id)
    other_callable = app.submit("birthday", {"student": f"@{student.lineage_id}"}, task_id=task_id)

    with pytest.raises(graftq.GraftError, match=f"execution {task_id} of 'bonus' .* other inputs"):
        other_inputs.get(timeout=30)
    refused = f"execution {task_id} is already recorded for callable 'bonus'"
    with pytest.raises(graftq.GraftError, match=refused):
        other_callable.get(timeout=30)
    with pytest.raises(graftq.GraftError, match=refused):
        app.job(task_id, "birthday").get(timeout=30)
    assert app.job(task_id, "bonus").get(timeout=30) == 3.0  # the first job's own result
    again = app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}, task_id=task_id)
    assert again.get(timeout=30) == 3.0  # the same job resent: its recorded result

    def worker_said(what: str) -> int:
        return shared_worker.proc.log().count(what)

    # The worker refuses the other jobs too, replays the resent one, and is done with
    # all of them before the next test's clean store.
    wait_until(
        lambda: (
            worker_said(f'bonus[{task_id}] FAILURE error="GraftError: execution') == 1
            and worker_said(f'birthday[{task_id}] FAILURE error="GraftError: execution') == 1
            and worker_said(f"bonus[{task_id}] SUCCESS") == 2
        ),
        60,
        "the worker refused both reuses and replayed the resent job",
    )


def test_a_task_id_of_a_failed_job_is_refused_to_another_job(app: App, shared_worker: Node) -> None:
    """SPEC 5: an execution id reused for another callable is refused — also when the
    first job failed; its FAILURE record stays (a retry of that job could replace it)."""
    task_id = f"reused-failure-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValueError, match="first"):
        app.submit("fail", {"message": "first"}, task_id=task_id).get(timeout=30)

    other = app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}, task_id=task_id)

    with pytest.raises(graftq.GraftError, match=f"execution {task_id} is already recorded"):
        other.get(timeout=30)
    wait_until(  # Celery answered at once with the first job's state: wait for the worker
        lambda: shared_worker.proc.log().count(f"bonus[{task_id}] FAILURE") == 1,
        60,
        "the worker refused the job that reused the id",
    )
    run = failure_record(app, task_id, "ValueError: first")
    assert run.callable == "fail"


def test_wrong_return_type_arrives_as_return_type_error_and_commits_nothing(app: App) -> None:
    student = app.entities.put(Student(name="Cy", age=40))
    job = app.submit("wrong_type", {"student": f"@{student.lineage_id}"})

    with pytest.raises(graftq.ReturnTypeError):
        job.get(timeout=30)

    assert app.entities.version_ids(student.lineage_id) == [str(student.ecs_id)]
    run = failure_record(app, job.id, "ReturnTypeError: ")
    assert run.inputs == {"student": str(student.ecs_id)}


def test_a_returned_entity_the_store_refuses_is_a_return_type_error_on_the_client(
    app: App,
) -> None:
    """Not the InvalidInput of a job whose input did not validate: its body ran."""
    student = app.entities.put(Student(name="Cy", age=40))
    job = app.submit("spoil", {"student": f"@{student.lineage_id}"})

    with pytest.raises(graftq.ReturnTypeError) as caught:
        job.get(timeout=30)

    assert isinstance(caught.value, pydantic.ValidationError)
    assert [error["loc"] for error in caught.value.errors()] == [("age",)]
    assert "callable 'spoil' returned a Student" in str(caught.value)
    assert app.entities.version_ids(student.lineage_id) == [str(student.ecs_id)]
    failure_record(app, job.id, "InvalidResult: ")


def test_asubmit_and_aget_inside_an_event_loop(app: App, tmp_path: Path) -> None:
    student = app.entities.put(Student(name="Di", age=50))
    gate, pid_file = tmp_path / "gate", tmp_path / "held.pid"

    async def main() -> tuple[Student, int]:
        held = await app.asubmit("held", {"gate": str(gate), "pid_file": str(pid_file)})
        waiting = asyncio.create_task(held.aget(timeout=60))
        # The held job ends only once this loop opens its gate: an aget that blocked
        # the loop would never see it end, and fail with JobTimeout instead.
        while not pid_file.exists():
            await asyncio.sleep(0.02)
        assert not waiting.done()
        gate.touch()
        job = await app.asubmit("birthday", {"student": f"@{student.lineage_id}"})
        return await job.aget(timeout=60), await waiting

    try:
        new, held = asyncio.run(main())
    finally:
        gate.touch()  # whatever happened, the worker is free again

    assert isinstance(new, Student) and new.age == 51
    assert held == 1


def test_get_with_a_short_timeout_raises_job_timeout(app: App, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = app.submit("held", {"gate": str(gate), "pid_file": str(tmp_path / "held.pid")})
    try:
        with pytest.raises(graftq.JobTimeout) as caught:
            job.get(timeout=0.5)  # the job cannot end before the gate opens
        assert isinstance(caught.value, TimeoutError)
        assert job.id in str(caught.value) and "0.5s" in str(caught.value)
        assert job.status in {"PENDING", "STARTED"}
    finally:
        gate.touch()
    assert job.get(timeout=60) == 1  # the job itself was not harmed by the short wait


def test_a_timeout_under_a_second_is_kept(app: App, tmp_path: Path) -> None:
    # Celery waits on a result in slices of a whole second: 0.2 s would wait 1 s.
    gate = tmp_path / "gate"
    job = app.submit("held", {"gate": str(gate), "pid_file": str(tmp_path / "held.pid")})
    try:
        for timeout in (0.2, 1.2):
            started = time.monotonic()
            with pytest.raises(graftq.JobTimeout):
                job.get(timeout=timeout)
            assert timeout <= time.monotonic() - started < timeout + 0.6
    finally:
        gate.touch()
    assert job.get(timeout=60) == 1


@pytest.mark.parametrize("shape", ["kwargs", "positional", "input_data"])
def test_any_celery_client_can_send_a_job(app: App, shape: str) -> None:
    student = app.entities.put(Student(name="Ed", age=60))
    data = {"student": f"@{student.lineage_id}"}
    message: dict[str, Any] = {
        "kwargs": {"kwargs": data},
        "positional": {"args": [data]},
        "input_data": {"kwargs": {"input_data": data}},
    }[shape]

    sent = app.celery.send_task("graftq.birthday", **message)
    new = app.job(sent.id, "birthday").get(timeout=30)

    assert isinstance(new, Student) and new.age == 61 and new.derived_from == sent.id
    assert app.entities.head_id(student.lineage_id) == str(new.ecs_id)
    run = app.entities.execution(sent.id)
    assert run is not None and run.inputs == {"student": str(student.ecs_id)}


def test_bad_input_from_any_celery_client_fails_the_job(app: App) -> None:
    sent = app.celery.send_task(
        "graftq.bonus", kwargs={"student_age": "not a number", "bonus_amount": 1.5}
    )
    job = app.job(sent.id, "bonus")

    with pytest.raises(pydantic.ValidationError) as caught:
        job.get(timeout=30)

    assert any(error["loc"] == ("student_age",) for error in caught.value.errors())
    assert job.status == "FAILURE"
    run = failure_record(app, sent.id, "InvalidInput")  # refused before its body: recorded too
    assert run.callable == "bonus" and run.inputs["student_age"] == "not a number"


def test_a_forged_graftq_meta_does_not_rename_a_failed_job(app: App) -> None:
    forged = {"name": "transform_student", "version": "forged"}
    sent = app.celery.send_task(
        "graftq.bonus", kwargs={"student_age": "x", "bonus_amount": 1.5, "_graftq": forged}
    )

    with pytest.raises(pydantic.ValidationError):
        app.job(sent.id, "bonus").get(timeout=30)

    run = failure_record(app, sent.id, "InvalidInput")
    assert run.callable == "bonus"
    assert run.callable_version == app.callables["bonus"].version


def test_entity_objects_given_by_value_are_stored_first(app: App) -> None:
    student = Student(name="Fay", age=70)

    job = app.submit("birthday", {"student": student})
    new = job.get(timeout=30)

    assert student.age == 70  # the caller's object is left alone
    assert new.age == 71 and new.lineage_id == student.lineage_id
    assert new.parent_id is not None
    stored = app.entities.get(new.parent_id)
    assert isinstance(stored, Student) and stored.age == 70
    assert app.entities.version_ids(student.lineage_id) == [str(new.parent_id), str(new.ecs_id)]


def fail_by_celery_time_limit(app: App, tmp_path: Path, limit: str) -> graftq.Job:
    """A job run past Celery's `limit` of 1 s (its body would sleep 60 s); it failed."""
    pid_file = tmp_path / "sleepy.pid"
    job = app.submit("sleepy", {"seconds": 60.0, "pid_file": str(pid_file)}, **{limit: 1})

    with pytest.raises(Exception) as caught:
        job.get(timeout=60)

    assert isinstance(caught.value, graftq.TimeLimitExceeded), repr(caught.value)
    assert job.status == "FAILURE"
    child = read_proc(pid_file)
    wait_until(lambda: not lives(child), 30, f"isolated child {child} is gone")
    return job


@pytest.mark.parametrize("limit", ["time_limit", "soft_time_limit"])
def test_celery_time_limits_fail_the_job_and_leave_no_child(
    app: App, tmp_path: Path, limit: str
) -> None:
    fail_by_celery_time_limit(app, tmp_path, limit)  # what the job's record says: below


def test_celery_soft_time_limit_leaves_a_failure_record(app: App, tmp_path: Path) -> None:
    job = fail_by_celery_time_limit(app, tmp_path, "soft_time_limit")
    failure_record(app, job.id, "TimeLimitExceeded")


def test_celery_hard_time_limit_leaves_a_failure_record(app: App, tmp_path: Path) -> None:
    job = fail_by_celery_time_limit(app, tmp_path, "time_limit")
    failure_record(app, job.id, "TimeLimitExceeded")


def test_a_body_that_stores_what_it_returns_commits_it_on_a_worker(app: App) -> None:
    ada = app.entities.put(Student(name="Ada", age=20))

    older = app.submit("saved_birthday", {"student": f"@{ada.lineage_id}"}).get(timeout=30)

    assert older.age == 21 and older.parent_id == ada.ecs_id
    assert app.entities.head(ada.lineage_id).ecs_id == older.ecs_id
    assert app.entities.provenance(older.ecs_id) is not None


def test_pickling_a_job_says_how_to_keep_one(app: App) -> None:
    """A Job holds its App (store, Celery app, callable): pickling one failed deep inside
    with "Can't pickle local object" or "cannot pickle '_thread.RLock' object". It says
    what to keep instead, and what that rebuilds answers the same."""
    job = app.submit("bonus", {"student_age": 3, "bonus_amount": 2.0})
    with pytest.raises(TypeError, match=r"app\.job\(") as raised:
        pickle.dumps(job)
    assert job.id in str(raised.value) and "bonus" in str(raised.value)
    assert app.job(job.id, job.name).get(timeout=30) == job.get(timeout=30) == 6.0
    assert copy.copy(job).get(timeout=30) == 6.0  # a shallow copy shares the App
