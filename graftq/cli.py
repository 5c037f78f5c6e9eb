"""The `graftq` command: worker, submit, show, history, lineage, ls, prune, functions, flower,
demo (`graftq COMMAND --help`)."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import typing
from datetime import timedelta
from typing import Any

import click
import pydantic
import redis
from kombu.exceptions import OperationalError
from rich.console import Console
from rich.table import Table

import graftq
from graftq import progress
from graftq.app import App
from graftq.errors import EntityNotFound, GraftError
from graftq.registry import index
from graftq.registry.entity import IDENTITY_FIELDS
from graftq.registry.store import EntityRegistry, as_uuid
from graftq.settings import Settings
from graftq.tables import heads_table
from graftq.worker.config import unlimited
from graftq.worker.connections import redis_client, unreachable
from graftq.worker.pool import APP_VARIABLE

# Piped output is read by programs: never wrap or cut ids there.
console = Console() if sys.stdout.isatty() else Console(width=10_000, soft_wrap=True)
# Progress goes to stderr, so that `graftq submit --wait | jq` reads only the value.
progress_console = Console(stderr=True)

APP_OPTION = click.option(
    "--app",
    "app_path",
    envvar="GRAFTQ_APP",
    required=True,
    metavar="MODULE:ATTR",
    help="The graftq App to use, e.g. myproject.jobs:app (env GRAFTQ_APP).",
)


def load_app(path: str) -> App:
    """Import MODULE and return its ATTR, which must be a graftq App."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{path!r}: expected MODULE:ATTR, e.g. myproject.jobs:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `celery -A`: modules of the current directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    if not hasattr(module, attr):
        raise click.BadParameter(f"{path!r}: module {module_name!r} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise click.BadParameter(f"{path!r} is {type(app).__name__}, not a graftq App")
    click.get_current_context().meta[SETTINGS] = app.settings
    return app


SETTINGS = "graftq.settings"  # click context meta: the settings of the store or App in use


class Commands(click.Group):
    """The command group; a server that does not answer becomes `Unreachable`, naming it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            raise unreachable(ctx.meta.get(SETTINGS) or Settings.from_env(), exc) from exc


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(graftq.__version__, prog_name="graftq")
def main() -> None:
    """Typed functions on Celery workers over versioned Pydantic entities in Redis."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@APP_OPTION
@click.option("-c", "--concurrency", type=int, help="Pool processes (default: CPU count).")
@click.option("-Q", "--queues", help="Comma-separated queues to consume from.")
@click.option(
    "-n", "--hostname", help="Node name: w1 means w1@<this host>; or NAME@HOST, e.g. w1@%h."
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(
    ctx: click.Context,
    app_path: str,
    concurrency: int | None,
    queues: str | None,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Start a Celery prefork worker; extra arguments go to `celery worker`."""
    if any(arg == "--pool" or arg.startswith(("-P", "--pool=")) for arg in ctx.args):
        raise click.UsageError("graftq workers always use the prefork pool; drop -P/--pool")
    if _start_method(ctx.args) not in (None, "fork"):
        # A spawned pool process is a fresh interpreter: it never sees the App this
        # command loaded (nor does it fork its zygote from it), so no task is registered.
        raise click.UsageError(
            "graftq workers fork their pool processes; drop --pool-start-method or give 'fork'"
        )
    app = load_app(app_path)
    try:
        unbounded = unlimited(app.callables.values(), app.settings.visibility_timeout)
    except GraftError as exc:
        raise click.UsageError(str(exc)) from None
    if unbounded:
        click.echo(
            f"warning: {', '.join(unbounded)} have no time limit: a job running longer than the "
            f"visibility timeout ({app.settings.visibility_timeout} s) is delivered again "
            "while it runs (its commit still happens once)",
            err=True,
        )
    argv = ["worker", "--pool=prefork", f"--loglevel={loglevel}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if queues:
        argv.append(f"--queues={queues}")
    if hostname:
        # Celery reads a bare `-n w1` as a host name (node `celery@w1`); the SPEC's
        # `-n name` and Execution.worker's `w1@host` mean the node's name.
        argv.append(f"--hostname={hostname if '@' in hostname else hostname + '@%h'}")
    os.environ[APP_VARIABLE] = app_path  # pool processes start their zygote on it
    app.celery.worker_main([*argv, *ctx.args])


def _start_method(args: list[str]) -> str | None:
    """The value of Celery's ``--pool-start-method`` among `args`, if given."""
    option = "--pool-start-method"
    for at, arg in enumerate(args):
        if arg.startswith(option + "="):
            return arg.removeprefix(option + "=")
        if arg == option:
            return args[at + 1] if at + 1 < len(args) else ""
    return None


@main.command()
@APP_OPTION
@click.argument("name")
@click.option("--input", "input_json", required=True, help="The input as a JSON object.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait with --wait (default: until the job ends).",
)
def submit(app_path: str, name: str, input_json: str, wait: bool, timeout: float | None) -> None:
    """Submit a job: references are resolved and validated before anything is enqueued."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    app = load_app(app_path)
    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--input is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"--input must be a JSON object of parameter → value, got {_json_kind(data)}"
        )
    job = app.submit(name, data)
    console.print(f"job [bold]{job.id}[/] submitted ({name})")
    if wait:
        try:
            value = progress.wait(job, progress_console, timeout=timeout)
        except (GraftError, pydantic.ValidationError):
            raise  # graftq's own message (`run`)
        except Exception as exc:  # the function's own error, as `Job.get` raises it
            raise GraftError(f"job {job.id} ({name}) failed: {type(exc).__name__}: {exc}") from None
        _print_value(value)


STORE_APP_OPTION = click.option(
    "--app",
    "app_path",
    envvar="GRAFTQ_APP",
    metavar="MODULE:ATTR",
    help="Take the store's settings from this App; default: GRAFTQ_* variables.",
)


def open_store(app_path: str | None) -> EntityRegistry:
    """The store of `--app`, else the one the GRAFTQ_* variables describe.

    Entities are shown as JSON data, so no Entity class needs to be importable.
    """
    if app_path:
        return load_app(app_path).entities
    settings = Settings.from_env()
    click.get_current_context().meta[SETTINGS] = settings
    return EntityRegistry(redis_client(settings.redis_url, settings), prefix=settings.key_prefix)


@main.command()
@STORE_APP_OPTION
@click.argument("uuid")
def show(app_path: str | None, uuid: str) -> None:
    """Show one version (an ecs_id) or a lineage's head (a lineage_id)."""
    store = open_store(app_path)
    found = store.classify([uuid]).get(str(as_uuid(uuid)))
    if found is None:
        raise EntityNotFound(f"no entity version or lineage {uuid} in the store")
    [data] = store.get_data([found[0]])
    console.print_json(json.dumps(data))
    execution = store.provenance(found[0])
    if execution is not None:
        console.print(f"produced by [bold]{execution.callable}[/] in execution {execution.id}")


def lineage_of(store: EntityRegistry, uuid: str) -> str:
    """`uuid` if it is a lineage id (or unknown); the lineage of a version id."""
    found = store.classify([uuid]).get(str(as_uuid(uuid)))
    if found is None or not found[1]:
        return uuid
    [data] = store.get_data([found[0]])
    return str(data["lineage_id"])


@main.command()
@STORE_APP_OPTION
@click.argument("uuid")
def history(app_path: str | None, uuid: str) -> None:
    """Every version of a lineage (branches included), oldest first.

    UUID is the lineage id or the id of any of its versions.
    """
    store = open_store(app_path)
    lineage_id = lineage_of(store, uuid)
    table = Table("ecs_id", "parent_id", "created_at", "derived_from", "fields")
    for version in store.get_data(store.version_ids(lineage_id)):
        shown = IDENTITY_FIELDS | {"type"}
        fields = {key: value for key, value in version.items() if key not in shown}
        table.add_row(
            version["ecs_id"],
            version["parent_id"] or "-",
            version["created_at"],
            version["derived_from"] or "-",
            json.dumps(fields)[:80],
        )
    console.print(table)


@main.command()
@STORE_APP_OPTION
@click.argument("uuid")
@click.option("--mermaid", is_flag=True, help="Print a Mermaid graph instead of a list.")
def lineage(app_path: str | None, uuid: str, mermaid: bool) -> None:
    """The version graph of a lineage, branches included.

    UUID is the lineage id or the id of any of its versions.
    """
    store = open_store(app_path)
    lineage_id = lineage_of(store, uuid)
    if mermaid:
        click.echo(store.lineage_mermaid(lineage_id))
        return
    head = store.head_id(lineage_id)
    versions = store.get_data(store.version_ids(lineage_id))
    runs = sorted({v["derived_from"] for v in versions if v["derived_from"]})
    made_by = dict(zip(runs, store.callable_names(runs), strict=True))
    for version in versions:
        mark = "  ← head" if version["ecs_id"] == head else ""
        run = version["derived_from"]
        via = f"{made_by[run]}[{run}]" if run else "put"  # Celery's name[id]
        click.echo(f"{version['ecs_id']}  parent={version['parent_id']}  via={via}{mark}")


@main.command("ls")
@STORE_APP_OPTION
@click.argument("type_name", metavar="TYPE")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def ls(app_path: str | None, type_name: str, limit: int) -> None:
    """The head of every lineage of TYPE (its class name or full type name), oldest first."""
    store = open_store(app_path)
    table, more = heads_table(store, index.match_type(store.client, store.keys, type_name), limit)
    console.print(table)
    if more:
        console.print(f"(first {limit} lineages shown; pass --limit to see more)")


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `30d`, `2w`, or combined: `1d12h`."""
    parts = DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise click.BadParameter(
            f"{text!r} is not a duration; use a number with s, m, h, d or w, e.g. 30d or 1d12h"
        )
    try:
        return timedelta(seconds=sum(float(n) * UNIT_SECONDS[u] for n, u in parts))
    except OverflowError:
        raise click.BadParameter(f"{text!r} is too long a duration") from None


@main.command()
@STORE_APP_OPTION
@click.option(
    "--keep", type=click.IntRange(min=0), required=True, help="Versions kept per lineage."
)
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help="Only versions older than this (30d, 12h, ...).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
def prune(app_path: str | None, keep: int, older_than: str | None, dry_run: bool) -> None:
    """Remove versions beyond the newest KEEP of each lineage that nothing needs any more.

    Heads, every version in a kept version's tree and what a kept Execution
    record needs are never removed. Safe while workers commit.
    """
    age = parse_duration(older_than) if older_than else None
    store = open_store(app_path)
    report = store.prune(keep, older_than=age, dry_run=dry_run)
    console.print(str(report))


@main.command()
@APP_OPTION
def functions(app_path: str) -> None:
    """Callables registered in code and functions published at run time."""
    app = load_app(app_path)
    table = Table("name", "kind", "version", "isolation", "input", "output")
    names = sorted(set(app.callables) | set(app.functions.names()))
    for name in names:
        info = app.callables[name] if name in app.callables else None
        if info is None:
            table.add_row(name, "published", app.functions.latest(name), "fork", "?", "?")
            continue
        params = ", ".join(info.input_schema().get("properties", {}))
        kind = "published" if info.published else "code"
        table.add_row(name, kind, info.version, info.isolation, params, _type_name(info.func))
    console.print(table)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@main.command()
@APP_OPTION
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option(
    "--basic-auth",
    envvar="GRAFTQ_FLOWER_BASIC_AUTH",
    metavar="USER:PASS[,USER:PASS]",
    help="HTTP basic auth (env GRAFTQ_FLOWER_BASIC_AUTH).",
)
@click.option("--no-auth", is_flag=True, help="Run without authentication (loopback only).")
def flower(app_path: str, port: int, address: str, basic_auth: str | None, no_auth: bool) -> None:
    """Start Flower on the App's broker, with authentication on."""
    if not basic_auth and not no_auth:
        raise click.UsageError(
            "Flower needs authentication: pass --basic-auth user:pass "
            "(or set GRAFTQ_FLOWER_BASIC_AUTH); --no-auth is allowed on a loopback address only"
        )
    if no_auth and not basic_auth and address not in LOOPBACK:
        raise click.UsageError(f"--no-auth is refused on {address}: bind to 127.0.0.1 or add auth")
    if basic_auth:
        _check_credentials(basic_auth)
    app = load_app(app_path)
    with app.celery.connection_for_write() as broker:  # Flower would wait on it without a word
        broker.ensure_connection(max_retries=1, interval_start=0)
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    # Flower's /api/task/result and /api/task/abort build `AsyncResult(task_id)` on
    # Celery's default app, not on the app it serves: without this they answer 503
    # ("result backend is not configured"). This process serves only this App.
    app.celery.set_default()
    app.celery.start(argv)


def _check_credentials(basic_auth: str) -> None:
    """Every pair is user:password with neither empty: an empty one counts as no auth.

    A blank one (only spaces) counts as empty. Non-ASCII text is refused: Flower
    compares credentials with `hmac.compare_digest` on str, which raises for it, so
    every request, the right credentials too, would be answered 500.
    """
    if not basic_auth.isascii():
        raise click.BadParameter(
            "--basic-auth must be ASCII: Flower cannot check other credentials"
        )
    for pair in basic_auth.split(","):
        user, colon, password = pair.partition(":")
        if not colon:
            raise click.BadParameter("--basic-auth must be user:password[,user:password]")
        if not user.strip() or not password.strip():
            raise click.BadParameter(
                "--basic-auth has an empty user name or password, which would let anyone in"
            )


@main.command()
def demo() -> None:
    """Run example jobs with references on a worker and print the lineage.

    Uses GRAFTQ_REDIS_URL if a Redis answers there, else starts a private one.
    """
    from graftq import demo as example  # the demo's models register only when asked for

    example.run(console)


def _json_kind(value: Any) -> str:
    """What JSON calls the kind of a parsed value (the user wrote JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _type_name(func: Any) -> str:
    """The return annotation as written, without module paths: `tuple[Student, int]`.

    (A JSON Schema cut to a column's width said nothing: `{"$defs": {"Address": ...`.)
    """
    returns = typing.get_type_hints(func)["return"]
    if returns is type(None):
        return "None"
    text = returns.__name__ if isinstance(returns, type) else repr(returns)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)


def _print_value(value: Any) -> None:
    if hasattr(value, "model_dump_json"):
        console.print_json(value.model_dump_json())
    else:
        console.print_json(json.dumps(value, default=str))


def run() -> None:
    """Console entry point: graftq, validation and connection errors become one
    `error: ...` line on stderr and exit status 1."""
    try:
        main(standalone_mode=True)
    except (GraftError, pydantic.ValidationError) as exc:
        click.echo(f"error: {exc}", err=True)
    # Exit outside the handler, so the error (and the job it may hold) is freed first.
    sys.exit(1)


if __name__ == "__main__":
    run()
