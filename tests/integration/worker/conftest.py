"""Real `graftq worker` prefork subprocesses on the session's private redis-server.

Each worker consumes its own uniquely named queue (``-Q``) and each client App
sends to that queue by default, so a message left behind by one test can never
reach another test's worker, and a queue no worker consumes can be watched.
Store: db 0 (flushed per test); broker and results: db 1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import redis

from graftq import App
from graftq.devserver import RedisServer, WorkerProcess

SCHOOL = "tests.apps.school:app"
START_TIMEOUT = 90.0  # seconds until a worker says "ready": generous for a loaded machine
FAULTY = "tests.apps.faulty:app"


def new_queue() -> str:
    return f"graftq-it-{uuid.uuid4().hex[:12]}"


@dataclass
class Node:
    """One worker: its process, the queue it consumes and its Celery node name."""

    name: str  # e.g. "w1" -> node "w1@<host>"
    app_path: str = SCHOOL
    concurrency: int = 2
    env: dict[str, str] = field(default_factory=dict)
    queue: str = field(default_factory=new_queue)
    extra: list[str] = field(default_factory=list)  # more `graftq worker` options
    process: WorkerProcess | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    @property
    def proc(self) -> WorkerProcess:
        assert self.process is not None, f"worker {self.name} was not started"
        return self.process


@contextlib.contextmanager
def running(store_url: str, broker_url: str, *nodes: Node) -> Iterator[None]:
    """Start the nodes' workers (in parallel); always stop every one of them."""
    for node in nodes:
        node.process = WorkerProcess(
            node.app_path,
            store_url,
            concurrency=node.concurrency,
            hostname=f"{node.name}@%h",
            # An empty GRAFTQ_SIGNING_KEY means "none": a key monkeypatched into this
            # process's environment never leaks into a worker that was not given one.
            env={
                "GRAFTQ_BROKER_URL": broker_url,
                "GRAFTQ_RESULT_BACKEND": broker_url,
                "GRAFTQ_SIGNING_KEY": "",
                **node.env,
            },
            extra=["-Q", node.queue, *node.extra],
        )
    try:
        with ThreadPoolExecutor(len(nodes)) as pool:
            for starting in [pool.submit(node.proc.start, START_TIMEOUT) for node in nodes]:
                starting.result()
        yield
    finally:
        started = [node for node in nodes if node.process is not None]
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.proc.stop(), started))
        for node in started:
            assert node.process is not None
            # Captured output: pytest shows it only when the test failed.
            print(f"--- log of worker {node.name} ---\n{node.process.log()[-4000:]}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node.process.log_path)


@pytest.fixture
def queue(broker: redis.Redis) -> Iterator[str]:
    """A queue no worker consumes: its length is what was enqueued. Deleted afterwards."""
    name = new_queue()
    yield name
    broker.delete(name)


@pytest.fixture(scope="module")
def shared_worker(redis_server: RedisServer, broker_url: str) -> Iterator[Node]:
    """One `-c 2` worker for a module's plain tests; increments pause, so that concurrent
    ones are likely to overlap (no test relies on it)."""
    node = Node(f"shared-{uuid.uuid4().hex[:6]}", env={"GRAFTQ_TEST_INCREMENT_PAUSE": "0.05"})
    with running(redis_server.url, broker_url, node):
        yield node


@pytest.fixture
def client_app(make_school: Callable[..., App]) -> Callable[..., App]:
    """A producer App (tests.apps.school) whose jobs go to `queue`: `client_app(node.queue)`."""
    return make_school
