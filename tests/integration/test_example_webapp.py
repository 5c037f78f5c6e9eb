"""examples/webapp over HTTP: uvicorn serving it, a live `graftq worker`, httpx as the client.

Broker and results live in db 3 of the session's redis-server and the store in db 5,
which no other test uses, so the example's default queue meets only this worker; one
worker and one uvicorn serve the whole module (each test makes its own students).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import httpx
import pytest
import redis

from graftq.devserver import RedisServer, WorkerProcess, free_port
from tests.processes import serving

pytestmark = pytest.mark.integration

JOBS = "examples.webapp.jobs:app"


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> dict[str, str]:
    store, broker = (f"redis://127.0.0.1:{redis_server.port}/{db}" for db in (5, 3))
    for url in (store, broker):
        with redis.Redis.from_url(url) as client:
            client.flushdb()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAFTQ_")}
    return {
        **clean,
        "GRAFTQ_REDIS_URL": store,
        "GRAFTQ_BROKER_URL": broker,
        "GRAFTQ_RESULT_BACKEND": broker,
    }


@contextlib.contextmanager
def uvicorn(env: dict[str, str]) -> Iterator[str]:
    """uvicorn serving examples.webapp.main:api with `env`; its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "examples.webapp.main:api",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(url + "/docs", timeout=2).status_code == 200
        return False

    with serving(args, env, "uvicorn", answers):
        yield url


@pytest.fixture(scope="module")
def web(env: dict[str, str]) -> Iterator[str]:
    """uvicorn serving examples.webapp.main:api next to a worker; its base URL."""
    worker = WorkerProcess(JOBS, env["GRAFTQ_REDIS_URL"], env=env)
    try:
        with worker, uvicorn(env) as url:
            yield url
    finally:
        print(f"--- worker ---\n{worker.log()[-3000:]}")


def test_submit_over_http_then_await_the_committed_version_and_its_provenance(web: str) -> None:
    with httpx.Client(base_url=web, timeout=30) as client:
        created = client.post("/students", json={"name": "Ada", "age": 20})
        assert created.status_code == 201, created.text
        ada = created.json()

        accepted = client.post(f"/students/{ada['lineage_id']}/birthday")
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["poll"] == f"/jobs/birthday/{job['job_id']}"

        done = client.get(job["poll"], params={"wait": 20}).json()
        assert done["status"] == "SUCCESS", done
        version = done["version"]
        assert (version["name"], version["age"]) == ("Ada", 21)
        assert version["lineage_id"] == ada["lineage_id"]
        assert version["parent_id"] == ada["ecs_id"]
        assert version["derived_from"] == job["job_id"]
        provenance = done["provenance"]
        assert provenance["callable"] == "birthday"
        assert provenance["inputs"] == {"student": ada["ecs_id"]}
        assert provenance["outputs"] == [version["ecs_id"]]
        assert provenance["worker"].startswith("graftq-")

        # polling without waiting gives the same answer once the job is done
        assert client.get(job["poll"]).json()["version"] == version


def test_bad_submissions_are_refused_before_anything_is_enqueued(web: str) -> None:
    with httpx.Client(base_url=web, timeout=30) as client:
        ada = client.post("/students", json={"name": "Ada", "age": 20}).json()
        unknown = client.post(f"/students/{ada['lineage_id']}/nope")
        assert unknown.status_code == 404 and "no callable named 'nope'" in unknown.text
        missing = client.post("/students/0b3e9a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b/birthday")
        assert missing.status_code == 422 and "0b3e9a57" in missing.text
        polled = client.get("/jobs/birthday/0b3e9a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b").json()
        assert polled["status"] == "PENDING"  # Celery's word for a job it does not know


def test_polling_a_job_of_an_unknown_callable_is_a_404_naming_it(web: str) -> None:
    with httpx.Client(base_url=web, timeout=30) as client:
        polled = client.get("/jobs/nope/0b3e9a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    assert polled.status_code == 404, polled.text
    assert "no callable named 'nope'" in polled.json()["detail"]


def test_polling_a_job_under_another_callable_is_a_404_naming_the_right_one(web: str) -> None:
    with httpx.Client(base_url=web, timeout=30) as client:
        ada = client.post("/students", json={"name": "Ada", "age": 20}).json()
        job = client.post(f"/students/{ada['lineage_id']}/birthday").json()
        assert client.get(job["poll"], params={"wait": 20}).json()["status"] == "SUCCESS"
        wrong = client.get(f"/jobs/move/{job['job_id']}")
    assert wrong.status_code == 404, wrong.text
    assert job["job_id"] in wrong.json()["detail"] and "birthday" in wrong.json()["detail"]


def test_a_student_in_the_body_cannot_replace_the_one_the_url_names(web: str) -> None:
    with httpx.Client(base_url=web, timeout=30) as client:
        ada = client.post("/students", json={"name": "Ada", "age": 20}).json()
        bob = client.post("/students", json={"name": "Bob", "age": 30}).json()
        answer = client.post(
            f"/students/{ada['lineage_id']}/move",
            json={"student": f"@{bob['lineage_id']}", "city": "Rome"},
        )
    assert answer.status_code == 422, answer.text
    assert "student" in answer.json()["detail"]


def test_an_unreachable_redis_is_a_503_with_a_json_message(env: dict[str, str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    down = {**env, "GRAFTQ_REDIS_URL": dead, "GRAFTQ_BROKER_URL": dead,
            "GRAFTQ_RESULT_BACKEND": dead, "GRAFTQ_CONNECT_TIMEOUT": "1"}  # fmt: skip
    with uvicorn(down) as web, httpx.Client(base_url=web, timeout=30) as client:
        created = client.post("/students", json={"name": "Ada", "age": 20})
        polled = client.get("/jobs/birthday/0b3e9a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    for answer in (created, polled):
        assert answer.status_code == 503, answer.text
        assert dead in answer.json()["detail"]
