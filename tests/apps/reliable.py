"""A small app for the fault tests: no time limits, so any visibility timeout is allowed.

`graftq worker --app tests.apps.reliable:app`. ``GRAFTQ_TEST_INCREMENT_PAUSE`` makes
`increment` sleep first, so a test can kill things while a job runs.
"""

from __future__ import annotations

import os
import time

from graftq import App
from tests.apps.school import Counter


def make_app(name: str = "reliable") -> App:
    app = App(name)

    @app.register
    def increment(counter: Counter) -> Counter:
        pause = float(os.environ.get("GRAFTQ_TEST_INCREMENT_PAUSE", "0"))
        if pause:
            time.sleep(pause)
        counter.value += 1
        return counter

    return app


app = make_app()
