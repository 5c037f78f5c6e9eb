"""Property tests of versioning against a real Redis: random trees, random edit sequences.

A model of the store is kept beside it: for every stored version its own values
and the ids of its sub-entities. From it the expected outcome of each put is
computed independently of the store's diff code: a node gets a new version iff it
was stored before and its own values, its sub-entity ids or any sub-entity
changed; a never-stored node keeps its ids as a first version; all others keep
their ecs_id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graftq.registry.store import EntityRegistry
from tests.entities import strip
from tests.integration.registry.models import Node
from tests.redis_state import snapshot, version_keys

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

values = st.integers(-2, 2)
labels = st.sampled_from(["", "a", "b"])


def trees(max_leaves: int = 8) -> st.SearchStrategy[Node]:
    leaf = st.builds(Node, value=values, label=labels)
    return st.recursive(
        leaf,
        lambda kids: st.builds(
            Node,
            value=values,
            label=labels,
            children=st.lists(kids, max_size=3),
            opt=st.none() | kids,
        ),
        max_leaves=max_leaves,
    )


def kids(node: Node) -> list[Node]:
    return [*node.children, *([node.opt] if node.opt is not None else [])]


def preorder(node: Node) -> Iterator[Node]:
    yield node
    for kid in kids(node):
        yield from preorder(kid)


def shape(node: Node) -> tuple[Any, ...]:
    """A node's own values and the ids of its direct sub-entities, in place."""
    return (
        node.value,
        node.label,
        [c.ecs_id for c in node.children],
        None if node.opt is None else node.opt.ecs_id,
    )


class Model:
    """What the store should hold: every version's shape, dump and lineage."""

    def __init__(self) -> None:
        self.shapes: dict[UUID, tuple[Any, ...]] = {}
        self.dumps: dict[UUID, dict[str, Any]] = {}
        self.lineage: dict[UUID, UUID] = {}
        self.history: dict[UUID, list[UUID]] = {}

    def needs_version(self, node: Node, out: dict[int, bool]) -> bool:
        below = [self.needs_version(kid, out) for kid in kids(node)]
        known = self.shapes.get(node.ecs_id)
        out[id(node)] = known is None or known != shape(node) or any(below)
        return out[id(node)]

    def check_put(self, sent: Node, got: Node, needs: dict[int, bool]) -> None:
        assert type(got) is Node
        assert len(got.children) == len(sent.children)
        assert (got.opt is None) == (sent.opt is None)
        if sent.ecs_id not in self.shapes:  # first version: the object's ids
            assert got.ecs_id == sent.ecs_id
            assert got.lineage_id == sent.lineage_id != got.ecs_id
            assert got.parent_id is None
        elif needs[id(sent)]:
            assert got.ecs_id not in self.shapes
            assert got.parent_id == sent.ecs_id
            assert got.lineage_id == self.lineage[sent.ecs_id]
        else:
            assert got.ecs_id == sent.ecs_id
        for sent_kid, got_kid in zip(kids(sent), kids(got), strict=True):
            self.check_put(sent_kid, got_kid, needs)

    def record(self, root: Node) -> None:
        for node in preorder(root):
            if node.ecs_id in self.shapes:
                continue
            self.shapes[node.ecs_id] = shape(node)
            self.dumps[node.ecs_id] = node.model_dump()
            self.lineage[node.ecs_id] = node.lineage_id
            self.history.setdefault(node.lineage_id, []).append(node.ecs_id)

    def check_store(self, reg: EntityRegistry, client: redis.Redis) -> None:
        # Storage grows with what changed: one document per version, nothing else.
        assert {key.removeprefix("graftq:v:") for key in version_keys(snapshot(client))} == {
            str(i) for i in self.shapes
        }
        for ecs_id, dump in self.dumps.items():
            assert reg.get(ecs_id).model_dump() == dump
        for lineage, versions in self.history.items():
            assert [v.ecs_id for v in reg.history(lineage)] == versions
            assert reg.head(lineage).ecs_id == versions[-1]


def apply_edit(data: st.DataObject, root: Node) -> None:
    target = data.draw(st.sampled_from(list(preorder(root))), label="target")
    op = data.draw(
        st.sampled_from(
            ["value", "label", "append", "remove", "reorder", "replace", "opt-none", "opt-new"]
        ),
        label="op",
    )
    count = len(target.children)
    if op == "value":
        target.value = data.draw(values)
    elif op == "label":
        target.label = data.draw(labels)
    elif op == "append":
        target.children.append(data.draw(trees(3)))
    elif op == "remove" and count:
        del target.children[data.draw(st.integers(0, count - 1))]
    elif op == "reorder" and count:
        target.children = data.draw(st.permutations(target.children))
    elif op == "replace" and count:
        target.children[data.draw(st.integers(0, count - 1))] = data.draw(trees(3))
    elif op == "opt-none":
        target.opt = None
    elif op in ("opt-new", "replace"):
        target.opt = data.draw(trees(3))


@SETTINGS
@given(tree=trees(), data=st.data())
def test_random_edits_reversion_exactly_the_changed_nodes_and_their_ancestors(
    redis_client: redis.Redis, tree: Node, data: st.DataObject
) -> None:
    redis_client.flushdb()
    reg = EntityRegistry(redis_client)
    model = Model()

    sent = tree
    for _ in range(data.draw(st.integers(1, 5), label="puts")):
        needs: dict[int, bool] = {}
        model.needs_version(sent, needs)
        before = sent.model_dump()

        got = reg.put(sent)

        assert sent.model_dump() == before  # the caller's tree is not mutated
        assert isinstance(got, Node)
        assert strip(got.model_dump()) == strip(before)
        model.check_put(sent, got, needs)
        model.record(got)
        model.check_store(reg, redis_client)

        # Edit either the returned copy or a freshly read one.
        sent = got if data.draw(st.booleans(), label="reuse") else reg.get(got.ecs_id)
        assert isinstance(sent, Node)
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            apply_edit(data, sent)


@SETTINGS
@given(tree=trees(12))
def test_random_trees_round_trip_and_reput_writes_nothing(
    redis_client: redis.Redis, tree: Node
) -> None:
    redis_client.flushdb()
    reg = EntityRegistry(redis_client)

    stored = reg.put(tree)
    read = reg.get(tree.ecs_id)

    assert read.model_dump() == stored.model_dump()
    assert strip(read.model_dump(), frozenset({"created_at"})) == strip(
        tree.model_dump(), frozenset({"created_at"})
    )
    assert len(version_keys(redis_client.scan_iter(count=1000))) == len(list(preorder(tree)))
    keys_before = redis_client.dbsize()
    assert reg.put(read).ecs_id == tree.ecs_id
    assert redis_client.dbsize() == keys_before
