"""`graftq flower` for the tests: start it with basic auth, call its HTTP API."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from tests.processes import serving

USER, PASSWORD = "ops", "s3cret-flower"
CREDENTIALS = f"{USER}:{PASSWORD}"


def api(url: str, credentials: str | None = None, body: Any = None) -> tuple[int, str]:
    """GET `url` (POST `body` as JSON when given): the status and the text of the answer."""
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ""


@contextlib.contextmanager
def flower(app_path: str, env: dict[str, str], port: int) -> Iterator[str]:
    """`graftq flower` with basic auth on `port`; yields its base URL, always stops it."""
    args = [sys.executable, "-m", "graftq.cli", "flower", "--app", app_path,
            "--basic-auth", CREDENTIALS, "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        with contextlib.suppress(OSError):
            return api(url + "/")[0] == 401
        return False

    with serving(args, env, "flower", answers):
        yield url
