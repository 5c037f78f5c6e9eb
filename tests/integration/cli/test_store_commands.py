"""`graftq show`, `history`, `lineage` and `functions` on a stored Student."""

from __future__ import annotations

import json

import pytest

from graftq import App
from tests.integration.cli.conftest import (
    CLI,
    SCHOOL,
    Ada,
    assert_no_traceback,
    output,
)

UNKNOWN = "0b3e9a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def test_show_a_version_prints_its_fields_as_json(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.versions[0], "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    shown = json.loads(proc.stdout)
    assert shown["ecs_id"] == ada.versions[0]
    assert shown["lineage_id"] == ada.lineage_id
    assert shown["parent_id"] is None
    assert (shown["name"], shown["age"], shown["major"]) == ("Ada", 20, "math")
    assert shown["address"]["city"] == "Paris"
    assert shown["address"]["ecs_id"] == ada.address_id
    assert "produced by" not in proc.stdout  # stored directly, not by a job


def test_show_an_older_version_is_that_version_not_the_head(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.versions[1], "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    shown = json.loads(proc.stdout)
    assert (shown["ecs_id"], shown["age"], shown["major"]) == (ada.versions[1], 21, "math")
    assert shown["parent_id"] == ada.versions[0]


def test_show_a_lineage_id_prints_its_head(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.lineage_id, "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    shown = json.loads(proc.stdout)
    assert shown["ecs_id"] == ada.head
    assert shown["lineage_id"] == ada.lineage_id
    assert (shown["age"], shown["major"]) == (21, "physics")


def test_show_a_sub_entity(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.address_id, "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    assert json.loads(proc.stdout)["city"] == "Paris"


def test_show_accepts_uppercase_uuid(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.head.upper(), "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    assert json.loads(proc.stdout)["ecs_id"] == ada.head


@pytest.mark.parametrize("uuid", [UNKNOWN, "not-a-uuid"])
def test_show_unknown_id_fails_naming_the_id_without_traceback(
    cli: CLI, ada: Ada, uuid: str
) -> None:
    proc = cli("show", uuid, "--app", SCHOOL)
    assert proc.returncode == 1, output(proc)
    assert_no_traceback(proc)
    text = " ".join(output(proc).split())  # however the terminal wrapped it
    assert text.startswith("error: ")
    assert uuid in text


def test_show_unknown_id_error_is_one_line(cli: CLI, ada: Ada) -> None:
    proc = cli("show", UNKNOWN, "--app", SCHOOL)
    assert proc.returncode == 1
    lines = [line for line in output(proc).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert UNKNOWN in lines[0]


def test_history_lists_every_version_oldest_first(cli: CLI, ada: Ada) -> None:
    proc = cli("history", ada.lineage_id, "--app", SCHOOL, wide=True)
    assert proc.returncode == 0, output(proc)
    positions = [proc.stdout.find(version) for version in ada.versions]
    assert all(pos >= 0 for pos in positions), proc.stdout
    rows = [line for line in proc.stdout.splitlines() if any(v in line for v in ada.versions)]
    assert len(rows) == 3
    # each row's first id is its version, oldest first; the parent column follows
    assert [row.split("│")[1].strip() for row in rows] == ada.versions
    assert [row.split("│")[2].strip() for row in rows] == ["-", *ada.versions[:2]]
    assert '"major": "physics"' in rows[2]


def test_history_accepts_only_a_lineage(cli: CLI, ada: Ada) -> None:
    proc = cli("history", UNKNOWN, "--app", SCHOOL)
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert UNKNOWN in " ".join(output(proc).split())


@pytest.mark.parametrize("command", [["history"], ["lineage"], ["lineage", "--mermaid"]])
def test_history_and_lineage_of_a_version_id_show_its_lineage(
    cli: CLI, ada: Ada, command: list[str]
) -> None:
    by_lineage = cli(command[0], ada.lineage_id, *command[1:], "--app", SCHOOL, wide=True)
    by_version = cli(command[0], ada.versions[0], *command[1:], "--app", SCHOOL, wide=True)
    assert by_version.returncode == 0, output(by_version)
    assert by_version.stdout == by_lineage.stdout


def test_history_piped_output_keeps_full_version_ids(cli: CLI, ada: Ada) -> None:
    proc = cli("history", ada.lineage_id, "--app", SCHOOL)
    assert proc.returncode == 0
    for version in ada.versions:
        assert version in proc.stdout


def test_lineage_mermaid_has_every_version(cli: CLI, ada: Ada) -> None:
    proc = cli("lineage", ada.lineage_id, "--mermaid", "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "graph TD"
    for version in ada.versions:
        assert f'["{version[:8]}' in proc.stdout
    assert f'["{ada.head[:8]} (head)"]' in proc.stdout
    edges = [line for line in lines if "-->" in line]
    assert len(edges) == 2  # v1 -> v2 -> v3


def test_lineage_mermaid_shows_branches(cli: CLI, ada: Ada, school: App) -> None:
    first = school.entities.get(ada.versions[0])
    branch = school.entities.put(first.model_copy(update={"age": 99}), branch=True)
    proc = cli("lineage", ada.lineage_id, "--mermaid", "--app", SCHOOL)
    assert proc.returncode == 0, output(proc)
    assert f'["{str(branch.ecs_id)[:8]}' in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if "-->" in line]) == 3
    assert f'["{ada.head[:8]} (head)"]' in proc.stdout  # a branch does not move the head


def test_lineage_tree_marks_the_head(cli: CLI, ada: Ada) -> None:
    proc = cli("lineage", ada.lineage_id, "--app", SCHOOL, wide=True)
    assert proc.returncode == 0, output(proc)
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ada.versions
    assert "head" in lines[2] and "head" not in lines[0] + lines[1]


def test_lineage_tree_names_the_callable_that_made_each_version(
    cli: CLI, ada: Ada, school: App
) -> None:
    older = school.execute("birthday", {"student": f"@{ada.lineage_id}"})
    made = str(older.derived_from)
    proc = cli("lineage", ada.lineage_id, "--app", SCHOOL, wide=True)
    assert proc.returncode == 0, output(proc)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith(str(older.ecs_id))]
    assert f"via=birthday[{made}]" in line and "head" in line
    assert "via=put" in proc.stdout.splitlines()[0]


def test_lineage_of_unknown_id_fails_cleanly(cli: CLI, ada: Ada) -> None:
    proc = cli("lineage", UNKNOWN, "--mermaid", "--app", SCHOOL)
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert UNKNOWN in " ".join(output(proc).split())


def test_functions_lists_the_registered_callables(cli: CLI, school: App) -> None:
    proc = cli("functions", "--app", SCHOOL, wide=True)
    assert proc.returncode == 0, output(proc)
    names = {line.split("│")[1].strip() for line in proc.stdout.splitlines() if "│" in line}
    assert set(school.callables) == names - {""}
    assert {"birthday", "transform_student", "bonus", "move"} <= names
    bonus = next(line for line in proc.stdout.splitlines() if "│ bonus " in line)
    assert "student_age, bonus_amount" in bonus
    assert "code" in bonus


def test_functions_shows_each_output_type_by_name(cli: CLI, school: App) -> None:
    proc = cli("functions", "--app", SCHOOL, wide=True)
    assert proc.returncode == 0, output(proc)
    rows = {
        cells[1].strip(): cells[-2].strip()
        for line in proc.stdout.splitlines()
        if len(cells := line.split("│")) > 2
    }
    assert rows["birthday"] == "Student"
    assert rows["bonus"] == "float"
    assert rows["pair"] == "tuple[Student, GraduateStudent]"
    assert rows["countdown"] == "Any"


def test_functions_piped_output_keeps_full_names(cli: CLI, school: App) -> None:
    proc = cli("functions", "--app", SCHOOL)
    assert proc.returncode == 0
    for name in school.callables:
        assert name in proc.stdout, name


def test_store_commands_need_no_app_only_the_redis_url(cli: CLI, ada: Ada) -> None:
    """SPEC 7 spells `graftq show UUID`, `history UUID`, `lineage UUID`: no --app."""
    shown = cli("show", ada.lineage_id)
    assert shown.returncode == 0, output(shown)
    data = json.loads(shown.stdout)
    assert (data["ecs_id"], data["major"]) == (ada.head, "physics")
    assert data["type"] == "tests.apps.school.Student"
    assert data["address"]["type"] == "tests.apps.school.Address"

    history = cli("history", ada.lineage_id, wide=True)
    assert history.returncode == 0, output(history)
    assert all(version in history.stdout for version in ada.versions)

    lineage = cli("lineage", ada.lineage_id, "--mermaid")
    assert lineage.returncode == 0, output(lineage)
    assert lineage.stdout.startswith("graph TD")


def test_store_commands_report_an_unreachable_redis_cleanly(cli: CLI, ada: Ada) -> None:
    proc = cli("show", ada.head, GRAFTQ_REDIS_URL="redis://127.0.0.1:1/0")
    assert proc.returncode == 1
    assert_no_traceback(proc)
    assert "127.0.0.1:1" in output(proc)
