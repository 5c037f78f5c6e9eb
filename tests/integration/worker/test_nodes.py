"""Two worker nodes share one queue; each job is committed once and says who ran it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from graftq import App
from graftq.devserver import RedisServer
from tests.apps.school import Student
from tests.integration.worker.conftest import Node, new_queue, running


def test_two_nodes_share_the_work_and_provenance_names_the_node(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    queue = new_queue()
    w1 = Node("w1", concurrency=1, queue=queue)
    w2 = Node("w2", concurrency=1, queue=queue)
    with running(redis_server.url, broker_url, w1, w2):
        app = client_app(queue)
        students = [app.entities.put(Student(name=f"s{n}", age=n)) for n in range(10)]
        birthdays = [
            app.submit("birthday", {"student": f"@{student.lineage_id}"}) for student in students
        ]
        # With prefetch 1 and late acks a node busy with one of these cannot take
        # another, so these alone make both nodes work.
        naps = [
            app.submit("sleepy", {"seconds": 0.5, "pid_file": str(tmp_path / f"{n}.pid")})
            for n in range(4)
        ]

        new = [job.get(timeout=60) for job in birthdays]
        assert [job.get(timeout=60) for job in naps] == [1] * 4

        store = app.entities
        for student, job, version in zip(students, birthdays, new, strict=True):
            assert version.age == student.age + 1 and version.derived_from == job.id
            assert store.version_ids(student.lineage_id) == [
                str(student.ecs_id),
                str(version.ecs_id),
            ]
        runs = [store.execution(job.id) for job in birthdays + naps]
        assert all(run is not None and run.status == "SUCCESS" for run in runs)
        workers = {run.worker for run in runs if run is not None}
        assert workers == {w1.node, w2.node}
        for job, version in zip(birthdays, new, strict=True):
            run = store.provenance(version.ecs_id)
            assert run is not None and run.id == job.id and run.worker in workers
