"""What a registered callable is: its signature as Pydantic models, its schemas and its version.

``describe`` turns a plain annotated function into a ``CallableInfo``: an input model
built from the parameters (unknown keys forbidden), a ``TypeAdapter`` for the return
annotation, and a content version that changes whenever the function's code does.
``CallableRegistry`` is ``app.callables``: the name → info map that ``@app.register``
fills. Everything here is pure; running and committing live elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import keyword
import marshal
import math
import re
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import pydantic

from graftq.errors import RegistrationError, UnknownCallable

__all__ = ["CallableInfo", "CallableRegistry", "Isolation", "describe", "identifier"]

Isolation = Literal["fork", "none"]
F = TypeVar("F", bound=Callable[..., Any])

_ISOLATIONS: tuple[str, ...] = typing.get_args(Isolation)
_REFUSED_KINDS = {
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
    inspect.Parameter.POSITIONAL_ONLY: "a positional-only parameter",
}


def identifier(name: str) -> str:
    """A callable's name as a Python identifier, for the classes and functions named after
    it (its input model, its Celery task's function, whose signature Celery writes as
    Python source): every non-word character an underscore, an underscore before a
    leading digit and after a keyword."""
    word = re.sub(r"\W", "_", name)
    if word[:1].isdigit():
        word = "_" + word
    return word + "_" if keyword.iskeyword(word) else word


@dataclass(frozen=True)
class CallableInfo:
    """A registered function with everything needed to validate, run and trace it."""

    name: str
    func: Callable[..., Any]
    isolation: Isolation
    time_limit: float | None
    cache: bool
    version: str
    input_model: type[pydantic.BaseModel]
    output_adapter: pydantic.TypeAdapter[Any]
    is_async: bool
    published: bool = False

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of the parameters, as one object."""
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        """JSON Schema of the return annotation."""
        return self.output_adapter.json_schema()

    def parameters(self) -> tuple[str, ...]:
        return tuple(self.input_model.model_fields)

    def validate_input(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Validate reference-resolved input; return the keyword arguments for the call.

        Values are the validated attributes, not a dump, so model instances passed in
        stay the same objects. Raises ``pydantic.ValidationError``.
        """
        model = self.input_model.model_validate(dict(data))
        return {field: getattr(model, field) for field in self.input_model.model_fields}


def _label(func: Any) -> str:
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


def _version(func: Callable[..., Any], user_version: str | None) -> str:
    """The function's own code, its name, and the version string the user bumps.

    The code hash cannot see helpers the function calls; `register(version=...)` is
    how a user says those changed (it is part of the memoization key).
    """
    try:
        body = inspect.getsource(func).encode()
    except (OSError, TypeError):  # no source file: a published or generated function
        body = marshal.dumps(func.__code__)
    digest = hashlib.sha256(body)
    digest.update(b"\0" + func.__qualname__.encode())
    if user_version is not None:
        digest.update(b"\0version\0" + user_version.encode())
    return digest.hexdigest()[:16]


def _check_options(where: str, name: object, isolation: object, time_limit: object) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise RegistrationError(f"{where}: name must be a non-empty string without whitespace")
    if name == "<lambda>":
        raise RegistrationError(f"{where}: a lambda needs an explicit name")
    if isolation not in _ISOLATIONS:
        raise RegistrationError(f"{where}: isolation must be 'fork' or 'none', not {isolation!r}")
    if time_limit is not None and not (
        isinstance(time_limit, int | float)
        and not isinstance(time_limit, bool)
        and math.isfinite(time_limit)
        and time_limit > 0
    ):
        raise RegistrationError(
            f"{where}: time_limit must be None or a positive number, not {time_limit!r}"
        )
    if time_limit is not None and isolation == "none":
        raise RegistrationError(
            f"{where}: time_limit needs isolation='fork' (an in-process call cannot be killed)"
        )


def _fields(where: str, func: Callable[..., Any]) -> tuple[dict[str, Any], Any]:
    """Field definitions for the input model, and the return annotation."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise RegistrationError(f"{where}: annotations cannot be resolved: {exc}") from exc
    fields: dict[str, Any] = {}
    unannotated: list[str] = []
    for param in inspect.signature(func).parameters.values():
        if param.kind in _REFUSED_KINDS:
            what = _REFUSED_KINDS[param.kind]
            raise RegistrationError(f"{where}: parameter {param.name!r} is {what}; not allowed")
        if param.name.startswith("_") or param.name == "model_config":
            raise RegistrationError(f"{where}: parameter name {param.name!r} is reserved")
        if param.name not in hints:
            unannotated.append(param.name)
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    if unannotated:
        names = ", ".join(repr(n) for n in unannotated)
        raise RegistrationError(f"{where}: parameter(s) {names} have no type annotation")
    if "return" not in hints:
        raise RegistrationError(f"{where}: the return has no annotation (write '-> None')")
    return fields, hints["return"]


def describe(
    func: Callable[..., Any],
    *,
    name: str,
    isolation: Isolation = "fork",
    time_limit: float | None = None,
    cache: bool = False,
    version: str | None = None,
    published: bool = False,
) -> CallableInfo:
    """Build the ``CallableInfo`` of ``func``; any problem is a ``RegistrationError``."""
    where = f"cannot register {_label(func)} as {name!r}"
    if not inspect.isfunction(func):
        raise RegistrationError(f"{where}: only plain functions can be registered")
    _check_options(where, name, isolation, time_limit)
    if version is not None and not isinstance(version, str):
        raise RegistrationError(f"{where}: version must be a string, not {version!r}")
    fields, returns = _fields(where, func)
    model_name = identifier(name) + "Input"
    try:
        with warnings.catch_warnings():
            # A parameter called e.g. "json" shadows a deprecated BaseModel method;
            # the field still works, so the warning is noise here.
            warnings.filterwarnings("ignore", "Field name .* shadows", UserWarning)
            input_model = pydantic.create_model(
                model_name,
                __config__=pydantic.ConfigDict(extra="forbid", protected_namespaces=()),
                **fields,
            )
            input_model.model_json_schema()
    except Exception as exc:
        raise RegistrationError(f"{where}: bad parameter types: {exc}") from exc
    try:
        output_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(returns)
        output_adapter.json_schema()
    except Exception as exc:
        raise RegistrationError(f"{where}: bad return annotation {returns!r}: {exc}") from exc
    return CallableInfo(
        name=name,
        func=func,
        isolation=isolation,
        time_limit=None if time_limit is None else float(time_limit),
        cache=bool(cache),
        version=_version(func, version),
        input_model=input_model,
        output_adapter=output_adapter,
        is_async=inspect.iscoroutinefunction(func),
        published=published,
    )


class CallableRegistry(Mapping[str, CallableInfo]):
    """Name → ``CallableInfo``; this is ``app.callables`` and ``app.register``'s store."""

    def __init__(
        self,
        on_add: Callable[[CallableInfo], None] | None = None,
        reserved: Mapping[str, str] | None = None,
    ) -> None:
        self._infos: dict[str, CallableInfo] = {}
        self._on_add = on_add  # e.g. the worker layer making a Celery task per callable
        self._reserved = dict(reserved or {})  # name → what it is reserved for

    def __getitem__(self, name: str) -> CallableInfo:
        try:
            return self._infos[name]
        except KeyError:
            known = ", ".join(sorted(self._infos)) or "(none)"
            raise UnknownCallable(f"no callable named {name!r}; registered: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def add(self, info: CallableInfo) -> CallableInfo:
        """Add ``info``; re-adding the same function is a no-op returning the existing info."""
        if info.name in self._reserved:
            raise RegistrationError(
                f"cannot register {_label(info.func)} as {info.name!r}: "
                f"that name is reserved for {self._reserved[info.name]}"
            )
        old = self._infos.get(info.name)
        if old is None:
            self._infos[info.name] = info
            if self._on_add is not None:
                self._on_add(info)
            return info
        if old.version == info.version and _label(old.func) == _label(info.func):
            return old
        raise RegistrationError(
            f"cannot register {_label(info.func)} as {info.name!r}: "
            f"that name is taken by {_label(old.func)}"
        )

    def publish(self, info: CallableInfo) -> None:
        """Add or update a published function; code-registered names cannot be shadowed."""
        old = self._infos.get(info.name)
        if old is not None and not old.published:
            raise RegistrationError(
                f"cannot publish {info.name!r}: that name is registered in code "
                f"by {_label(old.func)}"
            )
        self._infos[info.name] = info

    @overload
    def register(
        self,
        func: F,
        /,
        name: str | None = None,
        *,
        isolation: Isolation = "fork",
        time_limit: float | None = None,
        cache: bool = False,
        version: str | None = None,
    ) -> F: ...

    @overload
    def register(
        self,
        name: str,
        /,
        *,
        isolation: Isolation = "fork",
        time_limit: float | None = None,
        cache: bool = False,
        version: str | None = None,
    ) -> Callable[[F], F]: ...

    @overload
    def register(
        self,
        func: None = None,
        /,
        name: str | None = None,
        *,
        isolation: Isolation = "fork",
        time_limit: float | None = None,
        cache: bool = False,
        version: str | None = None,
    ) -> Callable[[F], F]: ...

    def register(
        self,
        func: F | str | None = None,
        /,
        name: str | None = None,
        *,
        isolation: Isolation = "fork",
        time_limit: float | None = None,
        cache: bool = False,
        version: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register a function: ``@register``, ``@register("name")`` or ``@register(name=...)``.

        ``cache=True`` memoizes a pure function; ``version`` is a string to bump when
        code it calls changes (its own code is versioned automatically). Returns the
        function itself, unchanged, so it stays callable and picklable.
        """
        if isinstance(func, str):
            if name is not None:
                raise TypeError("register() got the name twice")
            func, name = None, func

        def decorate(f: F) -> F:
            given = getattr(f, "__name__", "") if name is None else name
            info = describe(
                f,
                name=given,
                isolation=isolation,
                time_limit=time_limit,
                cache=cache,
                version=version,
            )
            self.add(info)
            return f

        return decorate if func is None else decorate(func)
