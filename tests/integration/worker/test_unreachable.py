"""Nothing waits forever on an unreachable Redis (issue 10 item 4, SPEC 7).

For a refused port, a listener that accepts and never answers, and a SIGSTOPped
redis-server, `submit`, `execute`, `Job.get`, the store (`app.entities`) and the CLI
raise `Unreachable` naming
the URL within the connect timeout — they used to block for minutes (the broker
publish had no timeout) or, refused, raise a false "must be restarted" RuntimeError
after 19 s. The same App works again once the server is back. The bounds asserted are
loose on purpose (hangs were minutes); the contract is GRAFTQ_CONNECT_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from graftq import App, Unreachable
from graftq.devserver import RedisServer, free_port
from tests.apps.school import Student, make_app
from tests.integration.cli.conftest import SCHOOL, clean_env, run_cli
from tests.integration.worker.conftest import Node, running
from tests.processes import wait_until

TIMEOUT = 1.5  # GRAFTQ_CONNECT_TIMEOUT in these tests
GIVE_UP = 12.0  # far above TIMEOUT, far below the minutes the hangs took


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        # close() alone leaves the thread blocked in accept(), so the join would wait
        # its whole timeout; shutdown() wakes it.
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        for conn in accepted:
            conn.close()
        thread.join(5)


@pytest.fixture
def app_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], App]]:
    """Build Apps on a URL; their connections are closed after the test."""
    built: list[App] = []

    def build(url: str) -> App:
        monkeypatch.setenv("GRAFTQ_REDIS_URL", url)
        monkeypatch.setenv("GRAFTQ_CONNECT_TIMEOUT", str(TIMEOUT))
        for name in ("BROKER_URL", "RESULT_BACKEND", "KEY_PREFIX"):
            monkeypatch.delenv(f"GRAFTQ_{name}", raising=False)
        app = make_app()
        app.celery.conf.task_default_queue = f"unreachable-{uuid.uuid4().hex[:8]}"
        built.append(app)
        return app

    yield build
    for app in built:
        app.entities.client.close()
        app.celery.backend.result_consumer.stop()
        app.celery.backend.client.connection_pool.disconnect()
        app.celery.close()
    built.clear()
    with warnings.catch_warnings():
        # After a connection error Celery's result consumer resets its redis-py pool
        # (`_reconnect_pubsub`), which forgets sockets without closing them: collect
        # them here, so the warning does not surface in whichever test runs GC next.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


OPERATIONS: dict[str, Callable[[App], object]] = {
    "submit": lambda app: app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5}),
    "submit by reference": lambda app: app.submit("birthday", {"student": f"@{uuid.uuid4()}"}),
    "submit_many": lambda app: app.submit_many("bonus", [{"student_age": 2, "bonus_amount": 1}]),
    "asubmit_many": lambda app: asyncio.run(
        app.asubmit_many("bonus", [{"student_age": 2, "bonus_amount": 1}])
    ),
    "execute": lambda app: app.execute("bonus", {"student_age": 2, "bonus_amount": 1.5}),
    "Job.get": lambda app: app.job(str(uuid.uuid4()), "bonus").get(),
    "Job.status": lambda app: app.job(str(uuid.uuid4()), "bonus").status,
    "entities.get": lambda app: app.entities.get(uuid.uuid4()),
    "entities.put": lambda app: app.entities.put(Student(name="Al", age=3)),
    "entities.heads": lambda app: list(app.entities.heads(Student)),
    "entities.resolve": lambda app: app.entities.resolve(f"@{uuid.uuid4()}.name"),
}


def assert_unreachable(app: App, operation: str, url: str) -> None:
    started = time.monotonic()
    with pytest.raises(Unreachable) as raised:
        OPERATIONS[operation](app)
    elapsed = time.monotonic() - started
    assert url in str(raised.value) and "GRAFTQ_CONNECT_TIMEOUT" in str(raised.value)
    assert elapsed < GIVE_UP, f"{operation} took {elapsed:.1f}s"


def works(app: App) -> None:
    """The App serves again: a store round trip and an enqueue."""
    student = app.entities.put(Student(name="Bo", age=5))
    assert app.entities.get(student.ecs_id).name == "Bo"
    job = app.submit("birthday", {"student": f"@{student.lineage_id}"})
    assert job.status == "PENDING"  # no worker consumes this queue: enqueued is enough


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_refused_port(app_on: Callable[[str], App], operation: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert_unreachable(app_on(url), operation, url)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_listener_that_never_answers(app_on: Callable[[str], App], operation: str) -> None:
    with silent_listener() as port:
        url = f"redis://127.0.0.1:{port}/0"
        assert_unreachable(app_on(url), operation, url)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_stopped_redis_then_the_same_app_works_again(
    private_redis: RedisServer, app_on: Callable[[str], App], operation: str
) -> None:
    app = app_on(private_redis.url)
    works(app)  # connections are open and pooled when the server stops
    with stopped(private_redis):
        assert_unreachable(app, operation, private_redis.url)
    works(app)


@pytest.mark.parametrize("when", ["at once", "once the job is waited on"])
def test_waiting_job_notices_redis_stopping(
    private_redis: RedisServer, app_on: Callable[[str], App], when: str
) -> None:
    """`Job.get` raises `Unreachable` whether the server stops as the wait begins or
    while it waits: Celery's backend, subscribed and waiting on its socket, never
    noticed a server gone quiet (this waited until the server came back)."""
    app = app_on(private_redis.url)
    job = app.submit("bonus", {"student_age": 2, "bonus_amount": 1.5})  # no worker: pending
    failure: list[tuple[float, BaseException]] = []

    def wait() -> None:
        try:
            job.get()
        except BaseException as exc:
            failure.append((time.monotonic(), exc))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    if when != "at once":  # the waiter has subscribed to its result: it is waiting
        with redis.Redis.from_url(private_redis.url) as watcher:
            channel = f"celery-task-meta-{job.id}"
            wait_until(lambda: watcher.pubsub_numsub(channel)[0][1] > 0, GIVE_UP, "the wait")
    with stopped(private_redis):
        since = time.monotonic()
        waiter.join(GIVE_UP)
    waiter.join(GIVE_UP)
    assert failure and isinstance(failure[0][1], Unreachable), failure
    assert failure[0][0] - since < GIVE_UP


def test_refused_port_comes_back(app_on: Callable[[str], App]) -> None:
    port = free_port()
    app = app_on(f"redis://127.0.0.1:{port}/0")
    assert_unreachable(app, "submit", f"redis://127.0.0.1:{port}/0")
    with RedisServer(port=port):
        works(app)


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--app", SCHOOL, "bonus", "--input", '{"student_age": 2, "bonus_amount": 1}'],
        ["show", str(uuid.uuid4())],
        ["history", str(uuid.uuid4())],
        ["flower", "--app", SCHOOL, "--no-auth", "--port", str(free_port())],
    ],
    ids=["submit", "show", "history", "flower"],
)
def test_cli_reports_an_unreachable_server_in_one_line(args: list[str]) -> None:
    with silent_listener() as port:
        url = f"redis://127.0.0.1:{port}/0"
        env = clean_env(GRAFTQ_REDIS_URL=url, GRAFTQ_CONNECT_TIMEOUT=str(TIMEOUT))
        proc = run_cli(*args, env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: cannot reach {url}"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_long_job_on_a_healthy_redis_is_waited_for_not_refused(
    redis_server: RedisServer,
    broker_url: str,
    client_app: Callable[..., App],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The bounds are on each reply, not on the job: idle waits far past them are fine."""
    env = {"GRAFTQ_CONNECT_TIMEOUT": str(TIMEOUT)}
    node = Node("patient", env=env, concurrency=1)
    with running(redis_server.url, broker_url, node):
        monkeypatch.setenv("GRAFTQ_CONNECT_TIMEOUT", str(TIMEOUT))
        app = client_app(node.queue)
        assert app.settings.connect_timeout == TIMEOUT
        seconds = 4 * TIMEOUT
        job = app.submit("sleepy", {"seconds": seconds, "pid_file": str(tmp_path / "p")})
        assert job.get() == 1


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_refused_password_is_named_as_the_cause(
    app_on: Callable[[str], App], operation: str
) -> None:
    """A server that answers but refuses the password: the error says so, whichever client
    met it first. Celery's result backend (which `submit` and `Job.get` reach) swallows
    the refusal into its own "must be restarted" RuntimeError, which named neither the
    password nor anything a user could act on."""
    with RedisServer() as server:
        redis.Redis(port=server.port).config_set("requirepass", "right")
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(Unreachable) as raised:
            OPERATIONS[operation](app_on(url))
    message = str(raised.value)
    assert f"redis://:**@127.0.0.1:{server.port}/0" in message and "wrong" not in message
    assert "AuthenticationError" in message and "RuntimeError" not in message, message
