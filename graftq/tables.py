"""Rich tables of stored data that the CLI and the demo print."""

from __future__ import annotations

import itertools

from rich.table import Table

from graftq.registry.execution import Execution
from graftq.registry.store import EntityRegistry


def heads_table(store: EntityRegistry, type_name: str, limit: int) -> tuple[Table, bool]:
    """`graftq ls`: the first `limit` heads of a stored type; and whether there are more."""
    heads = list(itertools.islice(store.head_data(type_name), limit + 1))
    shown = heads[:limit]
    runs = [head["derived_from"] for head in shown if head["derived_from"]]
    raws = store.client.mget([store.keys.execution(run) for run in runs]) if runs else []
    callables = {
        run: Execution.model_validate_json(raw).callable if raw else "?"
        for run, raw in zip(runs, raws, strict=True)
    }
    table = Table(title=type_name)
    for column in ("lineage", "head version", "created_at", "derived_from"):
        table.add_column(column, overflow="fold")  # ids wrap on a narrow terminal, never cut
    for head in shown:
        run = head["derived_from"]
        made_by = f"{callables[run]} ({run})" if run else "put"
        table.add_row(head["lineage_id"], head["ecs_id"], head["created_at"], made_by)
    return table, len(heads) > limit
