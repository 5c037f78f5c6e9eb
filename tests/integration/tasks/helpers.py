"""Kept for tests written against this module: the helpers live in `tests.redis_state`
and `tests.entities` now."""

from tests.entities import put_student
from tests.redis_state import changed_keys, exec_keys, snapshot, version_keys

__all__ = ["changed_keys", "exec_keys", "put_student", "snapshot", "version_keys"]
