"""Medium-term store: an append-only JSONL log under ``storage_path`` plus an in-memory FTS5 index.

The log (``memories.jsonl``) records every change of the volatile tiers (short and medium) as one
JSON object per line: ``{"op": "put", "m": {...}}``, ``{"op": "delete", "ids": [...]}``,
``{"op": "touch", "u": [[id, last_accessed, access_count], ...]}``. A write is one ``write()`` of
whole lines, flushed to the OS before the call returns (and fsynced when configured), so an
acknowledged memory survives a crash of the process. Opening replays the log; a torn last line (a
crash in the middle of a write, never acknowledged) is skipped with a warning and cut off. Any other
damaged line raises :class:`~context_manager.core.errors.StorageCorruptedError` and the file is left
untouched. Compaction rewrites the live records to a temporary file and renames it over the log.

Erasure: the log knows where each memory's ``put`` records are. When a memory is deleted from every tier,
:meth:`JsonlLog.erase` overwrites them in place with ``{"op": "erased"}`` padded with spaces to the same
length (the delete record is appended first), so the deleted text is on no byte of the file once the
call returns, without rewriting the log. Replay skips erased lines; a line whose erasure a power loss cut
short (it does not parse and ends with the padding) is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from context_manager.core.errors import StorageCorruptedError, StorageError
from context_manager.core.memory.in_memory_store import InMemoryStore
from context_manager.core.memory.index import ColumnWeights
from context_manager.core.memory.models import Memory, MemoryTier

__all__ = ["FileStore", "JsonlLog", "LOG_FILE_NAME"]

logger = logging.getLogger(__name__)

LOG_FILE_NAME = "memories.jsonl"
"""Name of the log file under ``storage_path``."""

FILE_MODE = 0o600
"""Store files are readable and writable by their owner only."""

_ERASED = b'{"op": "erased"}'
_ENCODE_SLICE = 65_536  # characters of a memory's text JSON-encoded per call (well under 1 ms)
_WRITE_BYTES = 1 << 20  # bytes of the log joined per write
"""What an erased ``put`` record starts with (then spaces up to the record's length)."""

Offsets = list[tuple[int, int]]
"""``(start, length)`` of each ``put`` record of one memory in the log file, oldest first."""


class JsonlLog:
    """The append-only journal of the volatile tiers.

    Args:
        path: The log file (created ``0o600`` when missing).
        fsync: ``os.fsync`` after every append (survives power loss, slower).
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        """The log file."""
        self.fsync = fsync
        """Whether every append is fsynced."""
        self.record_count = 0
        """Lines in the log (live and dead), for the compaction policy."""
        self._lock = threading.Lock()
        self._fd: int | None = None  # appends (O_APPEND)
        self._overwrite_fd: int | None = None  # erasure in place (pwrite ignores offsets with O_APPEND)
        self._puts: dict[str, Offsets] = {}  # memory id -> where its put records are
        self._size = 0  # bytes this log knows are in the file (a smaller file was truncated)
        self._written = False  # this log wrote to the file since it was opened (close then fsyncs it)

    def open(self) -> dict[str, Memory]:
        """Open the log, replay it and return the live memories by id (tier as recorded)."""
        live: dict[str, Memory] = {}
        if self.path.exists():
            live = self._replay()
        try:
            self._open_descriptors()
        except OSError as error:
            raise StorageError(f"cannot open memory log {self.path}: {error}", path=self.path) from error
        return live

    def _open_descriptors(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            self._overwrite_fd = os.open(self.path, os.O_WRONLY)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise
        self._size = os.fstat(self._fd).st_size

    def fault(self) -> str | None:
        """What happened to the open log behind its back: ``"removed"``, ``"replaced"``, ``"truncated"``.

        ``None`` when the file at :attr:`path` is the one open, at least as long as this log wrote it.
        """
        with self._lock:
            if self._fd is None:
                return None
            try:
                held = os.fstat(self._fd)
                current = self.path.stat()
            except FileNotFoundError:
                return "removed"
            except OSError:
                return None
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                return "replaced"
            return "truncated" if held.st_size < self._size else None

    def _close_descriptors(self) -> None:
        for fd in (self._fd, self._overwrite_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._overwrite_fd = None

    @property
    def recorded_ids(self) -> set[str]:
        """Ids with a ``put`` record in the file (live, moved to long-term, or deleted but not erased)."""
        with self._lock:
            return set(self._puts)

    def _replay(self) -> dict[str, Memory]:
        """Apply the log's records, read a megabyte at a time (:func:`_lines`, :func:`decode_line`).

        A whole file of megabytes split in one ``split``, or a line of megabytes decoded by one
        ``json.loads``, held the interpreter lock, so the event loop, for tens of milliseconds.
        """
        live: dict[str, Memory] = {}
        offset = 0
        try:
            with open(self.path, "rb", buffering=0) as handle:
                for number, line in enumerate(_lines(handle), start=1):
                    start, offset = offset, offset + len(line)
                    if not line.endswith(b"\n"):  # a write cut short by a crash, never acknowledged
                        if not line.isspace():
                            logger.warning(
                                "memory log %s ends with an incomplete record (%d bytes, a write interrupted "
                                "by a crash); skipping it",
                                self.path,
                                len(line),
                            )
                            self._cut_torn_tail(start)
                        break
                    self._replay_line(line, number, start, live)
        except StorageError:  # an OSError too: a damaged line, or the torn tail not cut
            raise
        except OSError as error:
            raise StorageError(f"cannot read memory log {self.path}: {error}", path=self.path) from error
        return live

    def _replay_line(self, line: bytes, number: int, start: int, live: dict[str, Memory]) -> None:
        """Apply one line of the log (with its newline), which starts at byte ``start``."""
        if line.isspace() or line.startswith(_ERASED):
            return
        try:
            record = decode_line(line)
            _apply(record, live)
            if record["op"] == "put":
                self._puts.setdefault(record["m"]["id"], []).append((start, len(line) - 1))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if line.endswith(b" \n"):  # json.dumps never ends a line with a space: an erasure cut short
                logger.warning(
                    "memory log %s: line %d is a deleted memory's record whose erasure was interrupted "
                    "(a power loss); skipping it",
                    self.path,
                    number,
                )
                return
            raise StorageCorruptedError(
                f"memory log {self.path} is damaged at line {number} ({error}); it was not modified. "
                "Restore it from a backup, or move it aside to start the short and medium tiers empty "
                "(the long-term database is not affected)",
                path=self.path,
            ) from error
        self.record_count += 1

    def _cut_torn_tail(self, size: int) -> None:
        # The torn bytes were never acknowledged; cutting them keeps the next append on its own line.
        try:
            with open(self.path, "r+b") as handle:
                handle.truncate(size)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise StorageError(f"cannot repair memory log {self.path}: {error}", path=self.path) from error

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records as whole lines, flushed to the OS (fsynced if configured).

        One write, or one per megabyte for a memory of megabytes (joining its line in one piece would hold
        the interpreter lock, as :func:`record_pieces` explains).
        """
        if not records:
            return
        writes, lengths = _encode(records)
        with self._lock:
            if self._fd is None:
                raise StorageError(f"memory log {self.path} is closed", path=self.path)
            start = None
            try:
                start = os.fstat(self._fd).st_size
                for data in writes:
                    _write_all(self._fd, data)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as error:
                if start is not None:
                    # A write cut short (disk full) must not leave half a line: the next append would
                    # glue onto it and damage the log for good.
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start)
                raise StorageError(f"cannot write memory log {self.path}: {error}", path=self.path) from error
            self._written = True
            self.record_count += len(records)
            offset = start
            for record, length in zip(records, lengths, strict=True):
                if record["op"] == "put":
                    self._puts.setdefault(record["m"]["id"], []).append((offset, length - 1))
                offset += length
            self._size = offset

    def erase(self, ids: Iterable[str], *, keep_latest: bool = False) -> int:
        """Overwrite the ``put`` records of ``ids`` in place (see the module docstring); return how many.

        Args:
            ids: Memories deleted from every tier (their delete records already appended), or, with
                ``keep_latest``, memories rewritten whose earlier records held text that must go.
            keep_latest: Keep each memory's newest ``put`` record (the current version).
        """
        with self._lock:
            if self._overwrite_fd is None:
                raise StorageError(f"memory log {self.path} is closed", path=self.path)
            erased = 0
            try:
                for memory_id in ids:
                    places = self._puts.get(memory_id)
                    if not places:
                        continue
                    doomed = places[:-1] if keep_latest else places
                    for start, length in doomed:
                        os.pwrite(self._overwrite_fd, _ERASED.ljust(length, b" "), start)
                        self._written = True
                    erased += len(doomed)
                    if keep_latest:
                        self._puts[memory_id] = places[-1:]
                    else:
                        del self._puts[memory_id]
                if erased and self.fsync:
                    os.fsync(self._overwrite_fd)
            except OSError as error:
                raise StorageError(
                    f"cannot erase from memory log {self.path}: {error}", path=self.path
                ) from error
            return erased

    def compact(self, live: Iterable[Memory]) -> tuple[int, int]:
        """Rewrite the log with one ``put`` per live memory; return its size in bytes before and after.

        The new log is written to a temporary file, fsynced and renamed over the old one, so a crash
        at any moment leaves either the old or the new log, both complete.
        """
        with self._lock:
            try:
                return self._compact_locked(live)
            except OSError as error:
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + ".compact").unlink(missing_ok=True)
                raise StorageError(
                    f"cannot compact memory log {self.path} (the log is unchanged): {error}", path=self.path
                ) from error

    def _compact_locked(self, live: Iterable[Memory]) -> tuple[int, int]:
        temporary = self.path.with_name(self.path.name + ".compact")
        before = self.path.stat().st_size if self.path.exists() else 0
        count = 0
        puts: dict[str, Offsets] = {}
        offset = 0
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:

            def lines() -> Iterator[bytes]:
                nonlocal offset, count
                for memory in live:
                    pieces = record_pieces({"op": "put", "m": memory.to_dict()})
                    length = sum(len(piece) for piece in pieces)
                    puts[memory.id] = [(offset, length - 1)]
                    offset += length
                    count += 1
                    yield from pieces

            for data in _batches(lines()):
                _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        _fsync_directory(self.path.parent)
        self._close_descriptors()
        self._open_descriptors()
        self.record_count = count
        self._puts = puts
        return before, self.path.stat().st_size

    def size(self) -> int:
        """Size of the log in bytes."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        """Flush what this log wrote to disk and close it.

        A log that wrote nothing since it was opened (a worker that resumed a conversation and used no
        memory) closes without an ``fsync``: it has nothing of its own to make durable.
        """
        with self._lock:
            if self._fd is not None:
                try:
                    if self._written:
                        os.fsync(self._fd)
                finally:
                    self._written = False
                    self._close_descriptors()


def _apply(record: dict[str, Any], live: dict[str, Memory]) -> None:
    operation = record["op"]
    if operation == "put":
        memory = Memory.from_dict(record["m"])
        if not isinstance(memory.content, str):
            raise TypeError("content is not a string")
        live[memory.id] = memory
    elif operation == "delete":
        for memory_id in record["ids"]:
            live.pop(memory_id, None)
    elif operation == "touch":
        for memory_id, last_accessed, access_count in record["u"]:
            touched = live.get(memory_id)
            if touched is not None:
                touched.last_accessed = float(last_accessed)
                touched.access_count = int(access_count)
    else:
        raise ValueError(f"unknown operation {operation!r}")


_READ_BYTES = 1 << 20  # bytes of the log read per call when it is replayed


def _lines(handle: BinaryIO) -> Iterator[bytes]:
    """The lines of an unbuffered file, each with its newline (the last one may have none).

    Read :data:`_READ_BYTES` at a time: a line of megabytes is put together a read at a time (see
    :func:`_joined`), where ``readline`` or ``split`` copied it in one call holding the interpreter lock.
    """
    parts: list[bytes] = []  # the line read so far, when it spans reads
    while chunk := handle.read(_READ_BYTES):
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if parts:
                parts.append(chunk[start : newline + 1])
                yield _joined(parts)
                parts = []
            else:
                yield chunk[start : newline + 1]
            start = newline + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield _joined(parts)


def _joined(parts: list[bytes]) -> bytes:
    """The parts as one buffer, copied a part at a time (``b"".join`` copies them all in one call)."""
    if len(parts) == 1:
        return parts[0]
    joined = bytearray(sum(len(part) for part in parts))
    position = 0
    for part in parts:
        joined[position : position + len(part)] = part
        position += len(part)
    return joined  # type: ignore[return-value]  # read like bytes (json.loads takes either)


_LARGE_PUT = b'{"op": "put", "m": {"content": "'
"""How :func:`record_pieces` starts the line of a memory of megabytes (its text first)."""
_DECODE_BYTES = 1 << 18  # bytes of a line's text decoded per call (a millisecond or two)


def decode_line(line: bytes) -> Any:
    """``json.loads(line)``; the text of a memory of megabytes decoded :data:`_DECODE_BYTES` at a time.

    One ``json.loads`` of a line of megabytes holds the interpreter lock for all of it (5-30 ms per 5 MB):
    replaying the log on the storage thread stalled the event loop that long. A line as
    :func:`record_pieces` writes it has the text first: it is decoded in slices cut where no escape or
    UTF-8 character is split (a slice holding the text's closing quote fails to decode: the text ends in
    it), then the rest of the record. Any other line is decoded whole.
    """
    if len(line) <= _DECODE_BYTES or not line.startswith(_LARGE_PUT):
        return json.loads(line)
    pieces: list[str] = []
    position = len(_LARGE_PUT)
    while True:
        cut = _cut(line, position, position + _DECODE_BYTES)
        if cut <= position:  # nowhere to cut
            return json.loads(line)
        try:
            pieces.append(json.loads(b'"' + line[position:cut] + b'"'))
        except ValueError:  # the text ends in this slice (or the line is damaged)
            break
        position = cut
    end = _closing_quote(line, position, cut)
    if end < 0 or b'"content"' in line[end:]:  # damaged, or the key again (the last one wins): whole
        return json.loads(line)
    pieces.append(json.loads(b'"' + line[position:end] + b'"'))
    record = json.loads(line[: len(_LARGE_PUT)] + line[end:])
    record["m"]["content"] = "".join(pieces)
    return record


def _closing_quote(line: bytes, start: int, stop: int) -> int:
    """Where the JSON string starting at byte ``start`` ends (its closing quote) before ``stop``, or -1."""
    quote = line.find(b'"', start, stop)
    while quote >= 0:
        run = quote
        while run > start and line[run - 1] == 0x5C:  # the backslashes before it
            run -= 1
        if (quote - run) % 2 == 0:  # not escaped
            return quote
        quote = line.find(b'"', quote + 1, stop)
    return -1


def _cut(line: bytes, start: int, cut: int) -> int:
    r"""A place from ``start`` up to ``cut`` to cut a JSON string's bytes at; ``start`` when there is none.

    Not inside a UTF-8 character, and with no backslash in the 12 bytes before it: no escape (``\n``,
    ``\u00e9``) nor escaped surrogate pair (``\ud83d\ude00``) is split (``start`` itself is such a place).
    """
    if cut >= len(line):
        return len(line)
    while cut > start:
        while cut > start and 0x80 <= line[cut] < 0xC0:  # a UTF-8 continuation byte
            cut -= 1
        backslash = line.rfind(b"\\", max(start, cut - 12), cut)
        if backslash < 0:
            return cut
        cut = backslash
    return start


def record_pieces(record: dict[str, Any]) -> list[bytes]:
    """A record as one line of the log (JSON, UTF-8, non-ASCII kept, then a newline), in pieces.

    One piece for most records. The text of a memory of megabytes is encoded :data:`_ENCODE_SLICE`
    characters at a time (first among the memory's fields), a piece each: one ``json.dumps`` of 5 MB, or
    one join of its bytes, holds the interpreter lock for tens of milliseconds, which stalls the event
    loop even while the writer thread does it.
    """
    memory = record.get("m")
    content = memory.get("content") if isinstance(memory, dict) else None
    if not isinstance(content, str) or len(content) <= _ENCODE_SLICE:
        return [(json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")]
    assert isinstance(memory, dict)
    outer = json.dumps({key: value for key, value in record.items() if key != "m"}, ensure_ascii=False)
    inner = json.dumps({key: value for key, value in memory.items() if key != "content"}, ensure_ascii=False)
    pieces = [(outer[:-1] + (", " if outer != "{}" else "") + '"m": {"content": "').encode("utf-8")]
    for start in range(0, len(content), _ENCODE_SLICE):
        text = json.dumps(content[start : start + _ENCODE_SLICE], ensure_ascii=False)[1:-1]
        pieces.append(text.encode("utf-8", "surrogatepass"))
    pieces.append(
        ('"' + (", " + inner[1:] if inner != "{}" else "}") + "}\n").encode("utf-8", "surrogatepass")
    )
    return pieces


def _encode(records: Sequence[dict[str, Any]]) -> tuple[list[bytes], list[int]]:
    """The records' lines joined into writes of about :data:`_WRITE_BYTES` (small records: one write).

    Returns:
        The writes, and the length of each record's line.
    """
    writes: list[bytes] = []
    lengths: list[int] = []
    batch: list[bytes] = []
    size = 0
    for record in records:
        length = 0
        for piece in record_pieces(record):
            batch.append(piece)
            length += len(piece)
            size += len(piece)
            if size >= _WRITE_BYTES:
                writes.append(b"".join(batch))
                batch, size = [], 0
        lengths.append(length)
    if batch:
        writes.append(b"".join(batch))
    return writes, lengths


def _batches(pieces: Iterable[bytes], size: int = _WRITE_BYTES) -> Iterator[bytes]:
    """The pieces joined into writes of about ``size`` bytes (each join a short hold of the lock)."""
    batch: list[bytes] = []
    length = 0
    for piece in pieces:
        batch.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(batch)
            batch, length = [], 0
    if batch:
        yield b"".join(batch)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write less, e.g. when the disk fills up)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class FileStore(InMemoryStore):
    """The medium-term tier: memories journaled to a :class:`JsonlLog`, indexed in memory.

    Args:
        log: The journal shared with the short-term tier.
        weights: BM25 column weights of the index.
    """

    def __init__(self, log: JsonlLog, *, weights: ColumnWeights | None = None) -> None:
        super().__init__(MemoryTier.MEDIUM, journal=log, weights=weights)
        self.log = log
        """The journal this store writes to."""
