"""A worker refuses to start when a time limit reaches the visibility timeout (issue 10 item 7).

Redis redelivers an unacknowledged job only after the visibility timeout; a job that
may legally run longer than that would be delivered a second time while it runs.
"""

from __future__ import annotations

from graftq.devserver import WorkerProcess
from tests.integration.cli.conftest import SCHOOL, assert_no_traceback, clean_env, output, run_cli


def test_worker_refuses_a_time_limit_at_or_over_the_visibility_timeout(redis_url: str) -> None:
    env = clean_env(GRAFTQ_REDIS_URL=redis_url, GRAFTQ_VISIBILITY_TIMEOUT="20")
    proc = run_cli("worker", "--app", SCHOOL, "-c", "1", env=env, timeout=30)
    assert proc.returncode == 2, output(proc)
    # tests.apps.school's `hang` has time_limit=1.0, plus Celery's 30 s hard-limit backstop.
    assert (
        "hang" in proc.stderr and "31" in proc.stderr and "GRAFTQ_VISIBILITY_TIMEOUT" in proc.stderr
    )
    assert_no_traceback(proc)


def test_worker_starts_when_every_time_limit_fits_and_says_what_has_none(
    redis_url: str, broker_url: str
) -> None:
    env = {"GRAFTQ_BROKER_URL": broker_url, "GRAFTQ_VISIBILITY_TIMEOUT": "32"}
    with WorkerProcess(SCHOOL, redis_url, concurrency=1, env=env) as worker:
        log = worker.log()
    assert "visibility timeout" in log and "birthday" in log  # no time limit: a warning
