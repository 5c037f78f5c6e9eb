"""`graftq submit` input errors: nothing reaches the broker. No worker runs here."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis

from tests.integration.cli.conftest import CLI, SCHOOL, Ada, assert_no_traceback, output

UNKNOWN = "3f0d2c1b-9a8e-4d7c-b6a5-f4e3d2c1b0a9"


@pytest.fixture
def submit(cli: CLI, broker_url: str) -> CLI:
    def invoke(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "submit", "--app", SCHOOL, *args,
            GRAFTQ_BROKER_URL=broker_url, GRAFTQ_RESULT_BACKEND=broker_url, **extra,
        )  # fmt: skip

    return invoke


def broker_state(client: redis.Redis) -> tuple[set[str], int]:
    """The broker's keys and the length of the default queue `celery`."""
    keys = set(client.scan_iter(count=1000))
    return keys, int(client.llen("celery"))


@pytest.mark.parametrize("bad", ["{not json", "", "{'student': 1}"])
def test_input_that_is_not_json_exits_2(submit: CLI, bad: str) -> None:
    proc = submit("birthday", "--input", bad)
    assert proc.returncode == 2, output(proc)
    assert "--input is not JSON" in proc.stderr
    assert_no_traceback(proc)


def test_missing_input_exits_2(submit: CLI) -> None:
    proc = submit("birthday")
    assert proc.returncode == 2
    assert "--input" in proc.stderr


def test_unknown_entity_exits_1_and_enqueues_nothing(
    submit: CLI, ada: Ada, broker: redis.Redis, redis_client: redis.Redis
) -> None:
    before_broker, before_store = broker_state(broker), set(redis_client.scan_iter(count=1000))
    proc = submit("birthday", "--input", json.dumps({"student": f"@{UNKNOWN}"}), "--wait")
    assert proc.returncode == 1, output(proc)
    assert_no_traceback(proc)
    text = " ".join(output(proc).split())
    assert text.startswith("error: ") and UNKNOWN in text
    assert "submitted" not in text
    assert broker_state(broker) == before_broker
    assert set(redis_client.scan_iter(count=1000)) == before_store


def test_unknown_entity_error_is_one_line(submit: CLI, ada: Ada) -> None:
    proc = submit("birthday", "--input", json.dumps({"student": f"@{UNKNOWN}"}))
    assert proc.returncode == 1
    lines = [line for line in output(proc).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert UNKNOWN in lines[0]


def test_unknown_callable_exits_1_and_enqueues_nothing(submit: CLI, broker: redis.Redis) -> None:
    before = broker_state(broker)
    proc = submit("no_such_function", "--input", "{}")
    assert proc.returncode == 1, output(proc)
    assert_no_traceback(proc)
    text = " ".join(output(proc).split())
    assert "no_such_function" in text and "birthday" in text  # lists what is registered
    assert broker_state(broker) == before


def test_invalid_input_fails_and_enqueues_nothing(
    submit: CLI, ada: Ada, broker: redis.Redis
) -> None:
    before = broker_state(broker)
    proc = submit("bonus", "--input", json.dumps({"student_age": "old", "bonus_amount": 1.0}))
    assert proc.returncode != 0, output(proc)
    assert "student_age" in output(proc)
    assert "submitted" not in output(proc)
    assert broker_state(broker) == before


def test_invalid_input_is_a_clean_error_without_traceback(submit: CLI, ada: Ada) -> None:
    proc = submit(
        "birthday", "--input", json.dumps({"student": f"@{ada.lineage_id}.age"})
    )  # an int where a Student is expected
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert " ".join(output(proc).split()).startswith("error: ")


@pytest.mark.parametrize("bad", ["[1]", "3", "null"])
def test_input_json_that_is_not_an_object_is_a_usage_error(
    submit: CLI, broker: redis.Redis, bad: str
) -> None:
    before = broker_state(broker)
    proc = submit("birthday", "--input", bad)
    assert_no_traceback(proc)
    assert proc.returncode == 2, output(proc)
    assert broker_state(broker) == before


@pytest.mark.parametrize(
    ("bad", "kind"), [("null", "null"), ("[1]", "an array"), ('"x"', "a string"), ("1", "a number")]
)
def test_input_that_is_not_an_object_names_its_json_kind(submit: CLI, bad: str, kind: str) -> None:
    proc = submit("birthday", "--input", bad)
    assert proc.returncode == 2, output(proc)
    assert f"got {kind}" in " ".join(proc.stderr.split()), proc.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--wait", "--timeout", "-1"], "--timeout"),
        (["--wait", "--timeout", "0"], "--timeout"),
        (["--timeout", "5"], "--timeout only applies with --wait"),
    ],
)
def test_a_timeout_that_cannot_apply_is_a_usage_error(
    submit: CLI, args: list[str], said: str
) -> None:
    proc = submit("bonus", "--input", '{"student_age": 2, "bonus_amount": 1}', *args)
    assert proc.returncode == 2, output(proc)
    assert said in proc.stderr
    assert_no_traceback(proc)
