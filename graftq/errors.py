"""Every error graftq raises, in one tree.

::

    GraftError
    ├── EntityNotFound          (also ValueError)  unknown ecs_id or lineage_id
    ├── InvalidReference        (also ValueError)  malformed "@..." reference or bad path
    ├── InvalidEntity           (also ValueError)  not an Entity, a cycle, an object twice
    ├── InvalidInput            (also ValueError)  a worker refused a job's input (carries
    │                                              pydantic's errors; Job.get re-raises those)
    ├── CorruptVersion                             stored data that cannot be read back
    ├── UnknownEntityType                          stored type name with no Entity class
    ├── RegistrationError                          a callable that cannot be registered
    ├── UnknownCallable         (also KeyError)    no callable of that name
    ├── ReturnTypeError         (also TypeError)   return value the annotation refuses
    │   └── InvalidResult       (also ValidationError) a returned entity the store
    │                                              refuses (pydantic's, as `put` raises)
    ├── VersionConflict                            a head moved under a commit
    ├── IsolationError                             the isolated child died
    │   └── TimeLimitExceeded                      ... because it ran out of time
    ├── SignatureError                             published function with a bad signature
    ├── InvalidSetting          (also ValueError)  a GRAFTQ_* variable or App argument is bad
    ├── Unreachable         (also ConnectionError) Redis or the broker did not answer in time
    └── JobTimeout              (also TimeoutError) waited past Job.get(timeout)

The class docstring is the default message; every raise names the id, path or
value that was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_core import InitErrorDetails, ValidationError


class GraftError(Exception):
    """graftq failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class EntityNotFound(GraftError, ValueError):
    """No stored entity version or lineage has that id."""


class InvalidReference(GraftError, ValueError):
    """An "@..." reference is malformed or its path does not exist."""


class InvalidEntity(GraftError, ValueError):
    """The value cannot be stored as an entity tree."""


class InvalidInput(GraftError, ValueError):
    """The job's input failed validation on the worker."""

    def __init__(self, message: str | None = None, errors: Any = None, title: str = "") -> None:
        super().__init__(message)
        self.errors = errors
        self.title = title
        # Celery rebuilds a failed job's exception as cls(*args): keep all three.
        self.args = (str(self), errors, title)

    def __str__(self) -> str:
        # Exception.__str__ would show all three args as a tuple.
        return str(self.args[0]) if self.args else ""


class CorruptVersion(GraftError):
    """A stored version document cannot be read back."""


class UnknownEntityType(GraftError):
    """A stored version names an Entity class this process does not define."""


class RegistrationError(GraftError):
    """The callable cannot be registered."""


class UnknownCallable(GraftError, KeyError):
    """No callable is registered or published under that name."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and add quotes.
        return str(self.args[0]) if self.args else ""


class ReturnTypeError(GraftError, TypeError):
    """The function returned a value its return annotation does not admit."""


# An entity instance passes its annotation's check unvalidated (a field assigned a value
# of another type, say); the store refuses it at the commit with pydantic's
# ValidationError, as `put` does (SPEC section 3). The error is both that and a
# ReturnTypeError: its title names the callable, its `errors()` the field.
class InvalidResult(ReturnTypeError, ValidationError):
    """The function returned an entity that does not validate as its class."""

    def __new__(
        cls, title: str | None = None, errors: Sequence[Any] = (), *rest: Any
    ) -> InvalidResult:
        """Made from pydantic's line errors, or again from `errors()` as JSON carried
        them (Celery's result backend makes a failed job's exception as ``cls(*args)``)."""
        if rest:  # pydantic's own construction, from `from_exception_data`
            return ValidationError.__new__(cls, title, errors, *rest)
        title = title or (cls.__doc__ or "").strip()
        lines = line_errors(errors)
        made = cls.from_exception_data(title, lines)
        made.args = (title, [{**line, "loc": list(line["loc"])} for line in lines])
        return made

    def __init__(self, *args: Any) -> None:  # made whole by __new__
        pass

    def __str__(self) -> str:
        return super().__str__() if self.error_count() else self.title


def line_errors(errors: Sequence[Mapping[str, Any]]) -> list[InitErrorDetails]:
    """Pydantic's `ValidationError.errors()` as the line errors that make one again
    (`ValidationError.from_exception_data`), whether or not JSON carried them."""
    lines: list[InitErrorDetails] = []
    for error in errors:
        line: InitErrorDetails = {
            "type": error["type"],
            "loc": tuple(error.get("loc", ())),
            "input": error.get("input"),
        }
        if error.get("ctx"):
            line["ctx"] = error["ctx"]
        lines.append(line)
    return lines


class VersionConflict(GraftError):
    """A lineage head moved between reading and committing."""


class IsolationError(GraftError):
    """The isolated child process died before it returned a result."""


class TimeLimitExceeded(IsolationError):
    """The isolated child ran past its time limit and was killed."""


class SignatureError(GraftError):
    """A published function has no valid signature, so it was not loaded."""


class InvalidSetting(GraftError, ValueError):
    """A setting has a value it cannot take."""


class Unreachable(GraftError, ConnectionError):
    """Redis or the broker did not answer within the connect timeout."""


class JobTimeout(GraftError, TimeoutError):
    """The job did not finish within the wait."""
