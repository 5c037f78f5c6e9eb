"""The jobs of the example web app: what `graftq worker --app examples.webapp.jobs:app` runs."""

from __future__ import annotations

from graftq import App, Entity


class Address(Entity):
    graftq_type = "examples.webapp.Address"
    city: str


class Student(Entity):
    graftq_type = "examples.webapp.Student"
    name: str
    age: int
    address: Address | None = None


app = App("webapp")  # GRAFTQ_REDIS_URL, GRAFTQ_BROKER_URL, ... as every graftq App


@app.register
def birthday(student: Student) -> Student:
    student.age += 1
    return student


@app.register
def move(student: Student, city: str) -> Student:
    student.address = Address(city=city)
    return student
