"""What each worker pool process keeps for its jobs: the fork server of its App.

`graftq worker --app MODULE:ATTR` names the App in ``GRAFTQ_APP``; every pool process
then starts a zygote on that path (`graftq.tasks.isolation.zygote`), so isolated bodies fork
from a lean process instead of the pool process. ``GRAFTQ_ZYGOTE=false`` (the App's
`zygote` setting) turns it off: bodies then fork from the pool process, as
`app.execute` does; so does a worker started otherwise (e.g. ``celery worker``), and a
pool process whose zygote cannot run the worker's code (`ForkServer.remember_code`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from graftq.errors import IsolationError
from graftq.tasks.isolation import Zygote
from graftq.tasks.isolation.zygote import Stamps, loaded_code

APP_VARIABLE = "GRAFTQ_APP"

log = logging.getLogger(__name__)


class ForkServer:
    """The zygote of one App in this pool process: started lazily, restarted if it died."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._zygote: Zygote | None = None
        self._reaper = False
        self._loaded: Stamps | None = None  # what the worker's main process imported

    def remember_code(self) -> None:
        """Note the code this worker loaded: in its main process, before the pool forks.

        A zygote imports the App's module from disk again, maybe after it was edited;
        one whose code is not this is refused, and the pool process forks bodies itself
        (as with ``GRAFTQ_ZYGOTE=false``): a worker runs the code it started with, and
        records that code's version, until it is restarted — as a Celery worker does.
        """
        self._loaded = loaded_code()

    def start(self, *, pool_process: bool = False) -> None:
        """Start the zygote now (at pool process start), if this worker runs our App.

        `pool_process`: this is a worker's pool process, whose only child is its zygote,
        so it may adopt and kill what a killed zygote's call left (`Zygote`'s `reaper`);
        a process with children of its own to keep must not.
        """
        self.stop()
        self._reaper = self._reaper or pool_process
        path = _app_path(self._app)
        if path is not None:
            self._zygote = Zygote(path, reaper=self._reaper, loaded=self._loaded)

    def get(self) -> Zygote | None:
        """The running zygote, a new one if it died, or None: no zygote for this App, or
        none that can run this worker's code (it did not start, or imported other code)."""
        if self._zygote is not None and not self._zygote.alive():
            log.warning("zygote %s for %s died; starting another", self._zygote.pid, self._app)
            self.start()
        if self._zygote is not None:
            try:
                self._zygote.check()  # waits for a new zygote; at once for a ready one
            except IsolationError as exc:
                log.warning("%s; this pool process forks isolated bodies itself instead", exc)
                self.stop()
        return self._zygote

    def stop(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None


def _app_path(app: Any) -> str | None:
    """GRAFTQ_APP, if it names exactly `app` (already imported by the worker)."""
    path = os.environ.get(APP_VARIABLE)
    if not path or not app.settings.zygote:
        return None
    module_name, _, attr = path.partition(":")
    module = sys.modules.get(module_name)
    return path if module is not None and getattr(module, attr, None) is app else None
