"""Flower in a real browser: headless Chromium logs in and reads a graftq job's task page.

Needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` package,
which drives that binary (no browser download). Skipped, with the reason, only
where either is missing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from graftq import App
from graftq.devserver import RedisServer, free_port
from tests.apps.school import Student
from tests.flower import CREDENTIALS, PASSWORD, USER, api, flower
from tests.integration.worker.conftest import SCHOOL, Node, running
from tests.processes import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _browser() -> Callable[..., object]:
    """playwright's sync API, or a skip saying what is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    return sync_playwright


def test_flower_task_page_shows_the_callable_and_the_committed_version(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    sync_playwright = _browser()
    from playwright.sync_api import Error as PlaywrightError

    node = Node("flower-w")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GRAFTQ_") and key not in {"COLUMNS", "LINES"}
    }
    env.update(
        GRAFTQ_REDIS_URL=redis_server.url,
        GRAFTQ_BROKER_URL=broker_url,
        GRAFTQ_RESULT_BACKEND=broker_url,
    )
    port = free_port()
    credentials = CREDENTIALS
    with flower(SCHOOL, env, port) as url, running(redis_server.url, broker_url, node):
        # Flower learns of tasks from events: wait until it sees the worker, then submit.
        wait_until(
            lambda: node.name in api(url + "/api/workers?refresh=1", credentials)[1],
            30,
            "flower seeing the worker",
        )
        app = client_app(node.queue)
        ada = app.entities.put(Student(name="Ada", age=20))
        job = app.submit("birthday", {"student": f"@{ada.lineage_id}"})
        older = job.get(timeout=30)
        assert isinstance(older, Student)

        def succeeded() -> bool:
            status, body = api(f"{url}/api/task/info/{job.id}", credentials)
            return status == 200 and json.loads(body).get("state") == "SUCCESS"

        wait_until(succeeded, 30, "flower recording the task's success")

        screenshot = Path(tempfile.gettempdir()) / f"graftq-flower-task-{job.id}.png"
        with sync_playwright() as playwright:  # type: ignore[operator]
            denied = playwright.chromium.launch_persistent_context(
                str(tmp_path / "anonymous"), executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
            try:  # without credentials the page is refused (headless Chromium: an error)
                response = denied.new_page().goto(f"{url}/task/{job.id}")
                assert response is not None and response.status == 401
            except PlaywrightError as exc:
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc), exc
            finally:
                denied.close()
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1400, "height": 1000},
            )
            try:
                page = browser.new_page()
                response = page.goto(f"{url}/task/{job.id}")
                assert response is not None and response.status == 200
                page.get_by_text("graftq.birthday").first.wait_for(timeout=15_000)
                text = page.inner_text("body")
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
        print(f"flower task page screenshot: {screenshot}")
        assert "graftq.birthday" in text  # the task, under its callable's name
        assert f"@{ada.lineage_id}" in text  # the input as submitted: the reference
        assert str(older.ecs_id) in text  # the result: the committed version id
        assert "SUCCESS" in text
