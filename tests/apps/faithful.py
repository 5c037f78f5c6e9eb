"""Callables whose return annotations are wider than the values they return.

They exercise the type-faithful trip across the fork (SPEC section 5, "What comes
back"): a value annotated `-> Entity`, a base class, `Any`, `dict` or a plain model
must come back with its concrete classes and commit the same versions as
`isolation="none"`. `make_app()` registers each body twice: `<name>` (fork) and
`<name>_inline` (isolation="none"). `build` runs a JSON recipe (see `cook`) so a
property test can generate return values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from graftq import App, Entity
from tests.apps.school import Address, Counter, GraduateStudent, Student


class Person(Entity):
    name: str


class Pupil(Person):
    grade: int
    address: Address | None = None


class Teacher(Person):
    subject: str
    pupils: list[Person] = []


class Report(BaseModel):
    """A plain (non-Entity) model that holds entities and other values."""

    title: str
    subject: Entity
    extras: dict[str, Any] = {}


def older(student: Student) -> Entity:
    student.age += 1
    return student


def promote(pupil: Pupil) -> Person:
    pupil.grade += 1
    return pupil


def wrapped_any(student: Student) -> Any:
    student.age += 1
    return {"student": student, "tags": ("a", 1), "n": 2.5}


def wrapped_dict(student: Student) -> dict[str, Any]:
    student.age += 1
    return {"student": student, "new": Counter(value=7)}


def wrapped_list(student: Student) -> list[Entity]:
    student.age += 1
    return [student, GraduateStudent(name=student.name, age=student.age, undergraduate_degree="x")]


def reported(student: Student) -> Report:
    student.age += 1
    return Report(title="r", subject=student, extras={"when": (1, 2)})


def either(student: Student) -> Student | Counter | None:
    return Counter(value=student.age)


def bump_both(a: Counter, b: Counter) -> tuple[Counter, Counter]:
    a.value += 1
    b.value += 1
    return a, b


# -- recipes: JSON descriptions of return values, for property tests ----------------------

CLASSES: dict[str, type[Entity]] = {
    cls.__name__: cls for cls in (Student, Counter, Address, Pupil, Teacher, GraduateStudent)
}


def cook(recipe: Any, inputs: list[Entity]) -> Any:
    """The value a recipe describes.

    ``{"input": i, "set": {...}}`` is input i with fields set; ``{"new": cls, "ids":
    [ecs, lineage], "fields": {...}}`` a new entity with those ids; ``{"list": [...]}``,
    ``{"tuple": [...]}``, ``{"dict": {...}}`` containers; ``{"report": r}`` a Report
    around the entity recipe r; anything else is itself.
    """
    if not isinstance(recipe, dict):
        return recipe
    if "input" in recipe:
        entity = inputs[recipe["input"]]
        for name, value in recipe.get("set", {}).items():
            setattr(entity, name, cook(value, inputs))
        return entity
    if "new" in recipe:
        ecs_id, lineage_id = (UUID(i) for i in recipe["ids"])
        fields = {name: cook(value, inputs) for name, value in recipe["fields"].items()}
        return CLASSES[recipe["new"]](ecs_id=ecs_id, lineage_id=lineage_id, **fields)
    if "list" in recipe:
        return [cook(item, inputs) for item in recipe["list"]]
    if "tuple" in recipe:
        return tuple(cook(item, inputs) for item in recipe["tuple"])
    if "dict" in recipe:
        return {key: cook(value, inputs) for key, value in recipe["dict"].items()}
    if "report" in recipe:
        return Report(title="r", subject=cook(recipe["report"], inputs))
    raise ValueError(f"bad recipe {recipe!r}")


ANNOTATIONS: dict[str, Any] = {
    "entity": Entity,
    "person": Person,
    "any": Any,
    "dict": dict[str, Any],
    "list": list[Any],
    "union": Student | Counter | list[Any] | dict[str, Any],
    "report": Report,
}


def _builder(annotation: Any) -> Callable[..., Any]:
    def build(recipe: dict[str, Any], inputs: list[Entity]) -> Any:
        return cook(recipe["value"], inputs)

    build.__annotations__ = {
        "recipe": dict[str, Any],
        "inputs": list[Entity],
        "return": annotation,
    }
    return build


def wait_for(path: str, seconds: float = 30.0) -> None:
    """Block until `path` exists (the test's signal), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def make_app(name: str = "faithful", memo_version: str | None = None, **options: Any) -> App:
    """The app; `memo_version` is the `version=` of the cached callable `square`."""
    app = App(name, **options)
    other = App(f"{name}-other", **options)

    @app.register
    def gated_bump(a: Counter, b: Counter, entered: str, gate: str) -> tuple[Counter, Counter]:
        """bump_both, but each run first says so and waits for the test's go-ahead."""
        with open(entered, "a") as marker:
            marker.write("run\n")
        wait_for(gate)
        return bump_both(a, b)

    @app.register
    def publish_inside(note: str) -> str:
        def helper(x: int) -> int:
            return x

        return app.publish(helper, "sneaky")

    @app.register
    def write_around(key: str) -> int:
        """Try every store handle a body can reach; none may write to Redis."""
        hits = 0
        for store in (app.entities, other.entities):
            store.client.set(key, "x")
            base = getattr(store.client, "base", None)
            if base is not None:
                base.set(key, "x")
                hits += 1
        other.entities.put(Counter(value=5))
        return hits

    @app.register(cache=True, version=memo_version)
    def square(x: int, marker_file: str) -> int:
        with open(marker_file, "a") as marker:
            marker.write("ran\n")
        return x * x

    for body in (older, promote, wrapped_any, wrapped_dict, wrapped_list, reported, either):
        app.register(body, body.__name__)
        app.register(body, f"{body.__name__}_inline", isolation="none")
    app.register(bump_both)
    for label, annotation in ANNOTATIONS.items():
        app.register(_builder(annotation), f"build_{label}")
        app.register(_builder(annotation), f"build_{label}_inline", isolation="none")
    return app


app = make_app()
