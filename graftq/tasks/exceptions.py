"""A callable's exception that crossed a process boundary, made again from its type's name.

An isolated child (`graftq.tasks.isolation`) and a Celery worker send back what a
function raised as its type's module and name with its message or arguments whenever
pickle cannot carry the exception itself; `rebuilt` makes one of that type here.
graftq's own errors are `graftq.errors`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any


def rebuilt(
    module: str, qualname: str, args: Sequence[Any], *, load: bool = False
) -> BaseException | None:
    """An exception of the type `module.qualname` with `args`; None if there is none here.

    A type whose ``__init__`` refuses `args` alone (it wants more than its message)
    is made without calling ``__init__``: ``BaseException.__new__`` sets `args`, so the
    type and the message are right, but attributes only ``__init__`` sets are absent.

    `load` imports `module` if this process has not: only for a name from a trusted
    source (a child forked from this process). A name read from a result backend is
    looked up among loaded modules only, as Celery does, so that stored data cannot
    make this process import anything.
    """
    try:
        found: Any = importlib.import_module(module) if load else sys.modules[module]
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        return None
    try:
        return found(*args)
    except Exception:
        pass
    try:
        exc = found.__new__(found, *args)
        str(exc)  # its __str__ may need what __init__ would have set
    except Exception:
        return None
    return exc if isinstance(exc, found) else None
