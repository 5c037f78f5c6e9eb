"""Unit tests for graftq.tasks.callables: registration, schemas, validation, versions."""

from __future__ import annotations

import pickle
from typing import Any

import pydantic
import pytest

from graftq.errors import RegistrationError, UnknownCallable
from graftq.tasks.callables import CallableRegistry, describe

# --- module-level functions: annotations under __future__ resolve against these globals ---


def add(a: int, b: int = 2) -> int:
    return a + b


def greet(person: Person) -> list[str]:  # forward reference: Person is defined below
    return [person.name]


def rename(person: Person, name: str) -> Person:
    person.name = name
    return person


async def fetch(n: int) -> str:
    return str(n)


def nothing() -> None:
    return None


def shadowing(json: int, copy: str = "c") -> int:
    return json


def unresolvable(x: Missing) -> int:  # type: ignore[name-defined]  # noqa: F821
    return 0


class Person(pydantic.BaseModel):
    name: str
    age: int = 0


class Opaque:
    """Not something pydantic can validate."""


def takes_opaque(x: Opaque) -> int:
    return 0


def returns_opaque(x: int) -> Opaque:
    return Opaque()


def _make_v1() -> Any:
    def same(x: int) -> int:
        return x + 1

    return same


def _make_v2() -> Any:
    def same(x: int) -> int:
        return x + 2

    return same


@pytest.fixture
def reg() -> CallableRegistry:
    return CallableRegistry()


# --- register forms ---


def test_bare_decorator_uses_function_name_and_returns_function(reg: CallableRegistry) -> None:
    result = reg.register(add)
    assert result is add
    info = reg["add"]
    assert info.name == "add" and info.func is add
    assert (info.isolation, info.time_limit, info.cache) == ("fork", None, False)
    assert info.published is False
    assert info.is_async is False
    assert add(1) == 3  # still directly callable
    assert pickle.loads(pickle.dumps(result)) is add  # picklable by reference


def test_decorator_with_positional_name(reg: CallableRegistry) -> None:
    decorator = reg.register("adder")
    assert decorator(add) is add
    assert reg["adder"].func is add
    assert "add" not in reg


def test_decorator_with_keywords(reg: CallableRegistry) -> None:
    returned = reg.register(name="plus", isolation="fork", time_limit=5, cache=True)(add)
    assert returned is add
    info = reg["plus"]
    assert (info.isolation, info.time_limit, info.cache) == ("fork", 5.0, True)


def test_time_limit_needs_a_fork(reg: CallableRegistry) -> None:
    with pytest.raises(RegistrationError, match="time_limit needs isolation='fork'"):
        reg.register(isolation="none", time_limit=5)(add)


def test_decorator_with_options_only_defaults_name(reg: CallableRegistry) -> None:
    reg.register(isolation="none")(add)
    assert reg["add"].isolation == "none"


def test_direct_call_with_name(reg: CallableRegistry) -> None:
    assert reg.register(add, "direct") is add
    assert reg["direct"].func is add


def test_decorator_syntax_on_local_function(reg: CallableRegistry) -> None:
    @reg.register
    def local(x: int) -> int:
        return x

    @reg.register("other_local")
    def local2(x: int) -> int:
        return x

    assert local(4) == 4 and local2(5) == 5
    assert set(reg) == {"local", "other_local"}
    assert len(reg) == 2


def test_name_given_twice_is_type_error(reg: CallableRegistry) -> None:
    with pytest.raises(TypeError):
        reg.register("a", name="b")  # type: ignore[call-overload]


# --- registration errors ---


def test_missing_parameter_annotation_names_parameter(reg: CallableRegistry) -> None:
    def f(a: int, b, c) -> int:
        return 0

    with pytest.raises(RegistrationError, match=r"'b', 'c'") as err:
        reg.register(f)
    assert "f" in str(err.value)
    assert "'a'" not in str(err.value)


def test_missing_return_annotation(reg: CallableRegistry) -> None:
    def no_return(a: int):
        return a

    with pytest.raises(RegistrationError, match=r"no_return.*return"):
        reg.register(no_return)
    assert "no_return" not in reg


def test_explicit_none_return_is_allowed(reg: CallableRegistry) -> None:
    reg.register(nothing)
    assert reg["nothing"].output_schema() == {"type": "null"}


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def f(*args: int) -> int: ...", "args"),
        ("def f(**kwargs: int) -> int: ...", "kwargs"),
        ("def f(a: int, /) -> int: ...", "positional-only"),
        ("def f(_hidden: int) -> int: ...", "_hidden"),
        ("def f(model_config: int) -> int: ...", "model_config"),
    ],
)
def test_refused_parameter_kinds(reg: CallableRegistry, source: str, fragment: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(RegistrationError, match=fragment):
        reg.register(namespace["f"])


def test_duplicate_name_with_different_function(reg: CallableRegistry) -> None:
    reg.register("op")(add)
    with pytest.raises(RegistrationError) as err:
        reg.register("op")(shadowing)
    message = str(err.value)
    assert "add" in message and "shadowing" in message
    assert reg["op"].func is add


def test_same_function_twice_is_a_noop(reg: CallableRegistry) -> None:
    reg.register(add)
    first = reg["add"]
    assert reg.register(add) is add
    assert reg["add"] is first
    assert reg.add(describe(add, name="add")) is first
    assert len(reg) == 1


def test_unresolvable_forward_reference(reg: CallableRegistry) -> None:
    with pytest.raises(RegistrationError, match=r"unresolvable.*Missing"):
        reg.register(unresolvable)


def test_type_pydantic_cannot_handle(reg: CallableRegistry) -> None:
    with pytest.raises(RegistrationError, match="takes_opaque"):
        reg.register(takes_opaque)
    with pytest.raises(RegistrationError, match="returns_opaque"):
        reg.register(returns_opaque)


def test_lambda_needs_explicit_name(reg: CallableRegistry) -> None:
    square = lambda x: x * x  # noqa: E731
    square.__annotations__ = {"x": int, "return": int}
    with pytest.raises(RegistrationError, match="lambda"):
        reg.register(square)
    assert reg.register("square")(square) is square
    assert reg["square"].validate_input({"x": "3"}) == {"x": 3}


def test_non_function_refused(reg: CallableRegistry) -> None:
    with pytest.raises(RegistrationError, match="plain functions"):
        reg.register(Person)
    with pytest.raises(RegistrationError):
        reg.register("length")(len)


@pytest.mark.parametrize(
    "options",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "tab\there"},
        {"isolation": "thread"},
        {"time_limit": 0},
        {"time_limit": -1.5},
        {"time_limit": "10"},
        {"time_limit": True},
        {"time_limit": float("inf")},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"name": "ok", **options}
    with pytest.raises(RegistrationError):
        describe(add, **kwargs)


# --- info contents ---


def test_async_detected(reg: CallableRegistry) -> None:
    reg.register(fetch)
    assert reg["fetch"].is_async is True
    assert reg["fetch"].output_schema() == {"type": "string"}


def test_a_published_function_replaces_an_older_one_but_never_a_code_registered_one(
    reg: CallableRegistry,
) -> None:
    reg.register(add)
    with pytest.raises(RegistrationError, match="registered in code"):
        reg.publish(describe(shadowing, name="add", published=True))
    assert reg["add"].func is add

    old, new = (
        describe(_make_v1(), name="same", published=True),
        describe(_make_v2(), name="same", published=True),
    )
    reg.publish(old)
    reg.publish(new)  # a new content version under the same name
    assert reg["same"] is new and reg["same"].version != old.version


def test_parameters_in_order(reg: CallableRegistry) -> None:
    reg.register(rename)
    assert reg["rename"].parameters() == ("person", "name")


def test_input_schema(reg: CallableRegistry) -> None:
    reg.register(add)
    schema = reg["add"].input_schema()
    assert schema["type"] == "object"
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"] == {"default": 2, "title": "B", "type": "integer"}
    assert schema["required"] == ["a"]
    assert schema["additionalProperties"] is False


def test_input_schema_with_model(reg: CallableRegistry) -> None:
    reg.register(rename)
    schema = reg["rename"].input_schema()
    assert schema["required"] == ["person", "name"]
    assert schema["properties"]["person"] == {"$ref": "#/$defs/Person"}
    assert set(schema["$defs"]["Person"]["properties"]) == {"name", "age"}


def test_input_model_name_is_sanitized() -> None:
    info = describe(add, name="math.add-2")
    assert info.input_schema()["title"] == "math_add_2Input"


def test_output_schemas(reg: CallableRegistry) -> None:
    reg.register(add)
    reg.register(greet)
    reg.register(rename)
    assert reg["add"].output_schema() == {"type": "integer"}
    assert reg["greet"].output_schema() == {"items": {"type": "string"}, "type": "array"}
    assert reg["rename"].output_schema() == Person.model_json_schema()


def test_forward_references_resolve(reg: CallableRegistry) -> None:
    reg.register(greet)
    info = reg["greet"]
    person = Person(name="ada")
    kwargs = info.validate_input({"person": {"name": "bob", "age": "3"}})
    assert kwargs["person"] == Person(name="bob", age=3)
    assert info.func(**info.validate_input({"person": person})) == ["ada"]


# --- validate_input ---


def test_validate_input_coerces_and_fills_defaults(reg: CallableRegistry) -> None:
    reg.register(add)
    assert reg["add"].validate_input({"a": "5"}) == {"a": 5, "b": 2}
    assert reg["add"].validate_input({"a": 1, "b": 7}) == {"a": 1, "b": 7}


def test_validate_input_rejects_unknown_key(reg: CallableRegistry) -> None:
    reg.register(add)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        reg["add"].validate_input({"a": 1, "zzz": 2})


def test_validate_input_rejects_missing_and_wrong_type(reg: CallableRegistry) -> None:
    reg.register(add)
    with pytest.raises(pydantic.ValidationError):
        reg["add"].validate_input({})
    with pytest.raises(pydantic.ValidationError):
        reg["add"].validate_input({"a": "five"})
    with pytest.raises(pydantic.ValidationError):
        reg["add"].validate_input({"a": [1]})


def test_validate_input_keeps_model_instances(reg: CallableRegistry) -> None:
    reg.register(rename)
    person = Person(name="ada", age=36)
    kwargs = reg["rename"].validate_input({"person": person, "name": "eve"})
    assert kwargs["person"] is person
    assert isinstance(kwargs["person"], Person)


def test_parameters_shadowing_basemodel_attributes(reg: CallableRegistry) -> None:
    reg.register(shadowing)  # would warn (an error under pytest config) if not handled
    assert reg["shadowing"].validate_input({"json": "4"}) == {"json": 4, "copy": "c"}


# --- lookup ---


def test_unknown_name_lists_registered(reg: CallableRegistry) -> None:
    reg.register(add)
    reg.register(greet)
    with pytest.raises(UnknownCallable) as err:
        reg["nope"]
    assert str(err.value) == "no callable named 'nope'; registered: add, greet"
    assert isinstance(err.value, KeyError)
    assert reg.get("nope") is None
    assert "nope" not in reg


def test_unknown_name_in_empty_registry(reg: CallableRegistry) -> None:
    with pytest.raises(KeyError, match="no callable named 'x'"):
        reg["x"]


# --- version ---


def test_version_is_stable_for_the_same_function() -> None:
    first = describe(add, name="add").version
    assert first == describe(add, name="other").version
    assert len(first) == 16
    int(first, 16)


def test_version_changes_with_body(reg: CallableRegistry) -> None:
    v1, v2 = _make_v1(), _make_v2()
    assert v1.__name__ == v2.__name__ == "same"
    info1, info2 = describe(v1, name="same"), describe(v2, name="same")
    assert info1.version != info2.version
    reg.add(info1)
    with pytest.raises(RegistrationError):
        reg.add(info2)


def test_version_without_source() -> None:
    namespace: dict[str, Any] = {}
    exec("def gen(x: int) -> int:\n    return x\n", namespace)
    version = describe(namespace["gen"], name="gen").version
    assert len(version) == 16
    assert version == describe(namespace["gen"], name="gen").version


def test_a_name_whose_task_graftq_uses_itself_is_refused() -> None:
    from graftq import App

    app = App("reserved")

    def published(x: int) -> int:
        return x

    def len_of(text: str) -> int:
        return len(text)

    # "graftq.published" is the task that runs published functions: a callable of that
    # name would take it over, and its jobs would fail as malformed published jobs
    with pytest.raises(RegistrationError, match=r"'published'.*reserved.*graftq\.published"):
        app.register(published)
    with pytest.raises(RegistrationError, match="reserved"):
        app.register(name="published")(len_of)
    assert "published" not in app.callables
    app.register("published_report")(published)  # a name that merely starts with it is free
