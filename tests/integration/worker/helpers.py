"""Kept for tests written against this module: the helpers live in `tests.processes`
and `tests.entities` now."""

from tests.entities import chain_from_head
from tests.processes import alive, children_of, parent_of, read_pid, wait_until

__all__ = ["alive", "chain_from_head", "children_of", "parent_of", "read_pid", "wait_until"]
