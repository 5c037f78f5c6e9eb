"""Kept for tests written against this module: the helpers live in `tests.redis_state`
and `tests.entities` now."""

from tests.entities import IDENTITY, strip
from tests.redis_state import snapshot, version_keys

__all__ = ["IDENTITY", "snapshot", "strip", "version_keys"]
