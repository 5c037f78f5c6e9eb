"""Every GRAFTQ_* variable is validated; a bad one is named in the error (issue 11)."""

from __future__ import annotations

import pytest

from graftq import InvalidSetting, Settings
from graftq.worker.config import celery_url

BAD = [
    ("REDIS_URL", "http://127.0.0.1:6379/0", "redis"),
    ("REDIS_URL", "redis://127.0.0.1:notaport/0", "URL"),
    ("BROKER_URL", "no scheme here", "URL"),
    ("RESULT_BACKEND", "redis://h:99999999/0", "URL"),
    ("VISIBILITY_TIMEOUT", "an hour", "integer"),
    ("VISIBILITY_TIMEOUT", "0", "greater than 0"),
    ("CONNECT_TIMEOUT", "-1", "greater than 0"),
    ("CONNECT_TIMEOUT", "soon", "number"),
    ("KEY_PREFIX", "my app", "whitespace"),
    ("RERUN_TIMEOUT", "-1", "greater than or equal to 0"),
    ("COMMIT_RETRIES", "0", "greater than 0"),
    ("RESULT_EXPIRES", "1.5", "integer"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"GRAFTQ_{name.upper()}", raising=False)


@pytest.mark.parametrize(("name", "value", "says"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_bad_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(f"GRAFTQ_{name}", value)
    with pytest.raises(InvalidSetting) as raised:
        Settings.from_env()
    assert f"GRAFTQ_{name}=" in str(raised.value)
    assert says in str(raised.value)


def test_a_bad_argument_is_named_as_an_argument() -> None:
    with pytest.raises(InvalidSetting, match=r"App\(rerun_timeout=\.\.\.\)"):
        Settings.from_env(rerun_timeout=-3)
    with pytest.raises(InvalidSetting, match="unknown settings: visiblity_timeout"):
        Settings.from_env(visiblity_timeout=10)


def test_values_are_converted_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFTQ_VISIBILITY_TIMEOUT", "120")
    monkeypatch.setenv("GRAFTQ_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("GRAFTQ_SIGNING_KEY", "")
    monkeypatch.setenv("GRAFTQ_BROKER_URL", "amqp://guest@rabbit//")
    monkeypatch.setenv("GRAFTQ_APP", "not:a setting")  # other GRAFTQ_ variables are not ours
    settings = Settings.from_env(key_prefix="t1")
    assert settings.visibility_timeout == 120 and settings.connect_timeout == 2.5
    assert settings.signing_key is None and settings.key_prefix == "t1"
    assert settings.broker == "amqp://guest@rabbit//" and settings.backend == settings.redis_url


def test_settings_are_frozen_and_keep_the_key_out_of_their_repr() -> None:
    settings = Settings.from_env(signing_key="s3cret")
    assert "s3cret" not in repr(settings)
    with pytest.raises(Exception, match="frozen"):
        settings.key_prefix = "other"  # type: ignore[misc]


def test_an_explicit_mapping_is_read_instead_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAFTQ_KEY_PREFIX", "from-process")
    settings = Settings.from_env({"GRAFTQ_RERUN_TIMEOUT": "90", "GRAFTQ_CONNECT_TIMEOUT": ""})
    assert settings.rerun_timeout == 90.0 and settings.key_prefix == "graftq"
    with pytest.raises(InvalidSetting, match="GRAFTQ_RESULT_EXPIRES='soon'"):
        Settings.from_env({"GRAFTQ_RESULT_EXPIRES": "soon"})


@pytest.mark.parametrize(
    ("url", "celery"),
    [
        ("unix:///run/redis.sock", "redis+socket:///run/redis.sock?virtual_host=0"),
        ("unix:///run/redis.sock?db=3", "redis+socket:///run/redis.sock?virtual_host=3"),
        ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
    ],
)
def test_the_broker_names_a_unix_socket_as_celery_does(url: str, celery: str) -> None:
    assert celery_url(url) == celery


def test_a_unix_socket_url_with_a_password_asks_for_the_broker_url() -> None:
    with pytest.raises(InvalidSetting, match="GRAFTQ_BROKER_URL") as raised:
        celery_url("unix://:s3cret@/run/redis.sock?db=1")
    assert "s3cret" not in str(raised.value)
