"""A spare child's rehearsal (`rehearsal`): the request and result path, run for real.

A spare runs it before its request arrives and ignores its outcome (it is there only to
make the page copies a call would make), so these tests are what notices it breaking.
"""

from __future__ import annotations

import subprocess
import sys

from graftq.tasks import encoding
from graftq.tasks.isolation import process, rehearsal, zygote


def test_the_rehearsal_unpickles_the_request_and_encodes_its_arguments() -> None:
    arguments = rehearsal.arguments()
    frame = bytearray(rehearsal.rehearse(zygote._request("", "", arguments)))
    assert process.complete(frame)
    kind, _ = process.HEADER.unpack_from(frame)
    assert kind == process.RESULT, frame
    assert encoding.loads(bytes(frame[process.HEADER.size :]), pickles=True) == arguments


def test_rehearsing_leaves_the_processes_of_whoever_rehearses_alone() -> None:
    # a spare has none; any other process may (a test run's Redis, a worker's pool)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rehearsal.rehearse(zygote._request("", "", rehearsal.arguments()))
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
