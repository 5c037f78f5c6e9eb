"""`graftq demo`: a worker, references and lineage on a machine with nothing configured.

Uses the Redis at GRAFTQ_REDIS_URL when one answers, else starts a private one.
It runs on its own queue and key prefix, so it never touches other apps' jobs or data.
"""

from __future__ import annotations

from typing import Any

import redis
from rich.console import Console

from graftq import progress
from graftq.app import App
from graftq.devserver import RedisServer, WorkerProcess
from graftq.registry.entity import Entity
from graftq.settings import Settings
from graftq.tables import heads_table

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


class Counter(Entity):
    graftq_type = "graftq.demo.Counter"
    value: int = 0


def make_app(redis_url: str | None = None, **settings: Any) -> App:
    """The demo app, on its own key prefix and queue (`settings`: more App settings)."""
    app = App("graftq-demo", redis_url, key_prefix="graftq-demo", **settings)
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

    @app.register
    def expel(student: Student, reason: str) -> Student:
        """Always fails: what a failed job leaves behind."""
        raise ValueError(f"{student.name} cannot be expelled: {reason}")

    @app.register
    def increment(counter: Counter) -> Counter:
        """Run many at once by lineage reference: each re-runs on the new head if it moved."""
        counter.value += 1
        return counter

    return app


app = make_app()  # what `graftq worker --app graftq.demo:app` loads

INCREMENTS = 20
TIMEOUT = 60.0


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def run(console: Console | None = None) -> None:
    """Start what is missing, run example jobs, print the lineage, stop what was started."""
    console = console or Console(soft_wrap=True)
    say = console.print
    url = Settings.from_env().redis_url
    server: RedisServer | None = None
    private: dict[str, str] = {}  # broker and results, where they must not be the configured
    if not _reachable(url):
        server = RedisServer().start()
        url = server.url
        private = {"broker_url": url, "result_backend": url}  # all on the private Redis
        say(f"no Redis answered; started a private one at {url} (pid {server.pid})")
    demo = make_app(url, **private)
    env = {f"GRAFTQ_{name.upper()}": value for name, value in private.items()}
    try:
        with WorkerProcess(
            "graftq.demo:app", url, concurrency=2, extra=["-Q", QUEUE], env=env
        ) as worker:
            say(f"started a graftq worker (pid {worker.pid}) with a prefork pool of 2")
            _jobs(demo, console)
    finally:
        if server is not None:
            server.stop()
            say("stopped the private Redis")


def _jobs(demo: App, console: Console) -> None:
    say = console.print
    store = demo.entities

    def run(name: str, input_data: dict[str, Any]) -> Any:
        return progress.wait(demo.submit(name, input_data), console, timeout=TIMEOUT)

    say("\n[bold]1. References: by lineage (the head) and pinned (one version)[/]")
    ada = store.put(Student(name="Ada", age=20, major="math", address=Address(city="Paris")))
    say(f"stored Student {ada.name}, age {ada.age}: lineage {ada.lineage_id}")
    older = run("birthday", {"student": f"@{ada.lineage_id}"})
    say(f"birthday(@<lineage>) -> age {older.age}: new version {older.ecs_id}, the new head")
    stale = run("birthday", {"student": f"@{ada.ecs_id}"})
    say(f"birthday(@<first version>) -> a branch {stale.ecs_id}; the head stays {older.ecs_id}")
    pay = {"student_age": f"@{ada.lineage_id}.age", "bonus_amount": 100.5}
    say(f"bonus({pay}) -> {run('bonus', pay)}")

    say("\n[bold]2. A nested edit re-versions the sub-entity and every ancestor[/]")
    moved = run("move", {"student": f"@{ada.lineage_id}", "city": "Lyon"})
    assert moved.address is not None and ada.address is not None
    say(f"address {ada.address.ecs_id} -> {moved.address.ecs_id} (city {moved.address.city})")
    say(f"student {older.ecs_id} -> {moved.ecs_id} (parent {moved.parent_id})")

    say("\n[bold]3. A transformative function starts a new lineage[/]")
    grad = run("transform_student", {"student": f"@{moved.ecs_id}"})
    execution = store.provenance(grad.ecs_id)
    assert execution is not None
    say(f"transform_student -> {type(grad).__name__} lineage {grad.lineage_id}")
    say(f"provenance: {execution.callable} on {execution.worker}, inputs {execution.inputs}")

    say("\n[bold]4. A failing job leaves a FAILURE record and changes nothing[/]")
    job = demo.submit("expel", {"student": f"@{ada.lineage_id}", "reason": "demo"})
    try:
        progress.wait(job, console, timeout=TIMEOUT)
    except ValueError as exc:
        say(f"expel raised ValueError: {exc}")
    failed = store.execution(job.id)
    assert failed is not None
    say(f"execution {failed.id}: status {failed.status.value}, error {failed.error!r}")
    say(f"head still {store.head_id(ada.lineage_id)}")

    say(f"\n[bold]5. {INCREMENTS} concurrent increments of one lineage end at {INCREMENTS}[/]")
    counter = store.put(Counter())
    jobs = [
        demo.submit("increment", {"counter": f"@{counter.lineage_id}"}) for _ in range(INCREMENTS)
    ]
    progress.wait_all(jobs, console, timeout=TIMEOUT)
    final = store.head(counter.lineage_id)
    assert isinstance(final, Counter)
    chain = len(store.version_ids(counter.lineage_id))
    say(f"counter value {final.value}: a chain of {chain} versions, one per increment + the first")

    say("\n[bold]6. graftq ls Student: the head of every Student lineage[/]")
    table, _ = heads_table(store, Student.graftq_type, limit=20)
    console.print(table)

    say("\n[bold]7. graftq lineage --mermaid: Ada's versions[/]")
    console.out(store.lineage_mermaid(ada.lineage_id), highlight=False)
