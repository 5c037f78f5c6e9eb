"""`import graftq` (and an App's module) loads no Celery, kombu or redis-py.

A worker's fork server imports the App's module afresh, and every isolated call
forks from it: the less it holds, the cheaper each fork (issue 9). Producers
that only define entities and submit pay less too.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("celery", "kombu", "redis", "billiard", "flower")


def loaded_after(statement: str) -> list[str]:
    probe = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_import_graftq_is_light() -> None:
    assert loaded_after("import graftq") == []


def test_an_apps_module_with_entities_and_callables_is_light() -> None:
    assert loaded_after("import tests.apps.school") == []


def test_the_celery_app_is_made_on_first_use() -> None:
    assert {"celery", "kombu"} <= set(loaded_after("import tests.apps.school as s; s.app.celery"))
