"""What `import graftq` offers (SPEC sections 1, 5 and 8), and the one error tree."""

from __future__ import annotations

import builtins
import re

import pydantic

import graftq
from graftq import errors

SPEC_ERRORS = {
    "EntityNotFound", "InvalidReference", "InvalidEntity", "RegistrationError",
    "ReturnTypeError", "VersionConflict", "IsolationError", "TimeLimitExceeded", "JobTimeout",
    "InvalidInput",
}  # fmt: skip
SPEC_NAMES = {"App", "Entity", "EntityRegistry", "Execution", "Job", "GraftError", *SPEC_ERRORS}
BRANCH = re.compile(r"^(?P<rails>[│ ]*)[├└]── (?P<name>\w+)\s*(?:\(also (?P<also>\w+)\))?")


def error_classes() -> dict[str, type[BaseException]]:
    """Every GraftError class that graftq.errors defines."""
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.GraftError)
    }


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """The tree in graftq.errors' docstring: name → (parent, builtin it also is)."""
    tree: dict[str, tuple[str | None, str | None]] = {"GraftError": (None, None)}
    path = ["GraftError"]
    for line in (errors.__doc__ or "").splitlines():
        found = BRANCH.match(line.strip("\n")[4:])  # the tree is indented by four spaces
        if found is None:
            continue
        depth = len(found["rails"]) // 4 + 1
        del path[depth:]
        tree[found["name"]] = (path[-1], found["also"])
        path.append(found["name"])
    return tree


def test_every_name_in_all_is_importable_from_the_package() -> None:
    assert len(set(graftq.__all__)) == len(graftq.__all__)
    namespace: dict[str, object] = {}
    exec("from graftq import *", namespace)
    assert set(graftq.__all__) <= set(namespace)


def test_the_names_the_spec_promises_are_exported() -> None:
    assert set(graftq.__all__) >= SPEC_NAMES, SPEC_NAMES - set(graftq.__all__)


def test_every_error_class_is_exported_from_the_package() -> None:
    for name, cls in error_classes().items():
        assert name in graftq.__all__ and getattr(graftq, name) is cls, name


def test_the_error_tree_is_the_one_drawn_in_the_errors_docstring() -> None:
    tree = drawn_tree()
    classes = error_classes()
    assert set(tree) == set(classes), set(tree) ^ set(classes)
    for name, (parent, also) in tree.items():
        expected = [classes[parent]] if parent else [Exception]
        if also:  # a builtin exception, or pydantic's
            expected.append(getattr(builtins, also, None) or getattr(pydantic, also))
        assert list(classes[name].__bases__) == expected, name


def test_errors_are_the_builtin_exceptions_the_spec_names() -> None:
    assert SPEC_ERRORS <= set(error_classes())
    for name in ("EntityNotFound", "InvalidReference", "InvalidInput"):
        assert issubclass(getattr(graftq, name), ValueError), name
    assert issubclass(graftq.JobTimeout, TimeoutError)
    assert not issubclass(graftq.VersionConflict, ValueError)


def test_an_error_raised_without_a_message_says_what_its_docstring_says() -> None:
    for name, cls in error_classes().items():
        doc = (cls.__doc__ or "").strip()
        assert doc, f"{name} has no docstring"
        assert str(cls()) == doc, name


def test_invalid_input_says_its_message_also_when_celery_rebuilds_it() -> None:
    details = [{"type": "int_parsing", "loc": ["age"], "msg": "not an int"}]
    raised = graftq.InvalidInput("age: not an int", details, "birthdayInput")
    rebuilt = graftq.InvalidInput(*raised.args)  # how Celery brings a job's error back

    for error in (raised, rebuilt):
        assert str(error) == "age: not an int"
        assert (error.errors, error.title) == (details, "birthdayInput")
