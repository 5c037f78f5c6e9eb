"""The re-run backoff of `graftq.tasks.runner` (pure logic)."""

from __future__ import annotations

from graftq.tasks.runner import RERUN_BACKOFF_CAP, _backoff


def test_the_first_rerun_is_at_once_and_every_later_wait_is_capped() -> None:
    assert _backoff(1) == 0.0
    # a long contention: 2**attempt once overflowed a float past attempt 1023
    waits = [_backoff(attempt) for attempt in (2, 10, 1023, 1024, 100_000)]
    assert all(0.0 <= wait <= RERUN_BACKOFF_CAP for wait in waits)
