"""Flower's HTTP API as a Celery client: send-task submits a graftq job, result reads it back."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from graftq import App
from graftq.devserver import RedisServer, free_port
from tests.apps.school import Address, Student
from tests.flower import CREDENTIALS, api, flower
from tests.integration.worker.conftest import SCHOOL, Node, running
from tests.processes import wait_until

pytestmark = pytest.mark.integration


def _ended(url: str, task_id: str) -> dict[str, object]:
    """Flower's /api/task/result of `task_id` once the job has ended."""
    answers: list[dict[str, object]] = []

    def ended() -> bool:
        status, body = api(f"{url}/api/task/result/{task_id}", CREDENTIALS)
        assert status == 200, f"/api/task/result answered {status}"
        answers.append(json.loads(body))
        return answers[-1]["state"] in {"SUCCESS", "FAILURE"}

    wait_until(ended, 30, f"job {task_id} ending")
    return answers[-1]


def test_a_job_sent_through_flower_runs_and_its_result_reads_back(
    redis_server: RedisServer, broker_url: str, client_app: Callable[..., App]
) -> None:
    node = Node("flower-api")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRAFTQ_")}
    env.update(
        GRAFTQ_REDIS_URL=redis_server.url,
        GRAFTQ_BROKER_URL=broker_url,
        GRAFTQ_RESULT_BACKEND=broker_url,
    )
    app = client_app(node.queue)
    ada = app.entities.put(Student(name="Ada", age=20, address=Address(city="Paris")))
    with flower(SCHOOL, env, free_port()) as url, running(redis_server.url, broker_url, node):
        send = f"{url}/api/task/send-task/graftq.birthday"
        status, body = api(send, CREDENTIALS, {"args": [{"student": f"@{ada.lineage_id}"}],
                                               "queue": node.queue})  # fmt: skip
        assert status == 200, body
        answer = _ended(url, json.loads(body)["task-id"])
        assert answer["state"] == "SUCCESS", answer
        older = app.entities.head(ada.lineage_id)
        assert older.age == 21
        assert answer["result"] == {"execution_id": older.derived_from,
                                    "outputs": [str(older.ecs_id)]}  # fmt: skip

        bad = {"kwargs": {"student": f"@{ada.lineage_id}.nope"}, "queue": node.queue}
        status, body = api(send, CREDENTIALS, bad)
        assert status == 200, body
        answer = _ended(url, json.loads(body)["task-id"])
        assert answer["state"] == "FAILURE"
        assert "has no field 'nope'" in str(answer["result"])
        assert "InvalidReference" in str(answer["traceback"])
        assert app.entities.head(ada.lineage_id).age == 21
