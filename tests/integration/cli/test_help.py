"""`graftq --help`, `--version`, every subcommand's `--help`, and `--app` errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import graftq
from graftq.cli import main
from graftq.devserver import WorkerProcess, free_port
from tests.integration.cli.conftest import (
    SCHOOL,
    assert_no_traceback,
    clean_env,
    output,
    run_cli,
)

COMMANDS = ["worker", "submit", "show", "history", "lineage", "functions", "flower", "demo"]
UUID = "6f1c2b6e-3d3a-4a4e-9d4e-2b1f6d0c8a11"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert set(COMMANDS) <= names, names


def test_short_help_option_works_too() -> None:
    result = CliRunner().invoke(main, ["-h"])
    assert result.exit_code == 0
    assert "Commands:" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")
    assert f" {command} " in result.output.splitlines()[0]


def test_commands_that_need_an_app_document_the_app_option() -> None:
    for command in ["worker", "submit", "show", "history", "lineage", "functions", "flower"]:
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--app MODULE:ATTR" in result.output, command


def test_version_in_process() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"graftq, version {graftq.__version__}"


def test_version_through_module_and_console_script() -> None:
    proc = run_cli("--version", env=clean_env())
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.strip() == f"graftq, version {graftq.__version__}"
    script = Path(sys.executable).parent / "graftq"
    assert script.exists(), "the `graftq` console script is not installed in the venv"
    done = subprocess.run(
        [str(script), "--version"], env=clean_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert graftq.__version__ in done.stdout


@pytest.mark.parametrize(
    ("app_path", "expected"),
    [
        ("nosuchmodule:app", "cannot import 'nosuchmodule'"),
        ("tests.apps.school:nothere", "'tests.apps.school:nothere'"),
        ("tests.apps.school", "expected MODULE:ATTR"),
        ("tests.apps.school:make_app", "not a graftq App"),
        (":app", "expected MODULE:ATTR"),
    ],
)
def test_bad_app_exits_2_with_a_clear_message(app_path: str, expected: str) -> None:
    proc = run_cli("show", UUID, "--app", app_path, env=clean_env())
    assert proc.returncode == 2, output(proc)
    assert expected in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    assert_no_traceback(proc)


def test_missing_app_option_exits_2() -> None:
    proc = run_cli("functions", env=clean_env())
    assert proc.returncode == 2
    assert "Missing option '--app'" in proc.stderr


def test_app_from_environment_variable(redis_url: str) -> None:
    proc = run_cli("functions", env=clean_env(GRAFTQ_APP=SCHOOL, GRAFTQ_REDIS_URL=redis_url))
    assert proc.returncode == 0, output(proc)
    assert "birthday" in proc.stdout


def test_worker_refuses_other_pools() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # never a real broker, whatever happens
    proc = run_cli(
        "worker", "--app", SCHOOL, "-P", "solo", env=clean_env(GRAFTQ_REDIS_URL=nowhere), timeout=60
    )
    assert proc.returncode == 2, output(proc)
    assert "prefork" in proc.stderr


def test_worker_refuses_the_spawn_start_method_and_says_so() -> None:
    """Spawned pool processes never see the App (it lives in the worker's memory, and
    its zygotes fork): every job would fail with NotRegistered."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    for given in (["--pool-start-method", "spawn"], ["--pool-start-method=spawn"]):
        proc = run_cli(
            "worker", "--app", SCHOOL, *given, env=clean_env(GRAFTQ_REDIS_URL=nowhere), timeout=60
        )
        assert proc.returncode == 2, output(proc)
        assert "--pool-start-method" in proc.stderr and "fork" in proc.stderr, proc.stderr
        assert "drop -P/--pool" not in proc.stderr


def test_worker_takes_the_fork_start_method(redis_url: str, broker_url: str) -> None:
    """`--pool-start-method fork` is Celery's prefork default spelled out: not another pool."""
    env = {"GRAFTQ_BROKER_URL": broker_url}
    extra = ["--pool-start-method", "fork"]
    with WorkerProcess(SCHOOL, redis_url, concurrency=1, env=env, extra=extra) as worker:
        assert " ready." in worker.log()
