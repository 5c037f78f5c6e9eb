"""Two worker nodes share one queue; each job is committed once and says who ran it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from graftq import App
from graftq.devserver import RedisServer, WorkerProcess
from tests.apps.school import Student
from tests.integration.worker.conftest import SCHOOL, START_TIMEOUT, Node, new_queue, running
from tests.processes import pid_in, wait_until


def test_two_nodes_share_the_work_and_provenance_names_the_node(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    queue = new_queue()
    w1 = Node("w1", concurrency=1, queue=queue)
    w2 = Node("w2", concurrency=1, queue=queue)
    gate = tmp_path / "gate"
    with running(redis_server.url, broker_url, w1, w2):
        app = client_app(queue)
        try:
            # With -c 1, prefetch 1 and late acks a node running one held job takes no
            # other job, so two held jobs running at once are on two different nodes.
            pid_files = [tmp_path / f"held-{n}.pid" for n in range(2)]
            held = [app.submit("held", {"gate": str(gate), "pid_file": str(f)}) for f in pid_files]
            wait_until(lambda: all(pid_in(f) for f in pid_files), 60, "both held jobs running")
        finally:
            gate.touch()
        assert [job.get(timeout=60) for job in held] == [1, 1]

        students = [app.entities.put(Student(name=f"s{n}", age=n)) for n in range(10)]
        birthdays = [
            app.submit("birthday", {"student": f"@{student.lineage_id}"}) for student in students
        ]
        new = [job.get(timeout=60) for job in birthdays]

        store = app.entities
        runs = [store.execution(job.id) for job in held]
        assert {run.worker for run in runs if run is not None} == {w1.node, w2.node}
        for student, job, version in zip(students, birthdays, new, strict=True):
            assert version.age == student.age + 1 and version.derived_from == job.id
            assert store.version_ids(student.lineage_id) == [
                str(student.ecs_id),
                str(version.ecs_id),
            ]
            run = store.provenance(version.ecs_id)
            assert run is not None and run.id == job.id and run.status == "SUCCESS"
            assert run.worker in {w1.node, w2.node}


def test_a_bare_node_name_is_the_name_on_this_host(
    redis_server: RedisServer, broker_url: str, client_app: Callable[..., App]
) -> None:
    """`graftq worker -n w1` names the node `w1@<host>` (Celery alone would make it
    `celery@w1`, taking the name for a host name)."""
    queue, name = new_queue(), f"bare{uuid.uuid4().hex[:6]}"
    env = {"GRAFTQ_BROKER_URL": broker_url, "GRAFTQ_RESULT_BACKEND": broker_url}
    worker = WorkerProcess(SCHOOL, redis_server.url, concurrency=1, hostname=name, env=env,
                           extra=["-Q", queue])  # fmt: skip
    worker.start(START_TIMEOUT)
    try:
        app = client_app(queue)
        ada = app.entities.put(Student(name="Ada", age=20))
        older = app.submit("birthday", {"student": f"@{ada.lineage_id}"}).get(timeout=60)
    finally:
        worker.stop()
    run = app.entities.provenance(older.ecs_id)
    assert run is not None and run.worker == f"{name}@{socket.gethostname()}"
