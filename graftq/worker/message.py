"""What a graftq job message is: its task name and how its input travels.

Every callable becomes the task ``graftq.<name>``. Its message is the same input
JSON that `submit` takes, as the first positional argument (or, for clients such
as Flower's send-task form, as the keyword arguments); a published function's job
adds ``_graftq``: its name and version. No Celery here: producers import it.
"""

from __future__ import annotations

from typing import Any

from graftq.errors import InvalidInput

TASK_PREFIX = "graftq."
PUBLISHED_TASK = TASK_PREFIX + "published"
META = "_graftq"
INPUT_KEYWORD = "input_data"  # parameter names cannot start with "_", so this never clashes


# Callable names whose task graftq uses itself (name → what for): registering one is refused.
RESERVED = {"published": f"graftq's task of published functions ({PUBLISHED_TASK})"}


def task_name(callable_name: str) -> str:
    return TASK_PREFIX + callable_name


def through_json(value: Any) -> Any:
    """`value` as it arrives through kombu's JSON (Celery's ``json`` serializer, the
    broker's and the result backend's), where a tuple arrives as a list and an int dict
    key as its digits."""
    from kombu.utils import json  # here: producers that never ask stay free of kombu

    return json.loads(json.dumps(value))  # type: ignore[no-untyped-call]


def delivered(input_data: dict[str, Any]) -> dict[str, Any]:
    """The input as a worker gets it: through the broker's JSON (`through_json`)."""
    arrived: dict[str, Any] = through_json(input_data)
    return arrived


def input_of(
    args: tuple[Any, ...], kwargs: dict[str, Any], parameters: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The job's input: the first positional argument, else the keyword arguments.

    ``kwargs={"input_data": {...}}`` (the name `submit` gives it) is unwrapped
    too, unless the callable has a parameter of that name.
    """
    kwargs = {key: value for key, value in kwargs.items() if key != META}
    wrapped = kwargs.get(INPUT_KEYWORD)
    if set(kwargs) == {INPUT_KEYWORD} and isinstance(wrapped, dict) and not args:
        if INPUT_KEYWORD not in parameters:
            return wrapped
    if args:
        if len(args) != 1 or not isinstance(args[0], dict) or kwargs:
            raise InvalidInput(
                "a graftq job takes one positional argument (the input dict) "
                f"or keyword arguments, got args={args!r:.200} kwargs={kwargs!r:.200}"
            )
        return args[0]
    return kwargs
