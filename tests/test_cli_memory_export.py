"""``memory export`` writes strict JSON Lines, ``memory import`` refuses NaN and infinities (subprocess)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import run_cli


def strict_json(text: str) -> Any:
    """``text`` parsed as RFC 8259 JSON (``json.loads`` alone takes ``NaN`` and ``Infinity``)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _add(*storage: str, content: str) -> str:
    added = run_cli(*storage, "--json", "memory", "add", content, "--tier", "long")  # in the database
    assert added.returncode == 0, added.stderr
    return str(json.loads(added.stdout)["id"])


def _assert_export_refused(storage: list[str], tmp_path: Path, memory_id: str, field: str) -> None:
    backup = tmp_path / "backup.jsonl"
    backup.write_text("the previous backup\n", encoding="utf-8")
    refused = run_cli(*storage, "memory", "export", str(backup))
    assert_one_line_error(
        refused, f"cannot export memory '{memory_id}'", f"its {field} is not a finite number"
    )
    assert backup.read_text(encoding="utf-8") == "the previous backup\n", "the previous backup is kept"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("backup")) == [
        "backup.jsonl"
    ], "no temporary file is left"
    to_stdout = run_cli(*storage, "memory", "export", "-")
    assert_one_line_error(to_stdout, memory_id)
    assert to_stdout.stdout == ""


def test_export_refuses_a_nan_another_program_wrote_into_sqlite(tmp_path: Path) -> None:
    """A NaN in a memory's metadata (written into the database by another program) was exported as
    ``NaN``: a file jq and JavaScript refuse, which ``memory import`` refused too, so the backup was
    found unusable only when it was needed."""
    store = tmp_path / "store"
    storage = ["--storage", str(store)]
    kept = _add(*storage, content="a memory with clean values")
    damaged = _add(*storage, content="a memory whose metadata another program changed")
    with sqlite3.connect(store / "memories.sqlite3") as database:
        changed = database.execute(
            "UPDATE memories SET metadata = ? WHERE id = ?", ('{"score": NaN, "ok": 1}', damaged)
        ).rowcount
    assert changed >= 1
    _assert_export_refused(storage, tmp_path, damaged, "metadata.score")

    assert run_cli(*storage, "memory", "delete", damaged).returncode == 0  # what the error advises
    backup = tmp_path / "backup.jsonl"
    exported = run_cli(*storage, "memory", "export", str(backup))
    assert exported.returncode == 0, exported.stderr
    lines = backup.read_text(encoding="utf-8").splitlines()
    assert [strict_json(line)["id"] for line in lines] == [kept]


def test_migrate_refuses_a_nan_another_program_wrote_with_the_memory_named(tmp_path: Path) -> None:
    """``memory migrate`` of a store holding a NaN ended with "internal error: ValueError: Out of range
    float values are not JSON compliant (a bug...)": the copy's checksum could not be computed. Now it
    names the memory and the field, as the export does, and writes no memory to the target."""
    store = tmp_path / "store"
    storage = ["--storage", str(store)]
    _add(*storage, content="a memory with clean values")
    damaged = _add(*storage, content="a memory whose metadata another program changed")
    with sqlite3.connect(store / "memories.sqlite3") as database:
        database.execute("UPDATE memories SET metadata = ? WHERE id = ?", ('{"score": NaN}', damaged))
    target = tmp_path / "target"
    refused = run_cli("memory", "migrate", "--from", str(store), "--to", str(target))
    assert_one_line_error(
        refused, f"cannot copy memory '{damaged}'", "its metadata.score is not a finite number"
    )
    assert "internal error" not in refused.stderr
    if (target / "memories.sqlite3").exists():
        with sqlite3.connect(target / "memories.sqlite3") as database:
            assert database.execute("SELECT count(*) FROM memories").fetchone() == (0,)


def test_migrate_prune_refusing_a_nan_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    """``memory migrate --prune`` of a source holding a NaN pruned the target first (the memories deleted
    from the source since the last run, and its conversations) and only then stopped on the NaN, whose
    error says the migration stops before it writes: the refused command had changed the target. The
    source's copies are now checked before anything is written to the target."""
    store, target = tmp_path / "store", tmp_path / "target"
    _add("--storage", str(store), content="a memory with clean values")
    gone = _add("--storage", str(store), content="a memory deleted from the source after the first run")
    damaged = _add("--storage", str(store), content="a memory whose metadata another program changed")
    copied = run_cli("memory", "migrate", "--from", str(store), "--to", str(target))
    assert copied.returncode == 0, copied.stdout + copied.stderr
    deleted = run_cli("--storage", str(store), "memory", "delete", gone)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    with sqlite3.connect(store / "memories.sqlite3") as database:
        database.execute("UPDATE memories SET metadata = ? WHERE id = ?", ('{"score": NaN}', damaged))
    with sqlite3.connect(target / "memories.sqlite3") as database:
        before = database.execute("SELECT id, content FROM memories ORDER BY id").fetchall()
    assert gone in {row[0] for row in before}
    refused = run_cli("memory", "migrate", "--from", str(store), "--to", str(target), "--prune")
    assert_one_line_error(
        refused, f"cannot copy memory '{damaged}'", "its metadata.score is not a finite number"
    )
    with sqlite3.connect(target / "memories.sqlite3") as database:
        assert database.execute("SELECT id, content FROM memories ORDER BY id").fetchall() == before


def test_export_refuses_a_nan_importance_on_postgresql(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's double precision holds NaN (an UPDATE by another program): exported as ``NaN``."""
    import psycopg

    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", postgres_dsn)
    damaged = _add(content="a memory whose importance another program changed")
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute("UPDATE cm_memories SET importance = 'NaN' WHERE id = %s", (damaged,))
    _assert_export_refused([], tmp_path, damaged, "importance")


_LINE = {
    "id": "m-1",
    "content": "a memory",
    "importance": 0.5,
    "tags": [],
    "tier": "medium",
    "created_at": 1796000000.0,
    "last_accessed": 1796000000.0,
    "access_count": 0,
    "metadata": {},
}


@pytest.mark.parametrize(
    ("replace", "named"),
    [
        ('"metadata": {}', '"metadata": {"score": NaN}'),
        ('"metadata": {}', '"metadata": {"range": [0, Infinity]}'),
        ('"metadata": {}', '"metadata": {}, "score": NaN'),  # a field import does not read
        ('"created_at": 1796000000.0', '"created_at": -Infinity'),
        ('"last_accessed": 1796000000.0', '"last_accessed": 1e999'),
    ],
)
def test_import_refuses_non_finite_numbers_with_the_line_number(
    tmp_path: Path, replace: str, named: str
) -> None:
    good = json.dumps(_LINE)
    bad = json.dumps({**_LINE, "id": "m-2"}).replace(replace, named)
    assert bad != json.dumps({**_LINE, "id": "m-2"})
    source = tmp_path / "backup.jsonl"
    source.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    store = tmp_path / "store"
    result = run_cli("--storage", str(store), "memory", "import", str(source))
    constant = named.rsplit(": ", 1)[-1].strip("{}[]0, ")
    assert_one_line_error(result, f"{source}:2", "allowed finite numbers", constant.split()[-1])
    assert not store.exists(), "nothing is imported, no store is created"
