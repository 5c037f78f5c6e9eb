"""An App whose module makes every child of the process that imports it die at once,
while ``DIE`` is set in its environment: a zygote started with it set has spares that
never live to take a call (`tests/integration/tasks/test_zygote.py`); the test process,
which imports it unset, forks as usual.
"""

from __future__ import annotations

import os

from graftq import App

DIE = "GRAFTQ_TEST_STILLBORN"

app = App("stillborn")

if os.environ.get(DIE):
    os.register_at_fork(after_in_child=lambda: os._exit(7))


@app.register
def one() -> int:
    return 1
