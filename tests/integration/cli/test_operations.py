"""`graftq ls` and `graftq prune` run as subprocesses against the test's store."""

from __future__ import annotations

import re
import threading

import pytest
import redis

from graftq import App, EntityNotFound
from graftq.registry.store import EntityRegistry
from tests.apps.school import Address, Counter, Student
from tests.integration.cli.conftest import CLI, SCHOOL, Ada, assert_no_traceback, output

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def rows(text: str) -> list[list[str]]:
    """The table rows that start with a lineage id, as their cells."""
    found = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│|┃]", line) if cell.strip()]
        if cells and re.fullmatch(UUID, cells[0]):
            found.append(cells)
    return found


def test_ls_prints_each_lineage_at_its_head_with_what_made_it(
    cli: CLI, school: App, ada: Ada
) -> None:
    bob = school.entities.put(Student(name="Bob", age=30))
    older = school.execute("birthday", {"student": f"@{bob.lineage_id}"})
    proc = cli("ls", "Student", wide=True)
    assert proc.returncode == 0, output(proc)
    table = rows(proc.stdout)
    assert [row[:2] for row in table] == [
        [ada.lineage_id, ada.head],
        [str(bob.lineage_id), str(older.ecs_id)],
    ]
    assert table[0][3] == "put"
    assert table[1][3] == f"birthday ({older.derived_from})"
    assert re.match(r"\d{4}-\d\d-\d\dT", table[1][2])  # created_at
    assert "tests.apps.school.Student" in proc.stdout  # the table's title: the full type name
    # the full type name works too, and sub-entities are listed under their own type
    full = cli("ls", "tests.apps.school.Student", wide=True)
    assert rows(full.stdout) == table
    addresses = rows(cli("ls", "Address", wide=True).stdout)
    assert [row[0] for row in addresses] == [str(ada_address_lineage(school, ada))]


def ada_address_lineage(school: App, ada: Ada) -> object:
    return school.entities.get(ada.address_id).lineage_id


def test_ls_limit_says_there_are_more(cli: CLI, school: App) -> None:
    for n in range(5):
        school.entities.put(Counter(value=n))
    proc = cli("ls", "Counter", "--limit", "3", wide=True)
    assert proc.returncode == 0, output(proc)
    assert len(rows(proc.stdout)) == 3
    assert "first 3 lineages shown" in proc.stdout
    assert "shown" not in cli("ls", "Counter", "--limit", "5", wide=True).stdout


def test_ls_of_an_unknown_type_names_the_stored_ones(cli: CLI, ada: Ada) -> None:
    proc = cli("ls", "Teacher")
    assert proc.returncode == 1
    assert "no entity type 'Teacher'" in proc.stderr
    assert "tests.apps.school.Student" in proc.stderr
    assert_no_traceback(proc)


def counter_chain(store: EntityRegistry, length: int) -> list[Counter]:
    versions = [store.put(Counter(value=0))]
    for n in range(1, length):
        versions.append(store.put(versions[-1].model_copy(update={"value": n})))
    return versions


def test_prune_dry_run_then_for_real(cli: CLI, school: App) -> None:
    store = school.entities
    versions = counter_chain(store, 6)
    lineage = versions[0].lineage_id
    dry = cli("prune", "--keep", "2", "--dry-run")
    assert dry.returncode == 0, output(dry)
    said = r"would remove 4 versions \(4 history entries\) from 1 lineage and"
    assert re.search(said, dry.stdout)
    assert len(store.version_ids(lineage)) == 6  # nothing removed
    real = cli("prune", "--keep", "2", "--app", SCHOOL)
    assert real.returncode == 0, output(real)
    assert re.search(r"removed 4 versions .* (\d+) bytes", real.stdout)
    assert int(re.findall(r"(\d+) bytes", real.stdout)[0]) > 0
    assert store.version_ids(lineage) == [str(v.ecs_id) for v in versions[-2:]]
    with pytest.raises(EntityNotFound):
        store.get(versions[0].ecs_id)


def test_prune_never_removes_a_head(cli: CLI, school: App, ada: Ada) -> None:
    store = school.entities
    first = store.get(ada.versions[0])
    branches = [store.put(first.model_copy(update={"age": 40 + n}), branch=True) for n in (1, 2)]
    proc = cli("prune", "--keep", "0")
    assert proc.returncode == 0, output(proc)
    assert store.version_ids(ada.lineage_id) == [ada.head]
    head = store.head(ada.lineage_id)
    assert str(head.ecs_id) == ada.head and isinstance(head, Student)
    assert head.address is not None and head.address.city == "Paris"
    for branch in branches:
        with pytest.raises(EntityNotFound):
            store.get(branch.ecs_id)


def test_prune_older_than_keeps_recent_versions(cli: CLI, school: App) -> None:
    counter_chain(school.entities, 4)
    recent = cli("prune", "--keep", "1", "--older-than", "1d12h")
    assert recent.returncode == 0, output(recent)
    assert "removed 0 versions" in recent.stdout
    assert "removed 3 versions" in cli("prune", "--keep", "1", "--older-than", "0s").stdout


@pytest.mark.parametrize("bad", ["soon", "10", "3 days", "-1d"])
def test_prune_refuses_a_malformed_duration(cli: CLI, bad: str) -> None:
    proc = cli("prune", "--keep", "1", "--older-than", bad)
    assert proc.returncode == 2, output(proc)
    assert "is not a duration" in proc.stderr
    assert_no_traceback(proc)


def test_prune_older_than_longer_than_history_removes_nothing(cli: CLI, school: App) -> None:
    counter_chain(school.entities, 3)
    proc = cli("prune", "--keep", "1", "--older-than", "1000000d")  # before year 1
    assert proc.returncode == 0, output(proc)
    assert "removed 0 versions" in proc.stdout


def test_prune_refuses_a_duration_too_long_to_count(cli: CLI) -> None:
    proc = cli("prune", "--keep", "1", "--older-than", "99999999999999999999d")
    assert proc.returncode == 2, output(proc)
    assert "too long" in proc.stderr
    assert_no_traceback(proc)


def test_prune_while_commits_stream_in_keeps_every_head_and_kept_version_whole(
    cli: CLI, school: App, redis_url: str
) -> None:
    roots = [
        school.entities.put(Student(name=f"s{n}", age=0, address=Address(city="c0")))
        for n in range(3)
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(root: Student) -> None:
        try:
            with redis.Redis.from_url(redis_url, decode_responses=True) as client:
                store = EntityRegistry(client)
                step = 0
                while not stop.is_set() or step < 30:
                    step += 1
                    head = store.head(root.lineage_id)
                    assert isinstance(head, Student) and head.address is not None
                    head.age += 1
                    if step % 2:
                        head.address.city = f"c{step}"  # re-versions the address and the student
                    store.put(head)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(root,)) for root in roots]
    for thread in writers:
        thread.start()
    try:
        reports = [cli("prune", "--keep", "2") for _ in range(3)]
    finally:
        stop.set()
        for thread in writers:
            thread.join(60)
    assert not errors, errors
    for proc in reports:
        assert proc.returncode == 0, output(proc)
    assert sum(int(re.findall(r"removed (\d+) versions", p.stdout)[0]) for p in reports) > 0
    store = school.entities
    for root in roots:
        head = store.head(root.lineage_id)
        assert isinstance(head, Student) and head.age >= 30  # each writer made 30 or more
        for ecs_id in store.version_ids(root.lineage_id):
            store.get(ecs_id)  # every kept version loads with its whole tree
    for address in store.heads(Address):
        for ecs_id in store.version_ids(address.lineage_id):
            store.get(ecs_id)
