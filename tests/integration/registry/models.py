"""The shapes only the store tests need, beside the suite's models in `tests.apps.school`.

Importable, so stored type names resolve. Mutable defaults are written as in SPEC
section 2: Pydantic copies them per instance (ruff cannot tell that `Entity` is a
Pydantic model, hence the RUF012 exemption).
"""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, computed_field
from pydantic import Strict as StrictType

from graftq.registry.entity import Entity
from tests.apps.school import Address, Counter, Student

__all__ = [
    "Address", "Aliased", "Attachment", "Bag", "Binary", "Blob", "Box", "Computed", "Counter",
    "Course", "Envelope", "Floor", "Holder", "Leaf", "Letter", "Link", "Loose", "Mail", "Node",
    "Numbers", "Site", "Strict", "StrictFields", "Student",
]  # fmt: skip


class Course(Entity):
    """Sub-entities in every kind of container the spec names."""

    title: str
    mentor: Student | None = None
    pair: tuple[Address, Address] | None = None
    stops: tuple[Address, ...] = ()
    by_name: dict[str, Address] = {}
    groups: dict[str, list[Address]] = {}
    grid: list[list[Address]] = []
    mixed: list[Address | None] = []
    scores: dict[str, int] = {}
    labelled: dict[str, Address | int] = {}


class Leaf(Entity):
    value: int


T = TypeVar("T")


class Holder(Entity, Generic[T]):
    """A generic entity: each parametrization (`Holder[Leaf]`) is a class of its own."""

    item: T
    items: list[T] = []


class Numbers(Entity):
    """Sets: their JSON form is a list, in an order no value of theirs decides."""

    numbers: set[int]
    labels: frozenset[str] = frozenset()


class Bag(Entity):
    name: str
    leaves: list[Leaf] = []


class Link(Entity):
    """A chain of entities; assigning `child` skips validation, so cycles can be built."""

    name: str
    child: Link | None = None


class Box(Entity):
    """Holds anything; assigning to `content` skips validation, so it can hold itself."""

    content: Any = None


class Node(Entity):
    """The random trees of the property tests."""

    value: int = 0
    label: str = ""
    children: list[Node] = []
    opt: Node | None = None


class Floor(Address):
    """A subclass stored where an `Address` is declared."""

    level: int = 0


class Site(Entity):
    place: Address
    either: Address | Student | None = None


class Aliased(Entity):
    """Pydantic field aliases, as models mirroring external JSON use them."""

    full_name: str = Field(alias="fullName")


class Computed(Entity):
    model_config = ConfigDict(extra="forbid")

    a: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return self.a * 2


class Gauge(Entity):
    """Floats as pydantic stores them: NaN and infinities included (allow_inf_nan)."""

    value: float
    values: list[float] = []


class Blob(Entity):
    """bytes in pydantic's default JSON form, UTF-8 text: only UTF-8 bytes can be stored."""

    data: bytes


class Binary(Entity):
    """bytes as base64 text: any bytes can be stored (the form docs/decisions.md gives)."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    data: bytes


class Attachment(BaseModel):
    """A plain model inside an entity's own data."""

    data: bytes


class Mail(Entity):
    subject: str
    blob: Blob | None = None
    binary: Binary | None = None
    binaries: list[Binary] = []
    chunks: list[bytes] = []
    attachments: dict[str, Attachment] = {}


class Color(enum.Enum):
    RED = "red"


class StrictFields(Entity):
    """Fields validated strictly: their JSON forms (text, lists, values) are not."""

    when: datetime.datetime = Field(strict=True)
    ref: Annotated[uuid.UUID, StrictType()]
    pair: tuple[int, int] = Field(strict=True)
    color: Color = Field(strict=True)


class Strict(Entity):
    """A whole model validated strictly, the identity fields included."""

    model_config = ConfigDict(strict=True)
    value: int
    inner: StrictFields | None = None


class Loose(Entity):
    """Extra fields allowed: entities in them are sub-entities like any other."""

    model_config = ConfigDict(extra="allow")
    name: str


class Envelope(BaseModel):
    """A plain model holding an entity."""

    to: Address
    note: str = ""


class Letter(Entity):
    """Entities inside plain models inside an entity: sub-entities all the same."""

    envelope: Envelope
    copies: list[Envelope] = []
