"""Every Redis key graftq uses, in one place.

=====================================  ======  ==============================================
key                                    type    holds
=====================================  ======  ==============================================
``{p}:v:{ecs_id}``                     string  one version document (JSON, see `tree`)
``{p}:head:{lineage_id}``              string  ecs_id of the lineage's current version
``{p}:hist:{lineage_id}``              list    ecs_ids of every version, in commit order
``{p}:exec:{execution_id}``            string  the Execution record (JSON)
``{p}:memo:{name}:{version}:{hash}``   string  execution id of a cached successful run
``{p}:fn:{name}``                      hash    published function: version → signed payload
``{p}:fn:{name}:latest``               string  signed pointer to the newest version (JSON:
                                               version, seq, signature)
``{p}:fns``                            set     names of all published functions
``{p}:lineages:{type}``                zset    lineage ids with a version of that entity type,
                                               scored by when the first one was stored
``{p}:types``                          set     entity type names that have such an index
``{p}:prune``                          string  run id of the prune in progress (expires)
``{p}:prune:{run}:read``               set     version ids commits read while that prune ran
=====================================  ======  ==============================================

``{p}`` is the key prefix, ``graftq`` unless the App says otherwise. Version
documents, histories and execution records are never overwritten except an
execution record that failed, which a retry replaces, until `graftq prune`
removes them (see `retention`). The type index is written by the commit in its
MULTI...EXEC, so `heads(Type)` pages through it and never scans the keyspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "graftq"

    def version(self, ecs_id: UUID | str) -> str:
        return f"{self.prefix}:v:{ecs_id}"

    @property
    def version_prefix(self) -> str:
        return f"{self.prefix}:v:"

    def head(self, lineage_id: UUID | str) -> str:
        return f"{self.prefix}:head:{lineage_id}"

    @property
    def head_prefix(self) -> str:
        return f"{self.prefix}:head:"

    def history(self, lineage_id: UUID | str) -> str:
        return f"{self.prefix}:hist:{lineage_id}"

    def execution(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}"

    def memo(self, callable_name: str, callable_version: str, input_hash: str) -> str:
        # The name too: two callables of the same code (closures of one factory, say)
        # may compute different things.
        return f"{self.prefix}:memo:{callable_name}:{callable_version}:{input_hash}"

    def function(self, name: str) -> str:
        return f"{self.prefix}:fn:{name}"

    def function_latest(self, name: str) -> str:
        return f"{self.prefix}:fn:{name}:latest"

    @property
    def functions(self) -> str:
        return f"{self.prefix}:fns"

    def lineages(self, type_name: str) -> str:
        return f"{self.prefix}:lineages:{type_name}"

    @property
    def types(self) -> str:
        return f"{self.prefix}:types"

    @property
    def prune(self) -> str:
        return f"{self.prefix}:prune"

    def prune_reads(self, run: str) -> str:
        return f"{self.prefix}:prune:{run}:read"
