"""`graftq demo`: a worker, references and lineage on a machine with nothing configured.

Uses the Redis at GRAFTQ_REDIS_URL when one answers, else starts a private one.
It runs on its own queue and key prefix, so it never touches other apps' jobs or data.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from rich.console import Console

from graftq.app import App
from graftq.devserver import RedisServer, WorkerProcess
from graftq.registry.entity import Entity
from graftq.settings import Settings

QUEUE = "graftq-demo"


class Address(Entity):
    graftq_type = "graftq.demo.Address"
    city: str


class Student(Entity):
    graftq_type = "graftq.demo.Student"
    name: str
    age: int
    major: str = "undeclared"
    address: Address | None = None


class GraduateStudent(Entity):
    graftq_type = "graftq.demo.GraduateStudent"
    name: str
    age: int
    undergraduate_degree: str


def make_app(redis_url: str | None = None) -> App:
    """The demo app, on its own key prefix and queue."""
    app = App("graftq-demo", redis_url, key_prefix="graftq-demo")
    app.celery.conf.task_default_queue = QUEUE

    @app.register
    def birthday(student: Student) -> Student:
        """Lineage preserved: the same student, one year older."""
        student.age += 1
        return student

    @app.register("transform_student")
    def transform(student: Student) -> GraduateStudent:
        """Transformative: a new lineage derived from the student."""
        return GraduateStudent(
            name=student.name, age=student.age, undergraduate_degree=student.major
        )

    @app.register
    def move(student: Student, city: str) -> Student:
        """A nested change: the address and the student get new versions."""
        if student.address is None:
            student.address = Address(city=city)
        else:
            student.address.city = city
        return student

    @app.register
    def bonus(student_age: int, bonus_amount: float) -> float:
        """Field references: the seed's example."""
        return student_age * bonus_amount

    return app


app = make_app()  # what `graftq worker --app graftq.demo:app` loads


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def run(say: Callable[[str], None] | None = None) -> None:
    """Start what is missing, run example jobs, print the lineage, stop what was started."""
    console = Console(soft_wrap=True)
    say = say or console.print
    url = Settings.from_env().redis_url
    server: RedisServer | None = None
    if not _reachable(url):
        server = RedisServer().start()
        url = server.url
        say(f"no Redis answered; started a private one at {url} (pid {server.pid})")
    demo = make_app(url)
    try:
        with WorkerProcess("graftq.demo:app", url, concurrency=2, extra=["-Q", QUEUE]) as worker:
            say(f"started a graftq worker (pid {worker.pid}) with a prefork pool of 2")
            _jobs(demo, say)
    finally:
        if server is not None:
            server.stop()
            say("stopped the private Redis")


def _jobs(demo: App, say: Callable[[str], None]) -> None:
    store = demo.entities
    ada = store.put(Student(name="Ada", age=20, major="math", address=Address(city="Paris")))
    say(f"stored Student {ada.name} age {ada.age}: lineage {ada.lineage_id}")

    older = demo.submit("birthday", {"student": f"@{ada.lineage_id}"}).get(timeout=30)
    say(f"birthday(@lineage) → age {older.age}, new version {older.ecs_id}")

    moved = demo.submit("move", {"student": f"@{ada.lineage_id}", "city": "Lyon"}).get(timeout=30)
    assert moved.address is not None
    say(f"move(@lineage, 'Lyon') → address {moved.address.city}, address re-versioned too")

    grad = demo.submit("transform_student", {"student": f"@{older.ecs_id}"}).get(timeout=30)
    say(f"transform_student(@{older.ecs_id}) → {type(grad).__name__} in a new lineage")

    pay = {"student_age": f"@{ada.lineage_id}.age", "bonus_amount": 100.5}
    say(f"bonus({pay}) → {demo.submit('bonus', pay).get(timeout=30)}")

    stale = demo.submit("birthday", {"student": f"@{ada.ecs_id}"}).get(timeout=30)
    say(f"birthday pinned to the first version → branch {stale.ecs_id} (head unchanged)")

    execution = store.provenance(moved.ecs_id)
    if execution is not None:
        say(f"provenance of {moved.ecs_id}: {execution.callable} on {execution.worker}")
    say("lineage of Ada (Mermaid):")
    say(store.lineage_mermaid(ada.lineage_id))
