"""An App whose module fails to import while ``FAIL`` is set in the environment: an
import that fails only sometimes. The test process imports it unset; a zygote started
with it set cannot start (`tests/integration/tasks/test_zygote.py`).
"""

from __future__ import annotations

import os

from graftq import App

FAIL = "GRAFTQ_TEST_UNIMPORTABLE"

if os.environ.get(FAIL):
    raise ImportError(f"{__name__} refuses to be imported while {FAIL} is set")

app = App("unimportable")


@app.register
def one() -> int:
    return 1
