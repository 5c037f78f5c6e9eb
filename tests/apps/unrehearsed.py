"""An App whose module breaks graftq's rehearsal (`isolation.rehearsal`) in the process
that imports it while ``BREAK`` is set in its environment: a zygote started with it set
has spares whose rehearsal raises (`tests/integration/tasks/test_zygote.py`); the test
process, which imports it unset, keeps the real one.
"""

from __future__ import annotations

import os

from graftq import App
from graftq.tasks.isolation import rehearsal

BREAK = "GRAFTQ_TEST_BREAK_REHEARSAL"

app = App("unrehearsed")


def _broken(raw: bytes) -> bytes:
    raise RuntimeError("this rehearsal is broken on purpose")


if os.environ.get(BREAK):
    rehearsal.rehearse = _broken


@app.register
def double(x: int) -> int:
    return 2 * x
