"""The tool result cache: :class:`ToolResultCache`, a bounded LRU of JSON texts with a TTL per entry.

Keys are the tool name plus the canonical JSON of the validated arguments (sorted keys, compact
separators), so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` share an entry; a key longer than 256
characters is kept as its BLAKE2b digest (128 bits), so large arguments (a whole document) are not held.
Only successful results are stored, as JSON text: every hit decodes a fresh copy, so a caller mutating a
result cannot change what the next caller gets. A text result is stored as it is (a string cannot be
changed). With the text, the cache keeps what the manager passes to decode it (a large result's piece tree:
it is decoded in a worker thread, in pieces, and the text is reused for the tool message).

The cache is bounded by entries (``max_entries``) and by the size of the texts it holds (``max_bytes``,
32 MiB by default, counted in characters): the least recently used entries go first, and a result larger
than ``max_bytes`` is not cached. Should the clock go back (a wall clock passed as ``clock``, set back),
the entries stored after the new time are expired: none outlives its TTL by the jump.

A result is stored only if its tool's entries were not invalidated since the call looked the cache up
(:meth:`ToolResultCache.generation`): a call that read data before an ``invalidate`` (the data changed
meanwhile) must not put its stale result back. For that the cache remembers when each tool was last
invalidated, for the most recent 1,024 tool names invalidated (not every name ever invalidated: tools
registered and removed by the thousand, one per session say, are forgotten in turn); a call that began
before the last invalidation forgotten does not store its result either.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_MAX_BYTES", "TEXT_RESULT", "ToolResultCache", "canonical_arguments"]

TEXT_RESULT: Any = object()
"""The form of an entry whose text is the result itself (a string result), not its JSON."""
_LONG_KEY = 256  # longer argument keys are kept as their digest
_TRACKED_INVALIDATIONS = 1024  # tool names whose last invalidation is remembered
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The most characters of result texts the cache holds by default."""


def canonical_arguments(arguments: dict[str, Any]) -> str | None:
    """Return the canonical JSON of ``arguments``; None when they are not JSON (such calls are not cached)."""
    try:
        return json.dumps(
            arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested deeper than the encoder's stack
        return None


class ToolResultCache:
    """A bounded least-recently-used cache of tool results with a time-to-live per entry.

    Args:
        max_entries: How many results are kept; the least recently used is dropped first.
        clock: Returns the current time in seconds (monotonic); tests pass a controllable clock.
        max_bytes: How many characters of result texts are kept at most (least recently used dropped
            first); a result longer than this is not cached.
    """

    __slots__ = (
        "_bytes",
        "_clock",
        "_entries",
        "_cleared_at",
        "_floor",
        "_invalidated_at",
        "_lock",
        "_stamp",
        "hits",
        "max_bytes",
        "max_entries",
        "misses",
    )

    def __init__(
        self,
        max_entries: int = 1024,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.max_entries = max_entries
        """How many results are kept at most."""
        self.max_bytes = max_bytes
        """How many characters of result texts are kept at most."""
        self.hits = 0
        """Lookups answered from the cache."""
        self.misses = 0
        """Lookups not answered (absent or expired)."""
        self._clock = clock
        # key -> (expires at, text, form, stored at)
        self._entries: OrderedDict[tuple[str, str], tuple[float, str, Any, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stamp = 0  # invalidations so far (of one tool or of all): a call's generation is this count
        self._cleared_at = 0  # the stamp of the last invalidation of every tool
        # the stamp of the last invalidation of one tool, by its name, oldest first; bounded: the stamp of
        # the last one forgotten is the floor, and a call begun before it stores nothing
        self._invalidated_at: OrderedDict[str, int] = OrderedDict()
        self._floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Characters of the result texts held now (at most :attr:`max_bytes`)."""
        return self._bytes

    @staticmethod
    def _key(tool_name: str, arguments_key: str) -> tuple[str, str]:
        if len(arguments_key) > _LONG_KEY:  # a digest instead of a copy of large arguments
            digest = hashlib.blake2b(arguments_key.encode("utf-8", "surrogatepass"), digest_size=16)
            arguments_key = "#" + digest.hexdigest()  # never a JSON object's text, which starts with "{"
        return (tool_name, arguments_key)

    def _remove(self, key: tuple[str, str]) -> None:
        """Drop one entry (under the lock)."""
        text = self._entries.pop(key)[1]
        self._bytes -= len(text)

    def entry(self, tool_name: str, arguments_key: str) -> tuple[str, Any] | None:
        """Return the stored ``(text, form)`` of a hit, None on a miss or an expired entry (counted).

        ``form`` is :data:`TEXT_RESULT` when the text is the result itself, else what :meth:`put` was given
        as ``pieces`` (None: decode the JSON text whole). The text is shared: never changed.
        """
        key = self._key(tool_name, arguments_key)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            expires_at, text, form, stored_at = entry
            now = self._clock()
            if expires_at <= now or now < stored_at:  # expired, or stored "after now": the clock went back
                self._remove(key)
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return text, form

    def lookup(self, tool_name: str, arguments_key: str) -> tuple[bool, Any]:
        """Return ``(True, result)`` on a hit and ``(False, None)`` on a miss or an expired entry."""
        found = self.entry(tool_name, arguments_key)
        if found is None:
            return False, None
        text, form = found
        return True, (text if form is TEXT_RESULT else json.loads(text))

    def generation(self, tool_name: str) -> int:
        """What a call reads before it runs, for :meth:`put` (the count of invalidations so far).

        Given it, :meth:`put` does not store a result when ``tool_name``'s entries were invalidated (alone or
        with all) since.
        """
        return self._stamp

    def _invalidated_since(self, tool_name: str, generation: int) -> bool:
        """Whether ``tool_name``'s entries were invalidated since :meth:`generation` gave ``generation``."""
        last = max(self._cleared_at, self._floor, self._invalidated_at.get(tool_name, 0))
        return last > generation

    def put(
        self,
        tool_name: str,
        arguments_key: str,
        result_json: str,
        ttl: float,
        *,
        pieces: Any = None,
        generation: int | None = None,
    ) -> None:
        """Store a successful result (as its JSON text) for ``ttl`` seconds (not when it is too large).

        ``pieces`` is kept with the text and given back by :meth:`entry` (the manager's piece tree of a
        large result); :data:`TEXT_RESULT` stores a string result itself as the text. Given the
        :meth:`generation` read when the call began, a result is not stored when the tool's entries were
        invalidated since (it may have been computed from data that changed).
        """
        key = self._key(tool_name, arguments_key)
        with self._lock:
            if generation is not None and self._invalidated_since(tool_name, generation):
                return
            if key in self._entries:
                self._remove(key)
            if len(result_json) > self.max_bytes:
                return
            now = self._clock()
            self._entries[key] = (now + ttl, result_json, pieces, now)
            self._bytes += len(result_json)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def invalidate(self, tool_name: str | None = None) -> int:
        """Drop every entry (or every entry of ``tool_name``); return how many were dropped."""
        with self._lock:
            self._stamp += 1
            if tool_name is None:
                self._cleared_at = self._stamp
                self._invalidated_at.clear()  # older than this one: it speaks for them all
                count = len(self._entries)
                self._entries.clear()
                self._bytes = 0
                return count
            self._invalidated_at.pop(tool_name, None)
            self._invalidated_at[tool_name] = self._stamp  # the newest last
            if len(self._invalidated_at) > _TRACKED_INVALIDATIONS:
                _, self._floor = self._invalidated_at.popitem(last=False)
            doomed = [key for key in self._entries if key[0] == tool_name]
            for key in doomed:
                self._remove(key)
            return len(doomed)

    def purge_expired(self) -> int:
        """Drop the entries whose TTL has passed; return how many were dropped."""
        now = self._clock()
        with self._lock:
            doomed = [
                key
                for key, (expires_at, _, _, stored_at) in self._entries.items()
                if expires_at <= now or now < stored_at
            ]
            for key in doomed:
                self._remove(key)
            return len(doomed)
