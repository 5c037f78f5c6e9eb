"""`graftq flower`: refused without authentication, really served with it."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

from graftq.devserver import free_port
from tests.integration.cli.conftest import CLI, SCHOOL, assert_no_traceback, clean_env, output
from tests.processes import stop_session, wait_until


def test_flower_without_auth_is_refused(cli: CLI) -> None:
    proc = cli("flower", "--app", SCHOOL, "--port", str(free_port()))
    assert proc.returncode != 0
    assert proc.returncode == 2
    assert "authentication" in proc.stderr
    assert "--basic-auth" in proc.stderr
    assert_no_traceback(proc)


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10", "::"])
def test_no_auth_on_a_non_loopback_address_is_refused(cli: CLI, address: str) -> None:
    proc = cli("flower", "--app", SCHOOL, "--no-auth", "--address", address)
    assert proc.returncode == 2, output(proc)
    assert f"--no-auth is refused on {address}" in proc.stderr


def test_malformed_basic_auth_from_the_environment_is_refused(cli: CLI) -> None:
    proc = cli("flower", "--app", SCHOOL, GRAFTQ_FLOWER_BASIC_AUTH="nopassword")
    assert proc.returncode == 2, output(proc)
    assert "--basic-auth must be user:password" in proc.stderr


def _get(url: str, credentials: str | None = None) -> int:
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_flower_with_basic_auth_serves_behind_authentication(
    redis_url: str, broker_url: str
) -> None:
    port = free_port()
    env = clean_env(
        GRAFTQ_REDIS_URL=redis_url,
        GRAFTQ_BROKER_URL=broker_url,
        GRAFTQ_RESULT_BACKEND=broker_url,
    )
    url = f"http://127.0.0.1:{port}/"
    args = [sys.executable, "-m", "graftq.cli", "flower", "--app", SCHOOL,
            "--basic-auth", "user:pass", "--port", str(port)]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            answers: list[int] = []

            def answered() -> bool:
                assert proc.poll() is None, "flower exited early"
                with contextlib.suppress(OSError):
                    answers.append(_get(url))
                return bool(answers)

            wait_until(answered, 60, "flower answers")
            assert answers == [401]
            assert _get(url, "user:pass") == 200
            assert _get(url, "user:wrong") == 401
            assert _get(url, "other:pass") == 401
        finally:
            stop_session(proc)
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:])
