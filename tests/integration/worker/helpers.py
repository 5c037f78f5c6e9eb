"""Small waits and /proc readers shared by the worker tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import UUID

from graftq import Entity


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def read_pid(path: Path, timeout: float = 30.0) -> int:
    """The pid a job wrote into `path` (waits until the file holds one)."""
    found: list[int] = []

    def written() -> bool:
        try:
            found.append(int(path.read_text()))
        except (FileNotFoundError, ValueError):
            return False
        return True

    wait_until(written, timeout, f"a pid in {path}")
    return found[-1]


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def chain_from_head(versions: Sequence[Entity], head: Entity) -> list[Entity]:
    """The versions reachable from `head` by parent_id, root first."""
    by_id: dict[UUID, Entity] = {version.ecs_id: version for version in versions}
    chain = [head]
    while chain[-1].parent_id is not None:
        chain.append(by_id[chain[-1].parent_id])
    return chain[::-1]
