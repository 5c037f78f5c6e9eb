"""An empty user name or password counts as no authentication (issue 10 item 5, SPEC 7)."""

from __future__ import annotations

import pytest

from graftq.devserver import free_port
from tests.integration.cli.conftest import SCHOOL, assert_no_traceback, clean_env, output, run_cli


@pytest.mark.parametrize("credentials", [":", "admin:", ":secret", "admin:secret,:", "a:b,c:"])
@pytest.mark.parametrize("source", ["option", "environment"])
def test_empty_user_or_password_is_refused(redis_url: str, credentials: str, source: str) -> None:
    args = ["flower", "--app", SCHOOL, "--address", "0.0.0.0", "--port", str(free_port())]
    env = clean_env(GRAFTQ_REDIS_URL=redis_url)
    if source == "option":
        args += ["--basic-auth", credentials]
    else:
        env["GRAFTQ_FLOWER_BASIC_AUTH"] = credentials

    proc = run_cli(*args, env=env, timeout=20)  # Flower that started would time out here

    assert proc.returncode == 2, output(proc)
    assert "empty user name or password" in proc.stderr
    assert_no_traceback(proc)


@pytest.mark.parametrize("credentials", [" : ", "admin: ", "\t:secret"])
def test_a_blank_user_or_password_counts_as_empty(redis_url: str, credentials: str) -> None:
    args = ["flower", "--app", SCHOOL, "--port", str(free_port()), "--basic-auth", credentials]
    proc = run_cli(*args, env=clean_env(GRAFTQ_REDIS_URL=redis_url), timeout=20)

    assert proc.returncode == 2, output(proc)
    assert "empty user name or password" in proc.stderr


@pytest.mark.parametrize("credentials", ["ädmin:secret", "admin:sëcret", "ops:pass,root:пароль"])
def test_credentials_flower_cannot_check_are_refused(redis_url: str, credentials: str) -> None:
    """Flower compares credentials with `hmac.compare_digest` on str, which raises for
    non-ASCII text: every request, the right credentials too, would be a 500."""
    args = ["flower", "--app", SCHOOL, "--port", str(free_port()), "--basic-auth", credentials]
    proc = run_cli(*args, env=clean_env(GRAFTQ_REDIS_URL=redis_url), timeout=20)

    assert proc.returncode == 2, output(proc)
    assert "ASCII" in proc.stderr
    assert_no_traceback(proc)
