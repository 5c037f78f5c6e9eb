"""Count client→server round trips per process, for the throughput benchmark's counting pass.

`install(directory)` wraps redis-py's `send_packed_command` (one call per command
or per pipeline batch, i.e. one round trip) and writes this process's running total
to ``directory/<pid>`` after every send. A forked child starts again from zero.
Only the counting pass uses it; the timed runs never install it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "BENCH_RTT_DIR"
_state: dict[str, int] = {"pid": -1, "count": 0}


def count() -> int:
    """Round trips this process made since `install` (0 in a fresh fork)."""
    return _state["count"] if _state["pid"] == os.getpid() else 0


def install(directory: str | None) -> Callable[[], None]:
    """Start counting; returns a function that stops it."""
    # Imported here: the bench app is also imported by each pool process's zygote,
    # which a redis-py import would make heavier than a user's app module.
    from redis.connection import AbstractConnection

    original: Callable[..., None] = AbstractConnection.send_packed_command
    _state.update(pid=os.getpid(), count=0)

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        pid = os.getpid()
        if _state["pid"] != pid:
            _state.update(pid=pid, count=0)
        _state["count"] += 1
        if directory:
            Path(directory, str(pid)).write_text(str(_state["count"]))
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]

    def uninstall() -> None:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]

    return uninstall


def install_from_env() -> None:
    """Used by the worker apps: count only when the benchmark asks for it."""
    directory = os.environ.get(ENV)
    if directory:
        install(directory)
