"""The ``context-manager`` command, through typer's CliRunner and as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from context_manager.cli import app
from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import ConfigurationError, InvalidArgumentError, StorageCorruptedError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.tokens import count_tokens

runner = CliRunner()


def cli(*arguments: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(arguments), input=input)


def cli_json(*arguments: str) -> Any:
    result = cli("--json", *arguments)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str, code: int = 1) -> None:
    assert result.exit_code == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.mark.parametrize(
    ("dsn", "named"),
    [
        ("postgresql://app:s3cr3t-pw@db.internal:5432/app", "PYTHON_CONTEXT_MANAGER_POSTGRES_DSN"),
        ("host=db.internal user=app password=s3cr3t-pw dbname=app", "key=value"),
    ],
)
def test_a_connection_string_as_storage_is_refused_without_its_password(dsn: str, named: str) -> None:
    """``--storage postgresql://...`` (as ``memory migrate --to`` takes) was a directory: ``memory add``
    stored the memory in ``./postgresql:/app:pw@db/app`` and ``health`` printed the password; so was
    libpq's key=value form (``./host=db user=app password=...``, the password in its name)."""
    for arguments in (["memory", "add", "a fact"], ["health"], ["memory", "stats"]):
        result = cli("--storage", dsn, *arguments)
        assert_one_line_error(result, "--storage", named)
        assert "s3cr3t-pw" not in result.stdout + result.stderr
        assert not any(Path.cwd().iterdir())  # nothing created
    result = cli("mcp", "serve", "--storage", dsn)
    assert result.exit_code != 0
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert not any(Path.cwd().iterdir())


def test_a_storage_path_holding_an_equals_sign_is_a_directory() -> None:
    """Only a whole key=value connection string is refused: a path with "=" in it is taken."""
    for path in ("backup/host=laptop", "user=alice/memory"):  # paths with "=" in them
        added = cli("--storage", path, "memory", "add", "a fact")
        assert added.exit_code == 0, added.output
        assert Path(path).is_dir()


# --- tokens ----------------------------------------------------------------------------------------


def test_tokens_counts_a_file_exactly(tmp_path: Path) -> None:
    text = "Context windows that never overflow. 数え方も正確です。\n"
    source = tmp_path / "notes.txt"
    source.write_text(text, encoding="utf-8")
    result = cli("tokens", str(source))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{count_tokens(text)} tokens (o200k_base)")
    data = cli_json("tokens", str(source), "--encoding", "cl100k_base")
    assert data == {
        "source": str(source),
        "encoding": "cl100k_base",
        "tokens": count_tokens(text, "cl100k_base"),
        "characters": len(text),
    }


def test_tokens_reads_stdin_and_follows_the_configured_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_ENCODING", "cl100k_base")
    result = cli("--json", "tokens", "-", input="hello world, twice: hello world")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["source"] == "<stdin>" and data["encoding"] == "cl100k_base"
    assert data["tokens"] == count_tokens("hello world, twice: hello world", "cl100k_base")


def test_tokens_counts_with_the_configured_token_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``token_model`` picks the encoding the library counts with; the command counts the same way."""
    text = "Привет, мир! 你好世界 — naïve café"
    assert count_tokens(text, "cl100k_base") != count_tokens(text, "o200k_base")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "gpt-4")
    data = json.loads(cli("--json", "tokens", "-", input=text).stdout)
    assert data["encoding"] == "cl100k_base" and data["tokens"] == count_tokens(text, "cl100k_base")
    explicit = json.loads(cli("--json", "tokens", "-", "--encoding", "o200k_base", input=text).stdout)
    assert explicit["encoding"] == "o200k_base" and explicit["tokens"] == count_tokens(text, "o200k_base")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "gpt-9000")
    assert_one_line_error(cli("tokens", "-", input=text), "token_model", "gpt-9000")


def test_tokens_reads_only_the_token_options_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tokens`` reads no memory store, yet it read the whole configuration for its encoding: a
    PYTHON_CONTEXT_MANAGER_STORAGE_PATH (or CACHE_PATH) naming a file failed the count, and one on a hung
    network filesystem made it wait for ever. It reads token_model and token_encoding only, still checked
    and named as set."""
    source = tmp_path / "notes.txt"
    text = "Привет, мир! 你好世界"
    source.write_text(text, encoding="utf-8")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", str(source))  # a file: no storage directory
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_CACHE_PATH", str(source))
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "gpt-4")
    result = cli("--json", "tokens", str(source))
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["encoding"] == "cl100k_base" and data["tokens"] == count_tokens(text, "cl100k_base")
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL")
    monkeypatch.setenv("python_context_manager_token_encoding", "cl100k_base")  # any case, as the config
    assert json.loads(cli("--json", "tokens", str(source)).stdout)["encoding"] == "cl100k_base"
    monkeypatch.setenv("python_context_manager_token_encoding", "gpt2")
    assert_one_line_error(
        cli("tokens", str(source)),
        "token_encoding: got 'gpt2'",
        "set by the environment variable python_context_manager_token_encoding",
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=200))
def test_tokens_matches_the_library_for_any_text(text: str) -> None:
    result = cli("--json", "tokens", "-", input=text)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["tokens"] == count_tokens(text)


def test_tokens_bad_paths_and_arguments(tmp_path: Path) -> None:
    assert_one_line_error(cli("tokens", str(tmp_path / "missing.txt")), "missing.txt", "No such file")
    assert_one_line_error(cli("tokens", str(tmp_path)), "is a directory")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert_one_line_error(cli("tokens", str(binary)), str(binary), "not UTF-8 text", "0xff at offset 0")
    bad_encoding = cli("tokens", "-", "--encoding", "gpt2", input="x")
    assert bad_encoding.exit_code == 2 and "gpt2" in bad_encoding.stderr
    assert cli("tokens").exit_code == 2


def test_tokens_says_a_storage_is_ignored(tmp_path: Path) -> None:
    """``--storage`` was accepted silently by ``tokens`` (which reads no store), and naming a file with it
    failed the count with "--storage ... is a file"."""
    source = tmp_path / "notes.txt"
    source.write_text("count me", encoding="utf-8")
    for storage in (tmp_path / "memory", source):
        result = cli("--json", "--storage", str(storage), "tokens", str(source))
        assert result.exit_code == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["tokens"] == count_tokens("count me")
        assert result.stderr == f"warning: --storage {storage} is ignored: tokens reads no memory store\n"
    assert not (tmp_path / "memory").exists()
    assert cli("tokens", str(source)).stderr == ""


def test_tokens_non_utf8_standard_input_is_named_like_a_file() -> None:
    result = runner.invoke(app, ["tokens", "-"], input=b"ok \xff")
    assert_one_line_error(result, "<stdin> is not UTF-8 text (byte 0xff at offset 3)")


def test_subprocess_tokens_standard_input_closed_or_not_utf8() -> None:
    """``<&-`` (no standard input at all) was an AttributeError traceback; a non-UTF-8 byte under a C locale
    (surrogateescape) gave "'utf-8' codec can't encode character '\\udcff' ...: surrogates not allowed"."""
    command = [sys.executable, "-m", "context_manager.cli", "tokens", "-"]
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *command], capture_output=True, text=True, timeout=60
    )
    assert closed.returncode == 1 and closed.stdout == "", closed.stderr
    assert closed.stderr == "error: standard input is closed; pass a file, or pipe the text in\n"
    for locale in ("C.UTF-8", "C"):
        binary = subprocess.run(
            command, input=b"ok \xff", capture_output=True, timeout=60, env=dict(os.environ, LC_ALL=locale)
        )
        assert binary.returncode == 1, binary.stderr
        assert binary.stderr.decode() == (
            "error: <stdin> is not UTF-8 text (byte 0xff at offset 3); pipe UTF-8 text in\n"
        )


# --- memory ----------------------------------------------------------------------------------------


def test_memory_add_search_stats(store: Path) -> None:
    added = cli_json(
        "--storage",
        str(store),
        "memory",
        "add",
        "Paris is the capital of France",
        "--importance",
        "0.8",
        "--tag",
        "geo",
        "--tag",
        "europe",
    )
    assert added["importance"] == 0.8 and added["tags"] == ["geo", "europe"] and added["source"] == "cli"
    cli_json("--storage", str(store), "memory", "add", "The Loire is the longest river in France")
    results = cli_json("--storage", str(store), "memory", "search", "capital of france", "--limit", "1")
    assert [memory["id"] for memory in results] == [added["id"]] and results[0]["score"] > 0
    by_tag = cli_json("--storage", str(store), "memory", "search", "France", "--tag", "geo")
    assert [memory["id"] for memory in by_tag] == [added["id"]]
    stats = cli_json("--storage", str(store), "memory", "stats")
    assert stats["total_memories"] == 2 and stats["storage_path"] == str(store)
    assert (stats["index"]["status"], stats["index"]["check"]) == ("ok", "quick")  # measured, not assumed
    table = cli("--storage", str(store), "memory", "search", "capital of france")
    assert table.exit_code == 0 and "2 result(s)" in table.stdout and "Paris" in table.stdout
    none = cli("--storage", str(store), "memory", "search", "zzzz")
    assert none.exit_code == 0 and "no matching memories" in none.stdout


def test_memory_stats_explain_memories_counted_in_two_tiers(store: Path) -> None:
    """Issue 15.4: "total 3" with tiers adding to 4 confused a user; the table says why."""
    cli_json("--storage", str(store), "memory", "add", "the freeze starts Friday", "--importance", "0.9")
    cli_json("--storage", str(store), "memory", "add", "lunch at noon")
    cli_json("--storage", str(store), "memory", "add", "standup at ten")
    stats = cli_json("--storage", str(store), "memory", "stats")
    assert (stats["total_memories"], stats["stored_copies"], stats["in_two_tiers"]) == (3, 4, 1)
    table = cli("--storage", str(store), "memory", "stats")
    assert table.exit_code == 0
    text = " ".join(table.stdout.replace("│", " ").split())  # the table may wrap the long cell
    assert "memories 3 stored copies 4 (1 memory has copies in two tiers: short-term plus a durable" in text
    assert "short-term 3 / 1000 medium-term 0 / 2000 long-term 1 / 5000" in text


def test_memory_uses_the_configured_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_CACHE_PATH", str(tmp_path / "cache"))
    cli_json("memory", "add", "stored under the cache path")
    assert (tmp_path / "cache" / "storage").is_dir()
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", str(tmp_path / "elsewhere"))
    assert_one_line_error(cli("memory", "stats"), "no memory store at", "elsewhere")
    assert not (tmp_path / "elsewhere").exists(), "a read-only command must not create a store"


def test_bad_configuration_from_the_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", "lots")
    assert_one_line_error(cli("memory", "stats"), "max_tokens: got 'lots'")


def test_a_bad_debug_variable_is_named_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_DEBUG", "banana")
    result = cli("memory", "stats")
    assert_one_line_error(result, "PYTHON_CONTEXT_MANAGER_DEBUG: got 'banana'")
    assert "ENABLE_DEBUG" not in result.stderr


def test_memory_bad_arguments_change_nothing(store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "first")
    assert_one_line_error(
        cli("--storage", str(store), "memory", "add", "x", "--importance", "3"), "importance: got 3.0"
    )
    assert_one_line_error(cli("--storage", str(store), "memory", "add", "   "), "content")
    assert_one_line_error(cli("--storage", str(store), "memory", "add", "x", "--tier", "attic"), "tier")
    assert cli("--storage", str(store), "memory", "search", "x", "--limit", "-1").exit_code == 2
    assert cli("--storage", str(store), "memory", "frobnicate").exit_code == 2
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 1


@pytest.mark.parametrize(
    "arguments",
    [
        ("x", "--importance", "2"),
        ("   ",),
        ("x", "--tier", "bogus"),
        ("x", "--user", ""),
        ("x", "--user", "   "),
        ("x", "--user", "ana\tlima"),
        ("x", "--tag", ""),
    ],
)
def test_memory_add_rejected_creates_no_store(store: Path, arguments: tuple[str, ...]) -> None:
    """The store was opened (and created) before the arguments were checked: a full empty store was left."""
    assert_one_line_error(cli("--storage", str(store), "memory", "add", *arguments))
    assert not store.exists()
    assert_one_line_error(cli("memory", "add", *arguments))  # the default store, under ./cache
    assert list(Path.cwd().iterdir()) == []


def test_memory_export_import_roundtrip(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(30):
        cli_json(
            "--storage",
            str(store),
            "memory",
            "add",
            f"fact number {index} about invoices",
            "--importance",
            str(round(index / 30, 2)),
        )
    export = tmp_path / "backup.jsonl"
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws progress bars on terminals only
    result = cli("--storage", str(store), "memory", "export", str(export))
    assert result.exit_code == 0 and "exported 30 memories" in result.stdout
    assert "exporting" in result.stderr and "30/30" in result.stderr  # the progress bar goes to stderr
    assert len(export.read_text().splitlines()) == 30
    other = tmp_path / "other"
    monkeypatch.delenv("TTY_COMPATIBLE")
    report = cli_json("--storage", str(other), "memory", "import", str(export))
    assert report["imported"] == 30 and report["replaced"] == 0
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    again = cli("--storage", str(other), "memory", "import", str(export))
    assert again.exit_code == 0 and "30 replaced" in again.stdout
    assert "checking" in again.stderr and "importing" in again.stderr
    found = cli_json("--storage", str(other), "memory", "search", "fact number 7")
    assert found[0]["content"] == "fact number 7 about invoices"


def test_memory_export_and_stats_cover_every_user(tmp_path: Path, store: Path) -> None:
    """``memory export`` wrote the default namespace only: a backup lost every named user's memories."""
    for content, user in (
        ("alice fact", "alice"),
        ("bob fact", "bob"),
        ("shared fact", None),
        ("fact of a user named default", "default"),
    ):
        cli_json("--storage", str(store), "memory", "add", content, *(["--user", user] if user else []))
    backup = tmp_path / "backup.jsonl"
    assert cli_json("--storage", str(store), "memory", "export", str(backup))["exported"] == 4
    written = [json.loads(line) for line in backup.read_text().splitlines()]
    assert sorted((record["content"], record["user_id"]) for record in written) == [
        ("alice fact", "alice"),
        ("bob fact", "bob"),
        ("fact of a user named default", "default"),
        ("shared fact", None),
    ]
    only_alice = tmp_path / "alice.jsonl"
    exported = cli_json("--storage", str(store), "memory", "export", str(only_alice), "--user", "alice")
    assert exported["exported"] == 1
    assert [json.loads(line)["content"] for line in only_alice.read_text().splitlines()] == ["alice fact"]

    stats = cli_json("--storage", str(store), "memory", "stats")
    # the default namespace is "" (no user id is empty), never the user named "default"
    assert stats["total_memories"] == 4
    assert stats["by_user"] == {"alice": 1, "bob": 1, "": 1, "default": 1}
    alice = cli_json("--storage", str(store), "memory", "stats", "--user", "alice")
    assert alice["total_memories"] == 1 and "by_user" not in alice
    table = cli("--storage", str(store), "memory", "stats")
    assert table.exit_code == 0
    rows = [" ".join(line.replace("│", " ").split()) for line in table.stdout.splitlines()]
    assert {
        "user alice 1 memory",
        "user bob 1 memory",
        "user default 1 memory",
        "default namespace 1 memory",
    } <= set(rows)

    restored = tmp_path / "restored"
    assert cli_json("--storage", str(restored), "memory", "import", str(backup))["imported"] == 4
    found = cli_json("--storage", str(restored), "memory", "search", "fact", "--user", "alice")
    assert [memory["content"] for memory in found] == ["alice fact"]
    assert cli_json("--storage", str(restored), "memory", "stats")["by_user"] == stats["by_user"]


def test_memory_import_rejects_bad_files_whole(tmp_path: Path, store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "keep me")
    good = cli_json("--storage", str(store), "memory", "export", str(tmp_path / "good.jsonl"))
    assert good["exported"] == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text((tmp_path / "good.jsonl").read_text() + '{"content": "no id"}\n')
    target = tmp_path / "target"
    assert_one_line_error(cli("--storage", str(target), "memory", "import", str(broken)), "broken.jsonl:2")
    assert not target.exists(), "nothing is imported (the store is not even created)"
    # a missing field is named as missing: the line ended in a bare "('id')"
    for missing, line in (("id", '{"content": "no id"}'), ("content", '{"id": "m-1"}')):
        broken.write_text(line + "\n")
        result = cli("--storage", str(target), "memory", "import", str(broken))
        assert_one_line_error(result, "broken.jsonl:1", f"({missing}: missing)")
    not_json = tmp_path / "notes.txt"
    not_json.write_text("just some notes\n")
    assert_one_line_error(cli("--storage", str(target), "memory", "import", str(not_json)), "notes.txt:1")
    assert_one_line_error(cli("memory", "import", str(tmp_path / "absent.jsonl")), "no such file")
    assert_one_line_error(cli("memory", "import", str(tmp_path)), "is a directory")
    assert_one_line_error(
        cli("--storage", str(store), "memory", "export", str(tmp_path / "no" / "dir" / "x.jsonl")),
        "does not exist",
    )


@pytest.mark.parametrize(
    ("bad_line", "detail"),
    [
        ('{"id": "a", "content": "x", "importance": 2}', "importance: got 2"),
        ('{"id": "a", "content": "x", "tiers": ["attic"]}', "tiers: got ['attic']"),
        ('{"id": "a", "content": "   "}', "allowed a non-empty string"),
        ('{"id": "a", "content": "x", "user_id": ""}', "user_id: got ''"),
        ('{"id": "a", "content": "x", "user_id": " "}', "user_id: got ' '"),
        ('{"id": "a", "content": "x", "superseded_by": "a"}', "a memory cannot supersede itself"),
        ('{"id": "a", "content": "x", "created_at": 1e20}', "created_at: got 1e+20; allowed seconds since"),
        ('{"id": "a", "content": "x", "metadata": []}', "metadata: got []; allowed a JSON object"),
        ('{"id": "a", "content": "x", "source": "a\\u0000b"}', "source"),
    ],
)
def test_memory_import_checks_every_line_before_creating_a_store(
    tmp_path: Path, store: Path, bad_line: str, detail: str
) -> None:
    """Lines that only import_memories refused (range, tiers, ...) were found after the store was created."""
    cli_json("--storage", str(store), "memory", "add", "keep me")
    backup = tmp_path / "backup.jsonl"
    cli_json("--storage", str(store), "memory", "export", str(backup))
    backup.write_text(backup.read_text() + bad_line + "\n")
    target = tmp_path / "target"
    result = cli("--storage", str(target), "memory", "import", str(backup))
    assert_one_line_error(result, f"{backup}:2", "a memory as written by `memory export`", detail)
    assert not target.exists(), "nothing is created for a file that is refused"


def test_memory_import_refuses_memories_superseding_one_another_before_creating_a_store(
    tmp_path: Path, store: Path
) -> None:
    """Each line is fine alone; together they hid both memories for good (each superseded by the other)."""
    backup = tmp_path / "backup.jsonl"
    records = [
        {"id": "a", "content": "first", "superseded_by": "b"},
        {"id": "b", "content": "second", "superseded_by": "a"},
    ]
    backup.write_text("".join(json.dumps(record) + "\n" for record in records))
    result = cli("--storage", str(store), "memory", "import", str(backup))
    assert_one_line_error(result, f"{backup}:1", "in a ring ('a' -> 'b' -> 'a')")
    assert not store.exists()


def test_memory_import_refuses_one_id_on_two_lines_before_creating_a_store(
    tmp_path: Path, store: Path
) -> None:
    """A file holding one id twice (two exports concatenated, an edited line pasted back) imported the later
    line only and said "imported 1 memory": the other version was gone without a word. Refused now, both
    lines named, nothing created; from standard input too."""
    records = [
        {"id": "pin", "content": "the door code is 1234", "created_at": 1.0e9},
        {"id": "other", "content": "the boiler is serviced in May", "created_at": 1.0e9},
        {"id": "pin", "content": "the door code is 9876", "created_at": 1.0e9},
    ]
    backup = tmp_path / "joined.jsonl"
    backup.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    result = cli("--storage", str(store), "memory", "import", str(backup))
    assert_one_line_error(result, f"{backup}:3", f"id 'pin' is on {backup}:1 too", "each memory once")
    assert not store.exists(), "nothing is imported (the store is not even created)"
    piped = cli("--storage", str(store), "memory", "import", "-", input=backup.read_text(encoding="utf-8"))
    assert_one_line_error(piped, "<stdin>:3", "id 'pin' is on <stdin>:1 too")
    assert not store.exists()


def test_memory_import_of_a_non_utf8_file_names_it_and_creates_nothing(tmp_path: Path, store: Path) -> None:
    """The error was Python's "'utf-8' codec can't decode ..." without the file's name."""
    export = tmp_path / "latin1.jsonl"
    export.write_bytes(b'{"id": "a", "content": "caf\xe9"}\n')
    target = tmp_path / "target"
    assert_one_line_error(
        cli("--storage", str(target), "memory", "import", str(export)),
        f"{export} is not UTF-8 text (byte 0xe9 at offset 27)",
        "`memory export`",
    )
    assert not target.exists()


def test_memory_import_takes_contents_with_unicode_line_separators(tmp_path: Path, store: Path) -> None:
    """The CLI's own check split lines at U+2028 and the like (splitlines) and refused a valid export."""
    content = "first\u2028second\x85third\u2029fourth"
    cli_json("--storage", str(store), "memory", "add", content)
    backup = tmp_path / "backup.jsonl"
    cli_json("--storage", str(store), "memory", "export", str(backup))
    target = tmp_path / "target"
    assert cli_json("--storage", str(target), "memory", "import", str(backup))["imported"] == 1
    assert cli_json("--storage", str(target), "memory", "search", "first")[0]["content"] == content


def test_memory_consolidate_and_cleanup(store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "the office wifi password changes every monday")
    cli_json(
        "--storage", str(store), "memory", "add", "the office wifi password changes every monday morning"
    )
    cli_json("--storage", str(store), "memory", "add", "lunch is at noon")
    merged = cli_json("--storage", str(store), "memory", "consolidate", "--threshold", "0.8")
    assert merged["consolidated_count"] == 2 and len(merged["groups"]) == 1
    assert_one_line_error(
        cli("--storage", str(store), "memory", "consolidate", "--threshold", "1.5"),
        "--threshold: got 1.5",  # the option's name, not the library argument's (similarity_threshold)
    )
    assert_one_line_error(
        cli("--storage", str(store), "memory", "consolidate", "--threshold", "0"), "--threshold"
    )
    cleaned = cli_json("--storage", str(store), "memory", "cleanup", "--max-age-days", "30")
    assert cleaned["removed_count"] == 2 and cleaned["superseded_removed"] == 2
    text = cli(
        "--storage", str(store), "memory", "cleanup", "--max-age-days", "0", "--keep-importance", "0.5"
    )
    assert text.exit_code == 0 and text.stdout.startswith("removed ")
    assert_one_line_error(
        cli("--storage", str(store), "memory", "cleanup", "--max-age-days", "-1"), "--max-age-days: got -1"
    )
    cli_json("--storage", str(store), "memory", "cleanup", "--max-age-days", "0")  # all the rest
    cli_json("--storage", str(store), "memory", "add", "one old note")
    one = cli("--storage", str(store), "memory", "cleanup", "--max-age-days", "0")
    assert one.exit_code == 0 and one.stdout.startswith("removed 1 memory ("), one.stdout


def _stored_bytes(store: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(store.rglob("*")) if path.is_file())


def test_memory_delete_erases_the_ids_given_and_reports_the_unknown_ones(store: Path) -> None:
    """No command deleted a memory: a wrong or sensitive one found with `memory search` stayed."""
    secret = cli_json("--storage", str(store), "memory", "add", "the door code is 4417-zebra")
    lunch = cli_json("--storage", str(store), "memory", "add", "lunch is at noon")
    kept = cli_json("--storage", str(store), "memory", "add", "standup is at ten")
    alice = cli_json("--storage", str(store), "memory", "add", "alice likes tea", "--user", "alice")
    assert b"4417-zebra" in _stored_bytes(store)

    done = cli("--storage", str(store), "memory", "delete", secret["id"], lunch["id"], secret["id"])
    assert done.exit_code == 0 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout == f"deleted {secret['id']}\ndeleted {lunch['id']}\n"
    assert b"4417-zebra" not in _stored_bytes(store), "erased from the storage's files, not only hidden"
    assert cli_json("--storage", str(store), "memory", "search", "door code") == []
    assert cli_json("--storage", str(store), "memory", "stats")["by_user"] == {"": 1, "alice": 1}

    # an unknown id, or another owner's memory, is not found; the others are still deleted (exit 1)
    result = cli("--json", "--storage", str(store), "memory", "delete", "no-such-id", kept["id"], alice["id"])
    assert json.loads(result.stdout) == {
        "user": None,
        "all_users": False,
        "deleted": [kept["id"]],
        "originals_deleted": [],
        "not_found": ["no-such-id", alice["id"]],
    }
    assert_one_line_error(
        result,
        f"no memory in the default namespace with ids 'no-such-id', '{alice['id']}'",
        f"'{alice['id']}' belongs to user 'alice': pass --user alice",
        "the other 1 deleted",
    )
    assert_one_line_error(
        cli("--storage", str(store), "memory", "delete", kept["id"]),
        f"no memory in the default namespace with id '{kept['id']}'",
    )
    assert cli_json("--storage", str(store), "memory", "delete", alice["id"], "--user", "alice") == {
        "user": "alice",
        "all_users": False,
        "deleted": [alice["id"]],
        "originals_deleted": [],
        "not_found": [],
    }
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 0


def test_memory_delete_with_all_users_deletes_any_owner_s_memory(store: Path) -> None:
    """``memory search``, ``consolidate`` and ``cleanup`` took ``--all-users``, ``memory delete`` did not:
    an operator erasing ids found with ``search --all-users`` had to look up each one's owner and run the
    command once per user. ``--all-users`` deletes the ids whoever owns them (each printed with its owner);
    with ``--user`` too it is bad usage, as elsewhere, and nothing is deleted."""
    shared = cli_json("--storage", str(store), "memory", "add", "the door code is 4417-zebra")
    alice = cli_json(
        "--storage", str(store), "memory", "add", "alice's card pin is 0000-ocelot", "--user", "alice"
    )
    bob = cli_json(
        "--storage", str(store), "memory", "add", "bob's card pin is 1111-narwhal", "--user", "bob"
    )
    kept = cli_json("--storage", str(store), "memory", "add", "carol likes tea", "--user", "carol")

    both = cli("--storage", str(store), "memory", "delete", alice["id"], "--user", "alice", "--all-users")
    assert both.exit_code == 2 and "--all-users" in both.stderr and "--user" in both.stderr, both.stderr
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 4

    done = cli("--storage", str(store), "memory", "delete", "--all-users", alice["id"], shared["id"])
    assert done.exit_code == 0 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout == f"deleted {alice['id']} (user alice)\ndeleted {shared['id']} (default namespace)\n"
    result = cli(
        "--json", "--storage", str(store), "memory", "delete", "--all-users", bob["id"], "no-such-id"
    )
    assert json.loads(result.stdout) == {
        "user": None,
        "all_users": True,
        "deleted": [bob["id"]],
        "originals_deleted": [],
        "not_found": ["no-such-id"],
    }
    assert_one_line_error(result, "no memory of any user or the default namespace with id 'no-such-id'")
    stored = _stored_bytes(store)
    assert b"4417-zebra" not in stored and b"0000-ocelot" not in stored and b"1111-narwhal" not in stored
    assert cli_json("--storage", str(store), "memory", "stats")["by_user"] == {"carol": 1}
    assert kept["id"] in cli("--storage", str(store), "memory", "search", "tea", "--user", "carol").stdout


def test_memory_delete_bad_arguments_change_nothing(tmp_path: Path, store: Path) -> None:
    added = cli_json("--storage", str(store), "memory", "add", "keep me")
    assert_one_line_error(cli("--storage", str(store), "memory", "delete", ""), "memory_id: got ''")
    assert_one_line_error(
        cli("--storage", str(store), "memory", "delete", added["id"], "--user", ""), "--user: got ''"
    )
    assert cli("--storage", str(store), "memory", "delete").exit_code == 2
    missing = tmp_path / "missing"
    assert_one_line_error(
        cli("--storage", str(missing), "memory", "delete", added["id"]), "no memory store at"
    )
    assert not missing.exists(), "no store is created where a path was mistyped"
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 1


def test_memory_delete_takes_a_consolidated_memory_s_originals(store: Path) -> None:
    """delete_memory's contract: a consolidated memory goes with the originals it was merged from."""
    for content in (
        "the office wifi password changes every monday",
        "the office wifi password changes every monday morning",
        "lunch is at noon",
    ):
        cli_json("--storage", str(store), "memory", "add", content)
    group = cli_json("--storage", str(store), "memory", "consolidate", "--threshold", "0.8")["groups"][0]
    originals = group["merged_from"]
    assert len(originals) == 2
    # an original asked for after its consolidated memory was deleted with it, not "not found"
    report = cli_json("--storage", str(store), "memory", "delete", group["merged_id"], originals[0])
    assert report == {
        "user": None,
        "all_users": False,
        "deleted": [group["merged_id"], originals[0]],
        "originals_deleted": [originals[1]],
        "not_found": [],
    }
    assert b"wifi password" not in _stored_bytes(store)
    stats = cli_json("--storage", str(store), "memory", "stats")
    assert (stats["total_memories"], stats["superseded"]) == (1, 0)


def test_memory_search_table_keeps_ids_whole_to_copy_into_delete(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns the id column was folded over three lines: an id could not be copied."""
    monkeypatch.setenv("COLUMNS", "80")
    content = "the staging database password is swordfish and it rotates on the first monday"
    added = cli_json("--storage", str(store), "memory", "add", content, "--tag", "secret", "--tag", "ops")
    table = cli("--storage", str(store), "memory", "search", "staging password")
    assert table.exit_code == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if added["id"] in line]  # whole, on one line
    assert len(rows) == 1, table.stdout
    copied = rows[0].split("│")[1].strip()
    assert copied == added["id"]
    words = " ".join(line.split("│")[3].strip() for line in lines if line.count("│") == 4)
    assert content in words and "short tier, importance 0.50, tags: secret, ops" in words
    assert cli_json("--storage", str(store), "memory", "delete", copied)["deleted"] == [added["id"]]

    # an id too long for the width (an imported one, up to 200 characters) is folded, never cut off
    record = {"id": "k" * 150, "content": "a memory about kites", "created_at": 1.0e9, "tier": "short"}
    backup = store.parent / "long-id.jsonl"
    backup.write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert cli_json("--storage", str(store), "memory", "import", str(backup))["imported"] == 1
    table = cli("--storage", str(store), "memory", "search", "kites")
    assert table.exit_code == 0, table.stdout + table.stderr
    lines = [line for line in table.stdout.splitlines() if line.count("│") == 4]
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert "".join(line.split("│")[1].strip() for line in lines) == record["id"]
    assert "a memory about kites" in " ".join(line.split("│")[3].strip() for line in lines)


# --- user data in the tables ----------------------------------------------------------------------


def test_tables_print_contents_queries_and_paths_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rich read ``[...]`` in contents, queries and paths as markup: a stray closing tag was a traceback
    (MarkupError), ``[bold]x[/bold]`` lost its tags, ``:smile:`` became an emoji."""
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the cells checked below
    store = Path("st[/x] [red]")  # relative (the test's working directory): the titles do not wrap
    for content in ("see [/x] here", "[bold]bold[/bold] word here", "a :smile: face here"):
        cli_json("--storage", str(store), "memory", "add", content)
    found = cli("--storage", str(store), "memory", "search", "here [/]")
    assert found.exit_code == 0, found.stdout + found.stderr
    assert "3 result(s) for 'here [/]'" in found.stdout
    for content in ("see [/x] here", "[bold]bold[/bold] word here", "a :smile: face here"):
        assert content in found.stdout
    stats = cli("--storage", str(store), "memory", "stats")
    assert stats.exit_code == 0, stats.stdout + stats.stderr
    assert f"memory at {store}" in stats.stdout
    health = cli("--storage", str(store), "health")
    assert health.exit_code == 0, health.stdout + health.stderr
    assert f"health of {store}: healthy" in health.stdout
    missing = Path("[bold]missing[/bold]")
    unhealthy = cli("--storage", str(missing), "health")
    assert unhealthy.exit_code == 3, unhealthy.stdout + unhealthy.stderr
    assert f"health of {missing}: unhealthy" in unhealthy.stdout
    assert f"no memory store at {missing}" in unhealthy.stdout


def test_migrate_table_prints_user_names_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    source = tmp_path / "source"
    cli_json("--storage", str(source), "memory", "add", "a fact", "--user", "[/u]")
    cli_json("--storage", str(source), "memory", "add", "another fact", "--user", "[bold]bob[/bold]")
    result = cli("memory", "migrate", "--from", str(source), "--to", str(tmp_path / "target"))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "[/u]" in result.stdout and "[bold]bob[/bold]" in result.stdout
    assert "verified: identical" in result.stdout


def test_migrate_table_reads_whole_on_an_80_column_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 80 columns (a terminal's default, and rich's width when piped) the verification table folded its
    headers and owners mid-word: "sourc" / "e", "targe" / "t", "defau" / "lt" / "names" / "pace"."""
    monkeypatch.setenv("COLUMNS", "80")
    source = tmp_path / "source"
    cli_json("--storage", str(source), "memory", "add", "a shared fact", "--importance", "0.9")
    cli_json("--storage", str(source), "memory", "add", "ana's fact", "--user", "ana")

    async def converse() -> None:  # a persisted conversation: the table's longest tier, "conversations"
        from context_manager import EnhancedContextManager

        config = ContextManagerConfig(storage_path=source, embedder="none")
        async with EnhancedContextManager(config, conversation_id="ticket-1") as manager:
            await manager.add_message("user", "Where is my order?")

    asyncio.run(converse())
    result = cli("memory", "migrate", "--from", str(source), "--to", str(tmp_path / "target"))
    assert result.exit_code == 0, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("verification") : result.stdout.index("verified: identical")]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    words = set(re.findall(r"[\w-]+", table))
    assert {
        "tier",
        "owner",
        "source",
        "target",
        "copies",
        "checksums",
        "status",
        "default",
        "namespace",
        "conversations",
    } <= words
    assert "1 / 1" in table, table
    report = cli_json(
        "memory", "migrate", "--from", str(source), "--to", str(tmp_path / "target"), "--verify-only"
    )
    for group in report["groups"]:  # each checksum is shown (its first 8 hex digits; --json has them whole)
        assert group["source_checksum"][:8] in words, (group, table)


def test_migrate_table_never_merges_a_user_named_default_with_the_default_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    source = tmp_path / "source"
    cli_json("--storage", str(source), "memory", "add", "a shared fact")
    cli_json("--storage", str(source), "memory", "add", "a fact of default", "--user", "default")
    report = cli_json("memory", "migrate", "--from", str(source), "--to", str(tmp_path / "target"))
    groups = {(group["tier"], group["user"]): group["source_count"] for group in report["groups"]}
    assert groups == {("short", ""): 1, ("short", "default"): 1}
    target = str(tmp_path / "target")
    result = cli("memory", "migrate", "--from", str(source), "--to", target, "--verify-only")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = [line.replace("│", " ").split() for line in result.stdout.splitlines()]
    assert ["short", "default", "namespace", "1", "/", "1"] in [row[:6] for row in rows]
    assert ["short", "user", "default", "1", "/", "1"] in [row[:6] for row in rows]


class _BrokenStream(io.RawIOBase):
    """A readable stream failing with an error the CLI does not expect (a bug's stand-in)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise RuntimeError("the stream broke [/x] unexpectedly")


def test_an_unexpected_error_is_one_line_and_debug_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception printed a traceback; now one line saying it is a bug, and how to see it."""
    # the command run directly (CliRunner only feeds str or bytes as standard input)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_BrokenStream())))
    with pytest.raises(SystemExit) as exited:
        app(["tokens", "-"], prog_name="context-manager")
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith(
        "error: internal error: RuntimeError: the stream broke [/x] unexpectedly"
    )
    assert "rerun with --debug" in captured.err
    with pytest.raises(RuntimeError, match="the stream broke"):
        app(["--debug", "tokens", "-"], prog_name="context-manager")


class _TeeStream:
    """A stdout an embedding program puts in place: ``write`` returns nothing (print()'s file may), and
    it has no ``isatty`` (rich takes a stream without one for no terminal)."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass


def test_a_stdout_whose_write_returns_nothing_is_written_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's stream wrapper took ``int()`` of what the stream's ``write`` returned, and called its
    ``isatty``: a stdout whose ``write`` returns ``None`` (a tee an embedding program installs; print()
    and rich ignore the value) got the output and then the command failed with "internal error:
    TypeError" (exit code 1); one without ``isatty`` (rich checks for it) failed with a traceback."""
    text = tmp_path / "notes.txt"
    text.write_text("hello world", encoding="utf-8")
    tee = _TeeStream()
    monkeypatch.setattr(sys, "stdout", tee)
    with pytest.raises(SystemExit) as exited:
        app(["tokens", str(text)], prog_name="context-manager")
    assert exited.value.code == 0
    assert "".join(tee.parts) == f"2 tokens (o200k_base) in {text}, 11 characters\n"


# --- corrupted and locked stores ---------------------------------------------------------------------


def _corrupt_database(store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "will be damaged", "--importance", "0.9")
    database = next(store.glob("*.sqlite3"))
    database.write_bytes(b"this is not an sqlite database" * 100)


def test_corrupted_database_gives_one_clear_line(store: Path) -> None:
    _corrupt_database(store)
    before = {path.name: path.read_bytes() for path in store.iterdir() if path.is_file()}
    for command in (["memory", "stats"], ["memory", "search", "damaged"], ["memory", "add", "x"]):
        assert_one_line_error(cli("--storage", str(store), *command), "damaged", "not modified")
    after = {
        path.name: path.read_bytes() for path in store.iterdir() if path.is_file() and path.name in before
    }
    assert after == before, "a damaged store is never overwritten"
    debug = cli("--debug", "--storage", str(store), "memory", "stats")
    assert debug.exit_code == 1 and isinstance(debug.exception, StorageCorruptedError)


def test_corrupted_log_gives_one_clear_line(store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "fine")
    log = next(store.glob("*.jsonl"))
    with log.open("a") as handle:
        handle.write('{"half a record\n')
    assert_one_line_error(cli("--storage", str(store), "memory", "search", "fine"), "damaged at line 2")


@pytest.mark.embeddings
@pytest.mark.parametrize("command", [("--json", "health"), ("memory", "export", "backup.jsonl")])
def test_health_and_export_embed_nothing_and_write_no_vectors(
    store: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """A store without vectors (written without an embedder) is checked or exported, not embedded.

    Opening it with an embedder embeds every memory first: minutes for a large store, and vectors written
    by commands that only read.
    """
    from context_manager.core.memory.transfer import open_storage

    async def write_and_count() -> list[tuple[str, int]]:
        async with MemoryManager(ContextManagerConfig(storage_path=store, embedder="none")) as memory:
            await memory.add_memories([{"content": f"note {number} about kites"} for number in range(20)])
        return await vector_models()

    async def vector_models() -> list[tuple[str, int]]:
        backend = open_storage(str(store), create=False)
        await backend.open()
        try:
            return await backend.vector_models()
        finally:
            await backend.close()

    assert asyncio.run(write_and_count()) == []
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_EMBEDDER", "minilm")
    result = cli("--storage", str(store), *command)
    assert result.exit_code == 0, result.stdout + result.stderr
    if command[-1] == "health":
        assert json.loads(result.stdout)["status"] == "healthy"
    else:
        assert len(Path("backup.jsonl").read_text().splitlines()) == 20
    assert asyncio.run(vector_models()) == []


def test_health_of_an_unreachable_database_does_not_call_the_database_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``health`` with memory_backend=postgres and the server down reported the store unhealthy, and beside
    it a ``database`` check "healthy: no database to check" (the store was never opened): a dashboard
    reading checks.database showed the database up. The checks with no open store to look at (``database``,
    ``storage_writes``) are left out, as the ``storage`` check of a missing directory is; so for a missing
    store."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
    monkeypatch.setenv(
        "PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/app"
    )
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_CONNECT_TIMEOUT", "1")
    result = cli("--json", "health")
    assert result.exit_code == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["checks"]["memory_store"]["status"] == "unhealthy"
    assert "cannot connect to PostgreSQL" in report["checks"]["memory_store"]["message"]
    assert "database" not in report["checks"] and "storage_writes" not in report["checks"], report["checks"]
    assert "s3cr3t-pw" not in result.stdout
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND")
    missing = json.loads(cli("--json", "--storage", str(tmp_path / "missing"), "health").stdout)
    assert missing["checks"]["memory_store"]["status"] == "unhealthy" and "database" not in missing["checks"]


def test_health_reports_healthy_missing_and_corrupted(tmp_path: Path, store: Path) -> None:
    cli_json("--storage", str(store), "memory", "add", "healthy data")
    report = cli_json("--storage", str(store), "health")
    assert report["checks"]["database"]["status"] == "healthy"
    assert report["checks"]["storage"]["status"] == "healthy"
    table = cli("--storage", str(store), "health")
    assert table.exit_code == 0 and "database and full-text index intact" in table.stdout
    # a mistyped path must fail a liveness probe, and the command creates nothing there
    missing = cli("--storage", str(tmp_path / "missing"), "health")
    assert missing.exit_code == 3, missing.stdout
    assert "no memory store at" in missing.stdout
    assert not (tmp_path / "missing").exists()
    as_json = json.loads(cli("--json", "--storage", str(tmp_path / "missing"), "health").stdout)
    assert as_json["status"] == "unhealthy" and as_json["checks"]["memory_store"]["status"] == "unhealthy"
    assert as_json["checks"]["memory_store"]["message"].endswith("(the directory does not exist)")
    assert "storage" not in as_json["checks"]  # no "recreate the directory" advice for a typo
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_store = cli("--json", "--storage", str(empty), "health")
    assert not_a_store.exit_code == 3
    message = json.loads(not_a_store.stdout)["checks"]["memory_store"]["message"]
    assert message.endswith("(the directory holds no memories.jsonl or memories.sqlite3)")
    assert list(empty.iterdir()) == [], "health must not create a store in an unrelated directory"
    damaged = tmp_path / "damaged"
    _corrupt_database(damaged)
    result = cli("--json", "--storage", str(damaged), "health")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["status"] == "unhealthy" and data["checks"]["memory_store"]["status"] == "unhealthy"
    assert "damaged" in data["checks"]["memory_store"]["message"]


def test_health_without_storage_checks_the_default_store_and_creates_nothing() -> None:
    """Without --storage, health opened (and created) ./cache/storage/storage: the check of an empty store
    nested in the real one, reported healthy whatever the real store's state."""
    cli_json("memory", "add", "the default store, under ./cache")
    report = cli_json("health")
    assert report["status"] == "healthy"
    assert list(report["checks"]["storage"]["details"]) == [str(Path("cache") / "storage")]
    assert not (Path("cache") / "storage" / "storage").exists()
    assert sorted(path.name for path in Path("cache").iterdir()) == ["storage"]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_storage_is_refused_and_nothing_is_created(empty: str) -> None:
    """typer turned ``--storage ''`` into ``Path('')``, the working directory: a store appeared there."""
    for command in (("memory", "add", "x"), ("memory", "stats"), ("health",), ("tokens", "-")):
        assert_one_line_error(
            cli("--storage", empty, *command, input="x"), f"--storage: got {empty!r}", "a non-empty path"
        )
    assert_one_line_error(cli("mcp", "serve", "--storage", empty), "--storage: got '", "a non-empty path")
    assert list(Path.cwd().iterdir()) == [], "nothing is created in the working directory"


def test_memory_commands_and_health_on_postgresql_need_no_directory(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With memory_backend=postgres every read command and health wanted a local store directory
    ("no memory store at cache/storage")."""
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", postgres_dsn)
    added = cli_json("memory", "add", "the deploy freeze starts Friday", "--user", "alice")
    found = cli_json("memory", "search", "deploy freeze", "--user", "alice")
    assert [memory["id"] for memory in found] == [added["id"]]
    stats = cli_json("memory", "stats")
    assert (stats["backend"], stats["total_memories"], stats["by_user"]) == ("postgres", 1, {"alice": 1})
    backup = tmp_path / "backup.jsonl"
    assert cli_json("memory", "export", str(backup))["exported"] == 1
    assert cli_json("memory", "consolidate", "--user", "alice")["consolidated_count"] == 0
    assert cli_json("memory", "cleanup", "--user", "alice", "--max-age-days", "30")["removed_count"] == 0
    other = cli_json("memory", "add", "a shared note to delete")
    assert_one_line_error(cli("memory", "delete", added["id"]), "belongs to user 'alice'")
    result = cli("--json", "memory", "delete", added["id"], other["id"], "--user", "alice")
    assert_one_line_error(result, f"'{other['id']}' is in the default namespace: omit --user")
    deleted = json.loads(result.stdout)
    assert (deleted["deleted"], deleted["not_found"]) == ([added["id"]], [other["id"]])
    assert cli_json("memory", "search", "deploy freeze", "--user", "alice") == []
    assert cli_json("memory", "delete", other["id"])["deleted"] == [other["id"]]
    assert cli_json("memory", "stats")["total_memories"] == 0
    for user in ("bob", "carol"):  # --all-users: every user's, on the database too
        cli_json("memory", "add", f"{user} parks on level 3", "--user", user)
    cli_json("memory", "add", "the office closes at six")
    assert len(cli_json("memory", "search", "parks level", "--all-users")) == 2
    assert cli_json("memory", "consolidate", "--all-users")["examined"] == 3
    assert cli_json("memory", "cleanup", "--max-age-days", "0", "--all-users")["removed_count"] == 3
    assert cli_json("memory", "stats")["total_memories"] == 0
    report = cli_json("health")
    assert report["status"] == "healthy" and "memory_store" not in report["checks"]
    assert report["checks"]["database"]["status"] == "healthy"
    table = cli("health")
    assert table.exit_code == 0 and "healthofpostgresql://" in "".join(table.stdout.split())  # may wrap
    assert list(Path.cwd().iterdir()) == [], "no local store is looked for, nor created"


def test_storage_path_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for command in (("memory", "stats"), ("memory", "add", "x"), ("health",)):
        result = cli("--storage", str(a_file), *command)
        assert_one_line_error(result, f"--storage {a_file} is a file")
        assert "PosixPath" not in result.stderr
    # the library's own message shows the path, not a Python repr
    with pytest.raises(ConfigurationError, match=rf"^storage_path: got '{a_file}'; allowed a directory"):
        ContextManagerConfig(storage_path=a_file)


# --- examples, version, help ----------------------------------------------------------------------


def test_examples_command_runs_a_category_and_rejects_unknown_names(tmp_path: Path) -> None:
    """Global options the examples do not use (``--storage``, ``--json``) are said to be ignored (they were
    accepted silently: the examples run on temporary storage and print text)."""
    assert cli("examples", "nonsense").exit_code == 2
    storage = tmp_path / "memory"
    options = ["--json", "--storage", str(storage)]
    completed = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", *options, "examples", "basic"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "All examples passed" in completed.stdout
    assert completed.stderr.splitlines()[:2] == [
        f"warning: --storage {storage} is ignored: the examples use temporary storage of their own",
        "warning: --json is ignored: the examples print text",
    ]
    assert not storage.exists()


def test_version_and_help() -> None:
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout.startswith("context-manager 0.")
    help_text = cli("--help").stdout
    for command in ("tokens", "memory", "health", "examples", "--storage", "--json", "--debug"):
        assert command in help_text
    memory_help = cli("memory", "--help").stdout
    for command in ("add", "search", "stats", "export", "import", "consolidate", "cleanup"):
        assert command in memory_help


# --- as a real subprocess ----------------------------------------------------------------------------


def run_cli(
    *arguments: str, input: str | None = None, script: bool = False
) -> subprocess.CompletedProcess[str]:
    command = (
        [str(Path(sys.executable).with_name("context-manager"))]
        if script
        else [sys.executable, "-m", "context_manager.cli"]
    )
    return subprocess.run(
        [*command, *arguments],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )


def test_memory_commands_on_a_hung_filesystem_end_and_say_so(tmp_path: Path) -> None:
    """``memory stats`` (what a monitoring script runs every minute) on storage on a hung network
    filesystem never returned, nor did ``memory cleanup`` from cron or ``memory add``: the configuration's
    look at the path blocked for ever, and every run left one more stuck process. As ``health``, they
    end within about 10 s with an error saying the storage does not answer (exit code 1)."""
    from tests.hung_filesystem import hung_mount

    commands = {
        "stats": ["memory", "stats"],
        "cleanup": ["memory", "cleanup", "--max-age-days", "30"],
        "add": ["memory", "add", "a memory"],  # a command that creates the store looks at it too
    }
    processes: dict[str, subprocess.Popen[str]] = {}
    results: dict[str, tuple[str, str, int | None]] = {}
    with hung_mount(tmp_path) as hung:
        try:
            started = time.monotonic()
            for name, args in commands.items():
                processes[name] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "context_manager.cli",
                        "--storage",
                        str(hung.path / "memory"),
                        *args,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=dict(os.environ, COLUMNS="200"),
                )
            for name, process in processes.items():
                remaining = max(1.0, 45 - (time.monotonic() - started))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    results[name] = (*process.communicate(timeout=remaining), process.returncode)
            elapsed = time.monotonic() - started
        finally:
            hung.release()  # a process blocked on the mount cannot even be killed before
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                process.communicate()
    assert set(results) == set(commands), f"never returned: {set(commands) - set(results)}"
    said = f"error: the storage at {hung.path / 'memory'} does not answer within 10 s"
    for name, (stdout, stderr, code) in results.items():
        assert code == 1, (name, stdout, stderr)
        assert stderr.startswith(said) and "hung NFS or SMB mount" in stderr, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert elapsed < 45


def test_health_of_a_store_on_a_hung_filesystem_ends_and_says_so(tmp_path: Path) -> None:
    """``health`` on storage on a hung network filesystem never returned: its first look for the store
    (does the directory exist?) blocked for ever, before any check with a time limit ran. It reports the
    storage not answering (unhealthy, exit code 3) within about the check timeout."""
    from tests.hung_filesystem import hung_mount

    with hung_mount(tmp_path) as hung:
        try:
            started = time.monotonic()
            result = run_cli("--json", "--storage", str(hung.path / "memory"), "health")
            elapsed = time.monotonic() - started
        finally:
            hung.release()
    assert result.returncode == 3, result.stdout + result.stderr
    assert elapsed < 45
    report = json.loads(result.stdout)
    store = report["checks"]["memory_store"]
    assert store["status"] == "unhealthy" and "does not answer" in store["message"], store
    assert "hung" in (store["recommendation"] or "")


def test_installed_script_and_module_agree(store: Path) -> None:
    assert Path(sys.executable).with_name("context-manager").exists(), "pip install -e . installs the script"
    counted = run_cli("--json", "tokens", "-", input="count me exactly", script=True)
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["tokens"] == count_tokens("count me exactly")
    added = run_cli("--json", "--storage", str(store), "memory", "add", "subprocess memory")
    assert added.returncode == 0, added.stderr
    found = run_cli("--json", "--storage", str(store), "memory", "search", "subprocess", script=True)
    assert json.loads(found.stdout)[0]["id"] == json.loads(added.stdout)["id"]


def test_python_dash_m_context_manager_runs_the_command(store: Path) -> None:
    """``python -m context_manager`` (a virtualenv whose scripts are not on the PATH) is the command."""
    command = [sys.executable, "-m", "context_manager"]
    counted = subprocess.run(
        [*command, "--json", "tokens", "-"], input="count me", capture_output=True, text=True, timeout=60
    )
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["tokens"] == count_tokens("count me")
    usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "python -m context_manager" in usage.stdout
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("context-manager 0."), version.stderr


def test_subprocess_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path, store: Path) -> None:
    missing = run_cli("tokens", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and missing.stdout == ""
    assert missing.stderr.startswith("error: ") and "nope.txt" in missing.stderr
    usage = run_cli("memory", "search")
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
    _corrupt_database(store)
    damaged = run_cli("--storage", str(store), "memory", "stats")
    assert damaged.returncode == 1 and damaged.stderr.count("\n") == 1 and "damaged" in damaged.stderr
    debug = run_cli("--debug", "--storage", str(store), "memory", "stats")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StorageCorruptedError" in debug.stderr


def test_subprocess_reports_a_locked_store(store: Path) -> None:
    async def hold_and_run() -> subprocess.CompletedProcess[str]:
        async with MemoryManager(ContextManagerConfig(storage_path=store)):
            return await asyncio.to_thread(run_cli, "--storage", str(store), "memory", "stats")

    locked = asyncio.run(hold_and_run())
    assert locked.returncode == 1, locked.stdout + locked.stderr
    assert locked.stderr.count("\n") == 1 and "is locked by" in locked.stderr
    assert run_cli("--storage", str(store), "memory", "stats").returncode == 0  # released on close


def test_subprocess_import_reads_a_pipe_and_standard_input(tmp_path: Path, store: Path) -> None:
    """``memory import <(zcat backup.jsonl.gz)`` (a pipe, readable once) and ``memory import -``."""
    assert run_cli("--storage", str(store), "memory", "add", "Paris is the capital of France").returncode == 0
    exported = tmp_path / "backup.jsonl"
    assert run_cli("--storage", str(store), "memory", "export", str(exported)).returncode == 0
    piped = subprocess.run(
        ["bash", "-c", 'exec "$0" -m context_manager.cli --storage "$1" --json memory import <(cat "$2")']
        + [sys.executable, str(tmp_path / "from-pipe"), str(exported)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert json.loads(piped.stdout)["imported"] == 1
    standard = run_cli(
        "--storage",
        str(tmp_path / "from-stdin"),
        "--json",
        "memory",
        "import",
        "-",
        input=exported.read_text(),
    )
    assert standard.returncode == 0, standard.stdout + standard.stderr
    assert json.loads(standard.stdout)["imported"] == 1
    for copy in ("from-pipe", "from-stdin"):
        found = run_cli("--storage", str(tmp_path / copy), "--json", "memory", "search", "capital of France")
        assert [row["content"] for row in json.loads(found.stdout)] == ["Paris is the capital of France"]
    bad = run_cli("--storage", str(tmp_path / "bad"), "memory", "import", "-", input="not json\n")
    assert bad.returncode == 1 and bad.stderr.startswith("error: <stdin>:1") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_subprocess_bad_paths_arguments_and_a_damaged_log(tmp_path: Path, store: Path) -> None:
    def assert_one_line(completed: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
        assert completed.returncode == code, completed.stdout + completed.stderr
        assert completed.stderr.count("\n") == 1 and completed.stderr.startswith("error: "), completed.stderr
        assert completed.stdout == "" and "Traceback" not in completed.stderr
        for fragment in fragments:
            assert fragment in completed.stderr

    nowhere = tmp_path / "nowhere"
    assert_one_line(run_cli("--storage", str(nowhere), "memory", "search", "x"), "no memory store at")
    assert not nowhere.exists(), "a read-only command must not create a store"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line(run_cli("--storage", str(a_file), "memory", "stats"), f"--storage {a_file} is a file")

    assert run_cli("--json", "--storage", str(store), "memory", "add", "kept").returncode == 0
    assert_one_line(
        run_cli("--storage", str(store), "memory", "add", "x", "--importance", "3"), "importance: got 3.0"
    )
    unknown = run_cli("--storage", str(store), "memory", "add", "x", "--colour", "red")
    assert unknown.returncode == 2 and "No such option" in unknown.stderr
    assert_one_line(
        run_cli("--storage", str(store), "memory", "import", str(tmp_path / "none.jsonl")), "none.jsonl"
    )

    log = next(store.glob("*.jsonl"))
    with log.open("a") as handle:
        handle.write('{"half a record\n')
    assert_one_line(run_cli("--storage", str(store), "memory", "stats"), "damaged at line", "not modified")


# --- read-only commands, standard output, ignored options ---------------------------------------


def _write_twenty_short_term_memories(store: Path) -> None:
    async def write() -> None:
        async with MemoryManager(ContextManagerConfig(storage_path=store, embedder="none")) as memory:
            await memory.add_memories([{"content": f"note {number} about kites"} for number in range(20)])

    asyncio.run(write())


def test_inspection_commands_move_nothing_under_smaller_capacities(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory stats``, ``memory export``, ``memory search`` and ``health`` opened the store with the
    configured capacities and rebalanced it: a store written with a large short-term capacity came out of a
    ``memory stats`` with its memories moved down (and ``migrate --verify-only`` against a copy of the
    original then differed)."""
    import shutil

    _write_twenty_short_term_memories(store)
    original = tmp_path / "original"
    shutil.copytree(store, original)
    # the commands run with smaller capacities than the store was written with
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_SHORT_TERM_MEMORY_SIZE", "5")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEDIUM_TERM_MEMORY_SIZE", "5")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")
    stats = cli_json("--storage", str(store), "memory", "stats")
    assert stats["by_tier"] == {"short": 20, "medium": 0, "long": 0}
    assert stats["over_capacity"], "the figures say the tiers are over this configuration's capacities"
    backup = tmp_path / "backup.jsonl"
    assert cli_json("--storage", str(store), "memory", "export", str(backup))["exported"] == 20
    assert all(json.loads(line)["tier"] == "short" for line in backup.read_text().splitlines())
    assert cli_json("--storage", str(store), "health")["status"] != "unhealthy"
    verify = ("memory", "migrate", "--verify-only", "--from", str(original), "--to", str(store))
    verified = cli("--json", *verify)
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    # a search moves no memory either (its results count as accessed, as with search_memory)
    found = cli_json("--storage", str(store), "memory", "search", "kites", "--limit", "3")
    assert len(found) == 3 and all(memory["tier"] == "short" for memory in found)
    assert cli_json("--storage", str(store), "memory", "stats")["by_tier"] == stats["by_tier"]


def test_memory_manager_can_open_without_rebalancing(store: Path) -> None:
    _write_twenty_short_term_memories(store)
    small = ContextManagerConfig(
        storage_path=store, embedder="none", short_term_memory_size=5, medium_term_memory_size=5
    )

    async def by_tier(**options: Any) -> dict[str, int]:
        async with MemoryManager(small, **options) as memory:
            stats = await memory.get_memory_stats()
        return dict(stats["by_tier"])

    assert asyncio.run(by_tier(rebalance_on_open=False)) == {"short": 20, "medium": 0, "long": 0}
    moved = asyncio.run(by_tier())  # the default: opening brings the tiers within their capacities
    assert moved["short"] <= 5 and moved["medium"] <= 5 and sum(moved.values()) == 20
    with pytest.raises(InvalidArgumentError, match="rebalance_on_open"):
        MemoryManager(small, rebalance_on_open="no")  # type: ignore[arg-type]


def test_memory_export_dash_writes_standard_output_only(tmp_path: Path, store: Path) -> None:
    """``memory export -`` wrote a file named ``-`` (``memory import -`` reads standard input)."""
    _write_twenty_short_term_memories(store)
    for arguments in ((), ("--json",)):
        result = cli(*arguments, "--storage", str(store), "memory", "export", "-")
        assert result.exit_code == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 20 and all(json.loads(line)["content"].endswith("about kites") for line in lines)
        assert "exported 20 memories to <stdout>" in result.stderr
        assert not Path("-").exists()
    other = tmp_path / "other"
    piped = cli("--json", "--storage", str(other), "memory", "import", "-", input=result.stdout)
    assert piped.exit_code == 0 and json.loads(piped.stdout)["imported"] == 20


def test_subprocess_memory_export_to_standard_output(store: Path) -> None:
    _write_twenty_short_term_memories(store)
    exported = run_cli("--storage", str(store), "memory", "export", "-")
    assert exported.returncode == 0, exported.stderr
    assert len([json.loads(line) for line in exported.stdout.splitlines()]) == 20
    assert "exported 20 memories" in exported.stderr


def test_storage_is_said_to_be_ignored_with_postgres(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--storage`` was silently ignored with ``memory_backend=postgres``: the memories went to the
    database while the user believed them in the directory."""
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", postgres_dsn)
    directory = tmp_path / "dir"
    warning = f"warning: --storage {directory} is ignored: memory_backend is postgres"
    for command in (
        ("memory", "add", "the freeze starts Friday"),
        ("memory", "search", "freeze"),
        ("memory", "stats"),
        ("health",),
    ):
        result = cli("--json", "--storage", str(directory), *command)
        assert result.exit_code == 0, result.stdout + result.stderr
        json.loads(result.stdout)  # stdout holds the result only
        assert result.stderr.count(warning) == 1, result.stderr
    quiet = cli("--json", "memory", "stats")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    assert not directory.exists()


def test_storage_is_said_to_be_ignored_by_migrate(tmp_path: Path, store: Path) -> None:
    import shutil

    _write_twenty_short_term_memories(store)
    shutil.copytree(store, tmp_path / "copy")
    verify = ("memory", "migrate", "--verify-only", "--from", str(store), "--to", str(tmp_path / "copy"))
    result = cli("--json", "--storage", str(tmp_path / "elsewhere"), *verify)
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
    assert f"warning: --storage {tmp_path / 'elsewhere'} is ignored: memory migrate uses --from and --to" in (
        result.stderr
    )


def test_subprocess_memory_export_to_a_reader_that_stops(store: Path) -> None:
    """``memory export - | head -1``: one line naming what happened, not ``[Errno 32] Broken pipe``."""

    async def write() -> None:
        async with MemoryManager(ContextManagerConfig(storage_path=store, embedder="none")) as memory:
            await memory.add_memories([{"content": f"note {n} " + "kite " * 300} for n in range(400)])

    asyncio.run(write())
    process = subprocess.Popen(
        [sys.executable, "-m", "context_manager.cli", "--storage", str(store), "memory", "export", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["content"].startswith("note ")
    process.stdout.close()  # more than a pipe's buffer is still to come
    error = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert error == "error: standard output was closed before the whole export (400 memories) was written\n"


@pytest.mark.parametrize(
    "group", [[], ["memory"], ["mcp"], ["conversations"]], ids=["top", "memory", "mcp", "conversations"]
)
def test_help_lists_each_command_with_a_whole_summary_and_plain_metavars(group: list[str]) -> None:
    """On an 80-column terminal the command lists read as sentences, not cut off with "..."."""
    result = runner.invoke(app, [*group, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.stderr
    commands = result.stdout.split("Commands:\n", 1)[1]
    assert commands.strip() and "..." not in commands, commands
    assert "list[str]" not in cli("memory", "add", "--help").stdout  # --tag TAG, repeatable
    assert "``" not in cli("health", "--help").stdout  # help is plain text, not reStructuredText


def _option_lines(path: list[str]) -> dict[str, str]:
    """``{"--user": "--user NAME", ...}``: each option's first line in ``context-manager PATH --help``."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.stderr
    options = result.stdout.split("Options:\n", 1)[1].split("\n\n", 1)[0]
    found = {}
    for line in options.splitlines():
        words = line.split("  ")[1:] if line.startswith("  -") else []
        usage = next((word.strip() for word in words if word.strip()), "")
        if usage:
            found[usage.split(", ")[-1].split(" ")[0]] = usage.split(", ")[-1]
    return found


def test_options_show_the_value_they_take_in_words_the_docs_use() -> None:
    """``--help`` showed typer's type labels: ``--user <str>``, ``--http <int range>``, ``--limit <int
    range>``, ``--max-age-days <float>``, where the docs write ``--user NAME`` and ``--http PORT``."""
    import typer

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    docs = "\n".join(path.read_text(encoding="utf-8") for path in pages)
    written = set(re.findall(r"(--[a-z][a-z-]+) ([A-Z][A-Z_]*(?:[|:=][A-Z_]+)?)\b", docs))
    command: Any = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(group: Any, path: list[str]) -> None:
        paths.append(path)
        for name, child in getattr(group, "commands", {}).items():
            walk(child, [*path, name])

    walk(command, [])
    shown: dict[str, set[str]] = {}
    for path in paths:
        for option, usage in _option_lines(path).items():
            assert not re.search(r"<[a-z]", usage) or option == "--encoding", f"{path} {usage}"
            shown.setdefault(option, set()).add(usage)
    assert shown["--user"] == {"--user NAME"} and shown["--http"] == {"--http PORT"}
    wrong = sorted(
        f"{option} {metavar} (--help: {sorted(shown[option])})"
        for option, metavar in written
        if option in shown and f"{option} {metavar}" not in shown[option]
    )
    assert wrong == [], "\n".join(wrong)
    # arguments are named in capitals too, as FILE|- and ID are: memory search showed {query}, examples [name]
    for path in paths:
        usage = runner.invoke(app, [*path, "--help"], terminal_width=200).stdout.splitlines()[0]
        assert not re.search(r"[{\[][a-z]", usage.replace("[OPTIONS]", "").replace("[ARGS]", "")), usage
    # and what a command says it does holds with its options: export wrote "every memory of every user"
    # above its own --user option
    export = runner.invoke(app, ["memory", "export", "--help"], terminal_width=200).stdout
    assert "--user NAME" in export and "every memory of every user" not in export


def test_health_of_a_store_a_running_process_holds_is_degraded_not_unhealthy(store: Path) -> None:
    """A service holds its store (one process at a time): `health` pointed at it said unhealthy (exit 3),
    so a probe wired to the command failed for as long as the service ran. The store is reported in use,
    not checked from here (degraded), and the command exits 0."""
    cli_json("--storage", str(store), "memory", "add", "held data")

    async def hold_and_run() -> subprocess.CompletedProcess[str]:
        async with MemoryManager(ContextManagerConfig(storage_path=store, embedder="none")):
            return await asyncio.to_thread(run_cli, "--json", "--storage", str(store), "health")

    held = asyncio.run(hold_and_run())
    assert held.returncode == 0, held.stdout + held.stderr
    report = json.loads(held.stdout)
    check = report["checks"]["memory_store"]
    assert report["status"] == "degraded" and check["status"] == "degraded"
    assert f"pid {os.getpid()}" in check["message"] and "not checked" in check["message"]
    released = json.loads(run_cli("--json", "--storage", str(store), "health").stdout)
    assert released["status"] == "healthy" and "memory_store" not in released["checks"]


def test_subprocess_text_output_shows_control_characters_instead_of_sending_them_to_the_terminal(
    tmp_path: Path, store: Path
) -> None:
    """A memory's text is untrusted (a conversation, an import): ``memory search``, ``consolidate`` and
    ``delete`` wrote its escape sequences raw to the operator's terminal (colours, a window title, a
    C1 CSI; OSC 52 writes the clipboard). They are shown as ``\\x1b`` escapes now; newlines and tabs
    stay, and ``--json`` (which escapes them itself) gives the text unchanged."""
    evil = "deploy key \x1b]0;pwned\x07 is \x1b[8mhidden\x1b[0m \x9b31m and\rover\ttabbed\nnext line"
    records = [
        {"id": "id\x1b[2J", "content": evil, "tags": ["tag\x1b[5m"], "created_at": 1.0e9, "tier": "short"},
        {"id": "twin", "content": evil + " again", "created_at": 1.0e9, "tier": "short"},
    ]
    backup = tmp_path / "evil.jsonl"
    backup.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    assert run_cli("--storage", str(store), "memory", "import", str(backup)).returncode == 0

    def assert_shown_escaped(completed: subprocess.CompletedProcess[str]) -> None:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        for control in ("\x1b", "\x9b", "\x07", "\r"):
            assert control not in completed.stdout + completed.stderr, repr(completed.stdout)

    found = run_cli("--storage", str(store), "memory", "search", "deploy key")
    assert_shown_escaped(found)
    shown = ("\\x1b]0;pwned\\x07", "\\x1b[8mhidden", "\\x9b31m", "and\\x0dover", "id\\x1b[2J", "tag\\x1b[5m")
    for escaped in shown:
        assert escaped in found.stdout, found.stdout
    assert "next line" in found.stdout and "\t" not in found.stdout  # the tab expanded, not escaped
    as_json = run_cli("--storage", str(store), "--json", "memory", "search", "deploy key")
    assert {row["content"] for row in json.loads(as_json.stdout)} == {evil, evil + " again"}

    merged = run_cli("--storage", str(store), "memory", "consolidate", "--threshold", "0.5")
    assert_shown_escaped(merged)
    assert "\\x1b[8mhidden" in merged.stdout and "merged 2 memories into 1" in merged.stdout
    merged_id = merged.stdout.splitlines()[1].split(":")[0].strip()
    deleted = run_cli("--storage", str(store), "memory", "delete", merged_id)
    assert_shown_escaped(deleted)
    assert "deleted id\\x1b[2J (an original of a consolidated memory)" in deleted.stdout


def test_memory_search_consolidate_and_cleanup_cover_every_user_with_all_users(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory cleanup`` (and ``consolidate``, ``search``) worked on one namespace at a time: a cron job
    cleaning a store that an application fills per user never removed any user's memories, and the
    CLI had no way to name them all. ``--all-users`` covers every user and the default namespace."""
    monkeypatch.setenv("COLUMNS", "200")
    wifi = "the office wifi password changes every monday"
    for user in (None, "alice", "bob"):
        where = ["--user", user] if user else []
        cli_json("--storage", str(store), "memory", "add", wifi, *where)
        cli_json("--storage", str(store), "memory", "add", wifi + " morning", *where)
    cli_json("--storage", str(store), "memory", "add", "lunch is at noon", "--user", "carol")

    found = cli_json("--storage", str(store), "memory", "search", "wifi password", "--all-users")
    assert sorted(str(row["user_id"]) for row in found) == ["None", "None", "alice", "alice", "bob", "bob"]
    table = cli("--storage", str(store), "memory", "search", "wifi password", "--all-users")
    assert table.exit_code == 0, table.stdout + table.stderr
    assert "user alice" in table.stdout and "user bob" in table.stdout and "default namespace" in table.stdout
    assert len(cli_json("--storage", str(store), "memory", "search", "wifi password")) == 2  # as before

    # --user and --all-users together: bad usage, nothing done
    both = cli(
        "--storage", str(store), "memory", "cleanup", "--max-age-days", "0", "--user", "bob", "--all-users"
    )
    assert both.exit_code == 2 and "--all-users" in both.stderr and "--user" in both.stderr, both.stderr
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 7

    merged = cli_json("--storage", str(store), "memory", "consolidate", "--threshold", "0.8", "--all-users")
    assert merged["consolidated_count"] == 6 and len(merged["groups"]) == 3  # one per user, never across
    by_user = cli_json("--storage", str(store), "memory", "stats", "--all-users")["by_user"]
    assert by_user == cli_json("--storage", str(store), "memory", "stats")["by_user"]
    assert by_user == {"": 3, "alice": 3, "bob": 3, "carol": 1}  # two originals kept with each merge
    backup = tmp_path / "backup.jsonl"
    assert cli_json("--storage", str(store), "memory", "export", str(backup), "--all-users")["exported"] == 10

    # as a cron job runs it: a real process, every user's old memories and superseded originals
    cleaned = run_cli(
        "--storage", str(store), "--json", "memory", "cleanup", "--max-age-days", "0", "--all-users"
    )
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert json.loads(cleaned.stdout)["removed_count"] == 10
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 0


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (("memory", "cleanup", "--keep-importance", "5"), "--keep-importance: got 5.0"),
        (("memory", "cleanup", "--user", " "), "--user: got ' '"),
        (("memory", "consolidate", "--user", "a\tb"), "--user: got 'a\\tb'"),
        (("memory", "search", "tea", "--user", ""), "--user: got ''"),
        (("memory", "stats", "--user", ""), "--user: got ''"),
        (("memory", "export", "-", "--user", ""), "--user: got ''"),
        (("memory", "delete", "some-id", "--user", ""), "--user: got ''"),
        (("memory", "add", "tea", "--user", ""), "--user: got ''"),
        (("memory", "add", "tea", "--importance", "2"), "--importance: got 2.0"),
        (("memory", "add", "tea", "--tier", "attic"), "--tier: got 'attic'"),
        (("memory", "add", "tea", "--tag", ""), "--tag: got ['']"),
    ],
)
def test_memory_option_errors_name_the_option(store: Path, arguments: tuple[str, ...], named: str) -> None:
    """An option's bad value was named as the library's argument (``keep_importance: got 5.0``,
    ``user_id: got ''``): there is no such option to fix. ``--threshold`` and ``--max-age-days`` were
    named already; now every memory option is."""
    cli_json("--storage", str(store), "memory", "add", "a first memory")
    assert_one_line_error(cli("--storage", str(store), *arguments), f"error: {named}")
    assert cli_json("--storage", str(store), "memory", "stats")["total_memories"] == 1


@pytest.mark.parametrize("query", ["", "   ", "\t"])
def test_memory_search_refuses_a_blank_query(store: Path, query: str) -> None:
    """``memory search "$QUERY"`` with the variable unset answered "no matching memories" (exit 0): the
    store seemed to hold nothing on the subject. A blank query is an error, as for the MCP server."""
    cli_json("--storage", str(store), "memory", "add", "the wifi password is swordfish")
    assert_one_line_error(
        cli("--storage", str(store), "memory", "search", query), f"error: query: got {query!r}; allowed"
    )
    assert_one_line_error(cli("--storage", str(store), "--json", "memory", "search", query), "query")
    assert len(cli_json("--storage", str(store), "memory", "search", "wifi")) == 1


def test_subprocess_storage_ignored_with_postgres_and_no_dsn_does_not_call_the_directory_a_database(
    tmp_path: Path,
) -> None:
    """With ``memory_backend=postgres`` and no DSN the warning said the memories were in "the database
    postgres_dsn names (/the/storage/dir)": the directory given, as if it were the database."""
    directory = tmp_path / "dir"
    for command in (("memory", "stats"), ("mcp", "serve")):
        completed = subprocess.run(
            [sys.executable, "-m", "context_manager.cli", "--storage", str(directory), *command],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND": "postgres"},
        )
        assert completed.returncode == 1 and completed.stdout == "", completed.stderr
        warning, error = completed.stderr.splitlines()
        assert warning.startswith(f"warning: --storage {directory} is ignored: memory_backend is postgres")
        assert f"({directory})" not in warning and "postgres_dsn is not set" in warning, warning
        assert error.startswith("error: postgres_dsn: got None"), error
        assert not directory.exists()


def test_subprocess_memory_export_into_a_named_pipe_or_process_substitution(
    tmp_path: Path, store: Path
) -> None:
    """``memory export FIFO`` wrote a temporary file and renamed it over the pipe: the pipe was replaced by
    a regular file, its reader got nothing (and waited), and the command said "exported 2 memories".
    ``memory export >(gzip > backup.jsonl.gz)`` failed (no temporary file can be made in /dev/fd). A path
    that is no regular file is written through now (as ``memory import`` reads pipes)."""
    import stat
    import threading

    for content in ("the boiler is serviced in May", "the alarm code is 4711"):
        assert run_cli("--storage", str(store), "memory", "add", content).returncode == 0
    fifo = tmp_path / "backup.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as pipe:  # blocks until the writer opens it
            received.append(pipe.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        exported = run_cli("--storage", str(store), "memory", "export", str(fifo))
    finally:
        if reader.is_alive():  # the writer never opened the pipe: open it so the reader ends
            with open(fifo, "wb"):  # noqa: PTH123
                pass
        reader.join(10)
    assert exported.returncode == 0, exported.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode), "the pipe is still a pipe"
    lines = received[0].decode().splitlines()
    assert sorted(json.loads(line)["content"] for line in lines) == [
        "the alarm code is 4711",
        "the boiler is serviced in May",
    ]

    copy = tmp_path / "copy.jsonl"
    substituted = subprocess.run(
        ["bash", "-c", 'exec "$0" -m context_manager.cli --storage "$1" memory export >(cat > "$2")']
        + [sys.executable, str(store), str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert substituted.returncode == 0, substituted.stderr
    for _ in range(100):  # the substituted process writes the file after the command ends
        if copy.exists() and len(copy.read_text().splitlines()) == 2:
            break
        time.sleep(0.05)
    assert [json.loads(line)["content"] for line in copy.read_text().splitlines()] == [
        json.loads(line)["content"] for line in lines
    ]

    # a link to standard output (as /dev/stdout is): the JSON Lines there, and nothing else (the summary
    # goes to stderr, as with -)
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    for json_output in ([], ["--json"]):
        through = run_cli("--storage", str(store), *json_output, "memory", "export", str(link))
        assert through.returncode == 0, through.stderr
        assert [json.loads(line)["content"] for line in through.stdout.splitlines()] == [
            json.loads(line)["content"] for line in lines
        ]
        assert "exported 2 memories" in through.stderr and link.is_symlink()


def test_memory_add_says_an_important_memory_also_has_a_long_term_copy(store: Path) -> None:
    """``memory add --importance 0.9`` printed "(short tier)" only: the user took an important fact for one
    that short-term eviction could take, though it is also kept long-term (as ``memory stats`` counts)."""
    important = cli(
        "--storage", str(store), "memory", "add", "the server room code is 2291", "--importance", "0.9"
    )
    assert important.exit_code == 0, important.stderr
    assert important.stdout.rstrip().endswith("(short tier, with a long-term copy)"), important.stdout
    plain = cli("--storage", str(store), "memory", "add", "lunch is at noon")
    assert plain.stdout.rstrip().endswith("(short tier)"), plain.stdout
    placed = cli(
        "--storage", str(store), "memory", "add", "a placed fact", "--importance", "0.9", "--tier", "medium"
    )
    assert placed.stdout.rstrip().endswith("(medium tier)"), placed.stdout
    stats = cli_json("--storage", str(store), "memory", "stats")
    assert stats["in_two_tiers"] == 1 and stats["by_tier"]["long"] == 1


def test_memory_import_of_one_memory_says_1_memory(tmp_path: Path, store: Path) -> None:
    backup = tmp_path / "one.jsonl"
    backup.write_text(
        json.dumps({"id": "a", "content": "one fact", "created_at": 1.0e9}) + "\n", encoding="utf-8"
    )
    imported = cli("--storage", str(store), "memory", "import", str(backup))
    assert imported.exit_code == 0 and imported.stdout.startswith("imported 1 memory (0 replaced;"), (
        imported.stdout
    )


def test_subprocess_memory_export_to_standard_output_redirected_into_a_file(
    tmp_path: Path, store: Path
) -> None:
    """``memory export /dev/stdout > out.jsonl`` (stdout a regular file): the path is a link to the open
    file (``/proc/self/fd/1``), yet it was taken for a file to replace: a temporary file beside it was
    renamed over the link (as root, ``/dev/stdout`` itself), out.jsonl got the summary line only. Such a
    path is written through now, the summary on stderr. (A link made in tmp_path stands for /dev/stdout.)"""
    for content in ("the boiler is serviced in May", "the alarm code is 4711"):
        assert run_cli("--storage", str(store), "memory", "add", content).returncode == 0
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    out = tmp_path / "out.jsonl"
    exported = subprocess.run(
        ["bash", "-c", 'exec "$0" -m context_manager.cli --storage "$1" memory export "$2" > "$3"']
        + [sys.executable, str(store), str(link), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    assert link.is_symlink(), "the link was replaced by a file"
    assert sorted(json.loads(line)["content"] for line in out.read_text().splitlines()) == [
        "the alarm code is 4711",
        "the boiler is serviced in May",
    ]
    assert "exported 2 memories" in exported.stderr


def test_subprocess_json_output_escapes_del_and_c1_controls(tmp_path: Path, store: Path) -> None:
    """``--json`` was said to escape control characters itself, but ``json.dumps(ensure_ascii=False)``
    escapes only U+0000-U+001F: DEL and the C1 controls (U+009B is a CSI to many terminals) of a stored
    memory reached the operator's terminal raw. They are written as ``\\u009b`` now (the same JSON)."""
    evil = "deploy key \x9b31m red \x7f \x85 done"
    backup = tmp_path / "evil.jsonl"
    backup.write_text(json.dumps({"id": "c1", "content": evil, "created_at": 1.0e9}) + "\n", encoding="utf-8")
    assert run_cli("--storage", str(store), "memory", "import", str(backup)).returncode == 0
    found = run_cli("--storage", str(store), "--json", "memory", "search", "deploy key")
    assert found.returncode == 0, found.stderr
    for control in ("\x9b", "\x7f", "\x85"):
        assert control not in found.stdout, repr(found.stdout)
    assert [row["content"] for row in json.loads(found.stdout)] == [evil]


def test_subprocess_json_output_is_strict_json(tmp_path: Path, store: Path) -> None:
    """A memory whose metadata another program wrote into the store with a NaN or an infinity (SQLite's and
    Python's JSON readers take them) made ``--json memory search`` write ``NaN`` and ``-Infinity``: not JSON
    to jq or JavaScript. Every ``--json`` output is strict JSON now, such a number written as ``null``."""
    backup = tmp_path / "one.jsonl"
    line = {"id": "m1", "content": "the ferry to Porto", "importance": 0.9, "metadata": {"score": 1.5}}
    backup.write_text(json.dumps({**line, "created_at": 1.0e9}) + "\n", encoding="utf-8")
    assert run_cli("--storage", str(store), "memory", "import", str(backup)).returncode == 0
    with contextlib.closing(sqlite3.connect(store / "memories.sqlite3")) as database:
        database.execute("UPDATE memories SET metadata = ?", ('{"score": NaN, "weight": -Infinity}',))
        database.commit()
    for log in store.glob("*.jsonl"):
        log.write_text(log.read_text().replace('"score": 1.5', '"score": NaN'))

    def strict(text: str) -> Any:
        def refuse(constant: str) -> None:
            raise AssertionError(f"{constant} is not JSON")

        return json.loads(text, parse_constant=refuse)

    found = run_cli("--storage", str(store), "--json", "memory", "search", "ferry")
    assert found.returncode == 0, found.stderr
    [row] = strict(found.stdout)
    assert row["id"] == "m1" and row["metadata"] == {"score": None, "weight": None}
    for command in (["memory", "stats"], ["health"]):
        completed = run_cli("--storage", str(store), "--json", *command)
        assert completed.returncode in (0, 3), completed.stderr
        assert isinstance(strict(completed.stdout), dict)


def test_subprocess_output_on_a_stdout_that_cannot_encode_the_text(tmp_path: Path, store: Path) -> None:
    """On a stdout whose encoding lacks a stored character (``PYTHONIOENCODING=ascii``, a non-UTF-8 locale,
    a cp1252 console) ``--json memory search`` failed with "'ascii' codec can't encode" after the search
    had counted its accesses, and text output failed likewise. ``--json`` is written in ASCII then (``\\u``
    escapes: the same JSON); text output shows such a character as an escape (``\\xe9``)."""
    content = "café ☕ naïve — 東京"
    added = run_cli("--json", "--storage", str(store), "memory", "add", content, "--tag", "çà")
    assert added.returncode == 0, added.stderr
    memory_id = json.loads(added.stdout)["id"]

    def run_ascii(*arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "context_manager.cli", "--storage", str(store), *arguments],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, COLUMNS="200", PYTHONIOENCODING="ascii"),
        )

    found = run_ascii("--json", "memory", "search", "café")
    assert found.returncode == 0, found.stderr.decode(errors="replace")
    text = found.stdout.decode("ascii")  # ASCII only
    rows = json.loads(text)
    assert [(row["id"], row["content"], row["tags"]) for row in rows] == [(memory_id, content, ["çà"])]
    assert rows[0]["access_count"] == 1, "the search counted its access once, and printed"
    assert found.stderr == b""

    table = run_ascii("memory", "search", "café")
    assert table.returncode == 0, table.stderr.decode(errors="replace")
    shown = table.stdout.decode("ascii")
    assert memory_id in shown and "caf\\xe9" in shown and "na\\xefve" in shown, shown
    assert table.stderr == b""
    for arguments in (("memory", "add", "über"), ("memory", "stats"), ("health",)):
        plain = run_ascii(*arguments)
        assert plain.returncode == 0, plain.stderr.decode(errors="replace")
        plain.stdout.decode("ascii")
    report = run_ascii("--json", "memory", "stats")
    assert report.returncode == 0 and json.loads(report.stdout.decode("ascii"))["total_memories"] == 2


def test_memory_export_through_a_symbolic_link_replaces_the_file_it_leads_to(
    tmp_path: Path, store: Path
) -> None:
    """``memory export backup.jsonl`` where backup.jsonl is a link to the file a backup job keeps elsewhere:
    the temporary file was renamed over the link, which became a regular file, and the file it led to kept
    the old export. The file the link leads to is replaced now (atomically, from its own directory), the
    link stays; a link to a file not yet there creates it, as a shell's ``>`` does."""
    cli_json("--storage", str(store), "memory", "add", "the boiler is serviced in May")
    kept = tmp_path / "kept"
    kept.mkdir()
    real = kept / "backup.jsonl"
    real.write_text("an older export\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    link = work / "backup.jsonl"
    link.symlink_to(Path("..") / "kept" / "backup.jsonl")  # relative, as `ln -s ../kept/backup.jsonl` makes
    assert cli_json("--storage", str(store), "memory", "export", str(link))["exported"] == 1
    assert link.is_symlink() and os.readlink(link) == str(Path("..") / "kept" / "backup.jsonl")
    assert [json.loads(line)["content"] for line in real.read_text().splitlines()] == [
        "the boiler is serviced in May"
    ]
    assert sorted(path.name for path in kept.iterdir()) == ["backup.jsonl"]  # no temporary file left
    assert sorted(path.name for path in work.iterdir()) == ["backup.jsonl"]

    dangling = work / "next.jsonl"
    dangling.symlink_to(kept / "next.jsonl")
    assert cli_json("--storage", str(store), "memory", "export", str(dangling))["exported"] == 1
    assert dangling.is_symlink() and (kept / "next.jsonl").read_text() == real.read_text()


def test_memory_migrate_errors_name_the_options(tmp_path: Path, store: Path) -> None:
    """``memory migrate`` named a bad location as the library's argument ("target: got ...; allowed a
    storage other than the source"): there is no such option. As the other commands' errors, it names
    ``--from`` or ``--to`` now."""
    cli_json("--storage", str(store), "memory", "add", "keep me")
    same = cli("memory", "migrate", "--from", str(store), "--to", f"{store}/")
    assert_one_line_error(same, f"error: --to: got '{store}/'; allowed a storage other than the source")
    missing = cli("memory", "migrate", "--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "copy"))
    assert_one_line_error(missing, f"error: --from: got '{tmp_path / 'nowhere'}'; allowed a memory storage")
    assert not (tmp_path / "copy").exists()


def test_memory_migrate_refuses_a_key_value_connection_string(store: Path) -> None:
    """``--to 'host=db password=...'`` (libpq's other DSN form, which postgres_dsn takes) was a storage
    directory of that name in the working directory: the memories were copied there, and the line that
    said so printed the password."""
    cli_json("--storage", str(store), "memory", "add", "keep me")
    for option in ("--to", "--from"):
        locations = {"--from": str(store), "--to": str(store.parent / "copy")}
        locations[option] = "host=db.internal port=5432 password=s3cr3t-pw dbname=app"
        result = cli("memory", "migrate", "--from", locations["--from"], "--to", locations["--to"])
        assert_one_line_error(result, f"error: {option}: got 'host=db.internal", "postgresql://")
        assert "s3cr3t-pw" not in result.stdout + result.stderr
        assert not any(Path.cwd().iterdir()) and not (store.parent / "copy").exists()


def test_memory_migrate_errors_never_quote_a_dsn_password(tmp_path: Path, store: Path) -> None:
    """A location refused whole (not valid Unicode: a byte of another encoding on the command line; the
    same database as source and target) was quoted as given, its password with it."""
    cli_json("--storage", str(store), "memory", "add", "keep me")
    dsn = "postgresql://app:s3cr3t-pw@db.internal:5432/app"
    undecodable = cli("memory", "migrate", "--from", dsn + "\udcff", "--to", str(tmp_path / "copy"))
    assert_one_line_error(
        undecodable, "error: --from: got 'postgresql://app:***@db.internal", "valid Unicode"
    )
    same = cli("memory", "migrate", "--from", dsn, "--to", dsn.replace("postgresql:", "postgres:"))
    assert_one_line_error(same, "error: --to: got 'postgres://app:***@db.internal", "other than the source")
    one_slash = cli("memory", "migrate", "--from", str(store), "--to", "postgresql:/app:s3cr3t-pw@db/app")
    assert_one_line_error(one_slash, "error: --to: got 'postgresql:/app:***@db/app'")
    for result in (undecodable, same, one_slash):
        assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert not (tmp_path / "copy").exists()


def test_memory_migrate_reads_no_option_but_the_connect_timeout(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory migrate`` uses ``--from`` and ``--to``, and of the configuration only the connect timeout;
    it read the whole configuration for that timeout, so an option it never uses stopped the copy: a
    ``storage_path`` variable naming a file (the application's, set in the shell), or a file ``./cache``
    in the working directory, failed it with a configuration error about that option."""
    cli_json("--storage", str(store), "memory", "add", "keep me")
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", str(a_file))
    Path("cache").write_text("")  # the working directory's ./cache, the default cache_path
    copied = cli("--json", "memory", "migrate", "--from", str(store), "--to", str(tmp_path / "copy"))
    assert copied.exit_code == 0, copied.stdout + copied.stderr
    assert json.loads(copied.stdout)["ok"] is True
    assert (tmp_path / "copy" / "memories.sqlite3").exists()
    # the timeout itself is still checked, and its variable named
    monkeypatch.setenv("python_context_manager_postgres_connect_timeout", "soon")
    refused = cli("memory", "migrate", "--from", str(store), "--to", str(tmp_path / "other"))
    assert_one_line_error(
        refused,
        "error: postgres_connect_timeout: got 'soon'; allowed a number > 0",
        "set by the environment variable python_context_manager_postgres_connect_timeout",
    )
    assert not (tmp_path / "other").exists()


def test_memory_migrate_waits_the_configured_connect_timeout(tmp_path: Path) -> None:
    """``memory migrate`` waited 10 s for a server that does not answer (a firewall dropping packets, a
    hung host), whatever PYTHON_CONTEXT_MANAGER_POSTGRES_CONNECT_TIMEOUT said; a monitoring or deploy
    script's own timeout fired first. It waits what the configuration says, as a manager does."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))  # accepts connections and never answers
    held: list[socket.socket] = []
    first_accepted: list[float] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])
                if not first_accepted:
                    first_accepted.append(time.monotonic())

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "context_manager.cli",
                "memory",
                "migrate",
                "--from",
                f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/app",
                "--to",
                str(tmp_path / "copy"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, COLUMNS="200", PYTHON_CONTEXT_MANAGER_POSTGRES_CONNECT_TIMEOUT="1"),
        )
        ended = time.monotonic()
    finally:
        listener.close()
        for connection in held:
            connection.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1" in result.stderr, result.stderr
    assert "after 1.0 sec" in result.stderr and "s3cr3t-pw" not in result.stderr
    assert held  # the command did reach the silent server
    # Timed from the server's first accepted connection (the interpreter's start and imports, seconds on a
    # loaded machine, are not the wait): 1 s and the process's exit, not 10 s.
    waited = ended - first_accepted[0]
    assert waited < 6, waited
    assert not (tmp_path / "copy").exists()


def test_memory_migrate_to_an_unreachable_server_names_the_option_given(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory migrate --to postgresql://...`` to a server that is down said to check that "the DSN
    (postgres_dsn / PYTHON_CONTEXT_MANAGER_POSTGRES_DSN) is right": an option and a variable the user never
    set, the DSN being on the command line. The hint names the location and the option that gave it."""
    assert cli("--storage", str(store), "memory", "add", "a fact").exit_code == 0
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_CONNECT_TIMEOUT", "1")
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/app"
    for arguments, named in (
        (["--from", str(store), "--to", down], "the target DSN (--to)"),
        (["--from", down, "--to", str(tmp_path / "copy")], "the source DSN (--from)"),
        (["--verify-only", "--from", str(store), "--to", down], "the target DSN (--to)"),
    ):
        result = cli("memory", "migrate", *arguments)
        assert_one_line_error(result, "cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1")
        assert f"{named} is right" in result.stderr and "postgres_dsn" not in result.stderr, result.stderr
        assert "s3cr3t-pw" not in result.stderr
    assert not (tmp_path / "copy").exists()

    from context_manager.core.errors import StorageError
    from context_manager.core.memory.transfer import migrate_storage

    with pytest.raises(StorageError, match="the target DSN") as raised:
        asyncio.run(migrate_storage(str(store), down, connect_timeout=1))
    assert "postgres_dsn" not in str(raised.value)


def test_memory_add_dash_reads_the_text_from_standard_input(store: Path) -> None:
    """``tokens -`` and ``memory import -`` read standard input, but ``echo ... | memory add -`` stored a
    memory whose text was "-". It stores the piped text now (its final newlines dropped, as ``$(...)``
    drops them); blank input is refused and creates no store."""
    added = cli(
        "--json",
        "--storage",
        str(store),
        "memory",
        "add",
        "-",
        "--tag",
        "ops",
        input="the vpn is vpn.example.org\r\n\n",
    )
    assert added.exit_code == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["content"] == "the vpn is vpn.example.org"
    found = cli_json("--storage", str(store), "memory", "search", "vpn")
    assert [(row["content"], row["tags"]) for row in found] == [("the vpn is vpn.example.org", ["ops"])]
    blank = cli("--storage", str(store.parent / "other"), "memory", "add", "-", input="\n")
    assert_one_line_error(blank, "content: got ''")
    assert not (store.parent / "other").exists()


@pytest.mark.embeddings
def test_memory_import_with_the_embedder_says_so_and_shows_its_progress_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long import with the default embedder printed nothing until it ended (~108 s for 1,000 memories).

    It now says on stderr that it embeds, with the model, and how to import without vectors, and prints
    a line per batch embedded when stderr is no terminal (a log); with --json stdout stays the JSON only.
    """
    backup = tmp_path / "backup.jsonl"
    lines = [
        json.dumps({"id": f"note-{number}", "content": f"note {number} about kites"}) for number in range(3)
    ]
    backup.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_EMBEDDER", "minilm")
    result = cli("--storage", str(tmp_path / "a"), "memory", "import", str(backup))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "embedding 3 memories with sentence-transformers:all-MiniLM-L6-v2" in result.stderr
    assert "PYTHON_CONTEXT_MANAGER_EMBEDDER=none" in result.stderr
    assert "embedded 3/3 memories" in result.stderr
    assert result.stdout.startswith("imported 3 memories")
    quiet = cli("--json", "--storage", str(tmp_path / "b"), "memory", "import", str(backup))
    assert quiet.exit_code == 0, quiet.stdout + quiet.stderr
    assert json.loads(quiet.stdout)["imported"] == 3
    assert "embedd" not in quiet.stderr
