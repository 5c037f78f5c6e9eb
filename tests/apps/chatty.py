"""An App whose module, while ``CHATTER`` is set in its environment, starts a thread at
import that logs and prints without pause (a metrics reporter, say): a zygote started
with it set has a thread of its own that is not any call's. The test process imports
it unset.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from graftq import App

CHATTER = "GRAFTQ_TEST_CHATTER"
TICK = "chatty tick"

app = App("chatty")


def _chatter() -> None:
    log = logging.getLogger("chatty.reporter")
    while True:
        log.warning(TICK)
        print(TICK)
        time.sleep(0.0005)


if os.environ.get(CHATTER):
    threading.Thread(target=_chatter, daemon=True).start()


@app.register(time_limit=20)
def talk(n: int) -> int:
    logging.getLogger("chatty").warning("talk %s", n)
    print("talk", n)
    return n
