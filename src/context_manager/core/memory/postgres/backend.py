"""``PostgresBackend``: the memory tiers in one PostgreSQL database shared by many processes and hosts.

Every tier is a set of rows of ``cm_memories`` (``tier`` is a column); nothing acknowledged lives only in a
process: a write returns after its transaction committed on the server. User isolation is a predicate on
the indexed ``owner`` column of every query. Full-text search runs on the ``tsvector`` column a trigger
keeps (GIN index), parsed from the text with the characters the query splits words at made spaces
(``separators.py``: both see the same words, whatever the server's locale), Chinese and Japanese runs as
their characters and pairs, symbols as terms of their code points (as on SQLite); the query's terms
(``query_tokens`` and ``segment_tokens``: a Chinese or Japanese run as its pairs, an emoji as its term; a
superscript, subscript or fraction spelled in ASCII inside its word on both sides, ``spell_numbers``)
become one ``plainto_tsquery`` each, passed as parameters, so user text never reaches
the server as query syntax. The index reads text folded (NFC, ligatures and full-width forms in NFKC, the
accents of Latin letters removed: ``schema.fold_sql``, migration ``0011``) and the query's words are folded
the same way (``fold_accents``). Each word's ``ts_rank`` is weighted by its inverse document frequency,
read from the planner's statistics (``pg_stats.most_common_elems``) and cached: a BM25-like score that
compares across tiers and feeds the same fusion as the SQLite backend. The vector channel uses pgvector
(HNSW, cosine). Operations that must not run twice at once across processes (consolidation) hold a PostgreSQL
advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from context_manager.core.errors import ConfigurationError, StorageError
from context_manager.core.memory.backend import (
    TIER_ORDER,
    TIER_VALUE_ACCESS,
    TIER_VALUE_ACCESS_SATURATION,
    TIER_VALUE_FORGOTTEN_SECONDS,
    TIER_VALUE_HALF_LIFE_SECONDS,
    TIER_VALUE_IMPORTANCE,
    TIER_VALUE_RECENCY,
    BackendStats,
    LexicalQuery,
    Staleness,
    UserScope,
    VectorHit,
    merged_again,
    originals_gone,
    owner_label,
    unchanged_since_read,
)
from context_manager.core.memory.index import (
    ColumnWeights,
    fold_accents,
    index_terms,
    segment_text,
    segment_tokens,
)
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.postgres.database import PostgresDatabase, own_table
from context_manager.core.memory.postgres.schema import (
    MIGRATIONS,
    TEXT_SEARCH_CONFIG,
    VECTOR_MIGRATIONS,
    hnsw_index_name,
    hnsw_index_statement,
    rederive_candidates_sql,
    rederive_search_sql,
    tier_rank_sql,
)
from context_manager.core.memory.postgres.separators import spell_numbers
from context_manager.core.memory.ranking import bm25_idf, prune_common_terms
from context_manager.core.memory.store import TurnKey

if TYPE_CHECKING:  # pragma: no cover
    import numpy
    import psycopg

    from context_manager.core.config import ContextManagerConfig

__all__ = ["PostgresBackend"]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_FIELDS = (
    "id",
    "tier",
    "user_id",
    "content",
    "importance",
    "tags",
    "created_at",
    "last_accessed",
    "access_count",
    "metadata",
    "source",
    "superseded_by",
    "merged_from",
    "context",
)
"""The columns a memory is read from (:func:`_memory`), in its order."""
# What converting a row costs, about the bytes the client decodes: so the rows can be converted in chunks
# of a bounded size (_converted). Read from the values' headers, nothing detoasted or serialised (a search
# computes it for every row it ranks): a text's length, the stored size of the others (of a compressed
# value, less than its text)
_ROW_BYTES = (
    "octet_length({p}content) + octet_length({p}context) + octet_length({p}tags_text) "
    "+ pg_column_size({p}metadata) + pg_column_size({p}merged_from)"
)


def _columns(alias: str = "") -> str:
    """The select list of a memory: :data:`_FIELDS` (of table ``alias``), then the row's size in bytes."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in _FIELDS) + f", {_ROW_BYTES.format(p=prefix)} AS row_bytes"


_COLUMNS = _columns()
_SIZE_COLUMN = len(_FIELDS)  # the place of the row's size in _COLUMNS
_STATISTICS_TTL = 60.0  # seconds the term statistics are reused before they are read again
_COUNT_TTL = 0.5  # seconds a tier count is kept (with this process's own changes applied) before a re-read
_LONG_COUNT_TTL = 10.0  # the long-term count only feeds a soft-capacity warning, and counting it is costly
_STEP_BYTES = 1 << 20
"""Rows holding about this many bytes of text are converted per loop step (a row larger alone), then the
loop gets a turn: converting a scan of twelve memories of 5 MB in one ``fetchall`` held it 12-30 ms."""
_STEP_ROWS = 500
"""At most this many rows are converted per loop step (about a millisecond of small memories)."""
_REDERIVE_BATCH = 500
"""Rows whose search vector one transaction of :meth:`PostgresBackend._rederive_search_vectors` derives."""
_REDERIVE_ALLOWED = (
    "SELECT has_table_privilege('cm_search_rederive', 'SELECT') "
    "AND has_table_privilege('cm_search_rederive', 'UPDATE') "
    "AND has_table_privilege('cm_search_rederive', 'DELETE')"
)
"""Whether this role may keep the record of the re-derivation of the vectors (``cm_search_rederive``)."""
_REDERIVE_LOCKS_LAST = (
    "SELECT count(*) FROM (SELECT 1 FROM cm_memories WHERE (id, tier) > (%s, %s) "
    "ORDER BY id, tier FOR UPDATE) AS rows"
)
"""Locks the rows of the last batch of :meth:`PostgresBackend._rederive_search_vectors`, in key order (the
order of :data:`_ROW_LOCKS`: no deadlock with a move or an update). Parameters: the key the batch starts
after."""
_REDERIVE_LOCKS = (
    "SELECT max(tier) FILTER (WHERE id = %s) FROM (SELECT id, tier FROM cm_memories "
    "WHERE (id, tier) > (%s, %s) AND id <= %s ORDER BY id, tier FOR UPDATE) AS rows"
)
"""The same for another batch, which holds every tier of the id it ends with; returns that id's greatest
tier. Parameters: that id, the key the batch starts after, that id again."""
_ANALYZE_EVERY = 300.0  # seconds between the ANALYZEs this process may run when statistics are missing
_RANK_NORMALIZATION = 1  # ts_rank divides by 1 + log(document length)
_INSERT = (
    "INSERT INTO cm_memories (id, tier, owner, user_id, content, importance, tags, tags_text, created_at, "
    "last_accessed, access_count, metadata, source, superseded_by, merged_from, context, session_id, "
    f"turn_index, session_date) VALUES ({', '.join(['%s'] * 19)}) "
    "ON CONFLICT (id, tier) DO UPDATE SET owner = EXCLUDED.owner, user_id = EXCLUDED.user_id, "
    "content = EXCLUDED.content, importance = EXCLUDED.importance, tags = EXCLUDED.tags, "
    "tags_text = EXCLUDED.tags_text, "
    "created_at = EXCLUDED.created_at, last_accessed = EXCLUDED.last_accessed, "
    "access_count = EXCLUDED.access_count, metadata = EXCLUDED.metadata, source = EXCLUDED.source, "
    "superseded_by = EXCLUDED.superseded_by, merged_from = EXCLUDED.merged_from, context = EXCLUDED.context, "
    "session_id = EXCLUDED.session_id, turn_index = EXCLUDED.turn_index, "
    "session_date = EXCLUDED.session_date, search = EXCLUDED.search"
)
# the search vector is left to the table's trigger (schema.py, migration 0003) on an insert, and copied with
# the row on a move
_REPLACE = (
    "UPDATE cm_memories SET owner = %s, user_id = %s, content = %s, importance = %s, tags = %s, "
    "tags_text = %s, created_at = %s, last_accessed = %s, access_count = %s, metadata = %s, source = %s, "
    "superseded_by = %s, merged_from = %s, context = %s, session_id = %s, turn_index = %s, session_date = %s "
    "WHERE id = %s AND tier = %s RETURNING id"
)  # the columns of _row() after (id, tier), then (id, tier)
# Row locks in key order. A statement changing several rows locks them in the order its plan meets them
# (the order of an array joined by a nested loop, the heap's order for a bitmap scan): two statements
# meeting the same rows in different orders deadlock, which costs the aborted one ``deadlock_timeout``
# (1 s) before its retry. So every statement that changes several rows of memories other statements may
# change at once first locks them ordered by (id, tier) (``ORDER BY ... FOR UPDATE``: the locks are taken
# after the sort, whatever the plan), and the transactions under the ids' advisory locks lock every row
# of their ids that way before their first change (:data:`_ROW_LOCKS`).
_DELETE = (
    "WITH locked AS MATERIALIZED (SELECT id FROM cm_memories WHERE tier = %(tier)s AND id = ANY(%(ids)s) "
    "ORDER BY id FOR UPDATE) "
    "DELETE FROM cm_memories AS m USING locked WHERE m.tier = %(tier)s AND m.id = locked.id RETURNING m.id"
)
# Staleness.applies in SQL, checked when locking (on the row as committed then) and when deleting
_STALE = (
    "((%(superseded)s AND superseded_by IS NOT NULL) OR (GREATEST(created_at, last_accessed) < %(cutoff)s "
    "AND (%(keep)s::double precision IS NULL OR importance < %(keep)s)))"
)
_DELETE_STALE = (
    "WITH locked AS MATERIALIZED (SELECT id FROM cm_memories WHERE tier = %(tier)s AND id = ANY(%(ids)s) "
    f"AND {_STALE} ORDER BY id FOR UPDATE) "
    "DELETE FROM cm_memories AS m USING locked WHERE m.tier = %(tier)s AND m.id = locked.id "
    f"AND {_STALE} RETURNING m.id"
)
# the store's own tables: in the first schema of the search_path, not the first of the name along it
_VECTORS_EXIST = f"SELECT {own_table('cm_memory_vectors')} IS NOT NULL"
_MEMORIES_EXIST = f"SELECT {own_table('cm_memories')} IS NOT NULL"
_SIZES = (
    f"SELECT coalesce(pg_total_relation_size({own_table('cm_memories')}), 0), "
    f"coalesce(pg_total_relation_size({own_table('cm_memory_vectors')}), 0), "
    f"coalesce(pg_total_relation_size({own_table('cm_conversation_records')}), 0)"
)
_TOUCH = (
    "WITH u AS MATERIALIZED (SELECT * FROM unnest(%(ids)s::text[], %(at)s::double precision[], "
    "%(counts)s::integer[]) AS u(id, last_accessed, access_count)), "
    "locked AS MATERIALIZED (SELECT m.id, m.tier FROM cm_memories AS m WHERE m.id IN (SELECT id FROM u) "
    "ORDER BY m.id, m.tier FOR UPDATE) "
    "UPDATE cm_memories AS m SET last_accessed = greatest(m.last_accessed, u.last_accessed), "
    "access_count = greatest(m.access_count, u.access_count) "
    "FROM locked JOIN u ON u.id = locked.id WHERE m.id = locked.id AND m.tier = locked.tier RETURNING 1"
)
# accesses added to the stored count (several processes count one memory's uses): the rows are locked first,
# in the order every statement changing several memories locks them, then the attempts before this one
# (a commit whose acknowledgement was lost) are looked up, so a batch is counted once
_LOCK_TOUCHED = "SELECT 1 FROM cm_memories WHERE id = ANY(%s) ORDER BY id, tier FOR UPDATE"
# this attempt's transaction id, and whether an earlier attempt committed. An id this server has not
# assigned yet (the earlier attempt ran on a primary that failed over before its commit reached this one)
# did not commit here: pg_xact_status() would refuse it ("transaction ID ... is in the future")
_ATTEMPT = (
    "SELECT pg_current_xact_id()::text, coalesce((SELECT bool_or(CASE WHEN x < pg_current_xact_id() "
    "THEN pg_xact_status(x) = 'committed' ELSE false END) FROM unnest(%s::text[]::xid8[]) AS x), false)"
)
_ADD_ACCESSES = (
    "WITH u AS MATERIALIZED (SELECT * FROM unnest(%(ids)s::text[], %(at)s::double precision[], "
    "%(added)s::bigint[]) AS u(id, last_accessed, added)) "
    "UPDATE cm_memories AS m SET last_accessed = greatest(m.last_accessed, u.last_accessed), "
    f"access_count = least(m.access_count::bigint + u.added, {2**31 - 1})::integer "
    "FROM u WHERE m.id = u.id"
)
_INSERT_COUNTED = _INSERT + " RETURNING (xmax = 0)"  # true for a new row, false for a replaced one
_MOVE = (
    "INSERT INTO cm_memories (id, tier, owner, user_id, content, importance, tags, tags_text, created_at, "
    "last_accessed, access_count, metadata, source, superseded_by, merged_from, context, session_id, "
    "turn_index, session_date, search) SELECT id, %(target)s, owner, user_id, content, importance, tags, "
    "tags_text, created_at, last_accessed, access_count, metadata, source, superseded_by, merged_from, "
    "context, session_id, turn_index, session_date, search "
    "FROM cm_memories WHERE tier = %(source)s AND id = ANY(%(ids)s) FOR UPDATE "
    + _INSERT[_INSERT.index("ON CONFLICT") :]
    + " RETURNING (xmax = 0) AS new"
)
# tier_value() of backend.py in SQL, from the same constants: ranked on the server, ties by id
_AGE = "(%(now)s - GREATEST(created_at, last_accessed))"
_TIER_VALUE = (
    f"({TIER_VALUE_IMPORTANCE} * importance + {TIER_VALUE_RECENCY} * CASE WHEN {_AGE} <= 0 THEN 1.0 "
    f"WHEN {_AGE} >= {TIER_VALUE_FORGOTTEN_SECONDS} THEN 0.0 "
    f"ELSE power(0.5, {_AGE} / {TIER_VALUE_HALF_LIFE_SECONDS}) END "
    f"+ {TIER_VALUE_ACCESS} * LEAST(1.0, ln(1 + access_count) / ln({1 + TIER_VALUE_ACCESS_SATURATION})))"
)
_OVERFLOW_VICTIMS = (
    "WITH ranked AS MATERIALIZED (SELECT id, row_number() OVER (ORDER BY "
    + _TIER_VALUE
    + ", id) AS r FROM cm_memories WHERE tier = %(tier)s), total AS (SELECT count(*) AS n FROM ranked) "
    "SELECT total.n, ARRAY(SELECT ranked.id FROM ranked WHERE total.n > %(capacity)s "
    "AND ranked.r <= total.n - %(keep)s ORDER BY ranked.r) FROM total"
)
_MOVE_DELETE = "DELETE FROM cm_memories WHERE tier = %(source)s AND id = ANY(%(ids)s) RETURNING 1 AS n"
# an overflow move: the rows still in the source tier, less (below long-term) those with a long-term row,
# which only lose their source row
_MOVE_DOWN = (
    "WITH moved AS ("
    + _MOVE.replace(
        "WHERE tier = %(source)s AND id = ANY(%(ids)s)",
        "WHERE tier = %(source)s AND id = ANY(%(ids)s) AND (%(target)s = 'long' OR NOT EXISTS "
        "(SELECT 1 FROM cm_memories AS l WHERE l.id = cm_memories.id AND l.tier = 'long'))",
    )
    + f"), gone AS ({_MOVE_DELETE}) "
    "SELECT (SELECT count(*) FILTER (WHERE new) FROM moved), (SELECT sum(n) FROM gone)"
)


# Every change to the set of rows of one memory (an overflow move, an update to a tier, a merge, an undo)
# first takes a transaction-level advisory lock per memory id (two-key form: its own key space), in the
# order of the keys (no deadlock between two such changes), then reads in a new statement: it sees every
# change committed before it got the locks. Without them a move could decide from a row another
# transaction was deleting (a short-term row dropped because a long-term copy exists, while an update to
# short-term deleted that copy: the memory in no tier).
_ID_LOCK_SPACE = 0x636D  # "cm"
_ID_LOCKS = (
    "SELECT count(pg_advisory_xact_lock(%s, k)) FROM "
    "(SELECT DISTINCT hashtext(id) AS k FROM unnest(%s::text[]) AS t(id) ORDER BY k) AS keys"
)
# then every row of the ids, in key order (see _DELETE): the statements after it change only rows it locked
# or rows they insert
_ROW_LOCKS = (
    "SELECT count(*) FROM (SELECT 1 FROM cm_memories WHERE id = ANY(%s) ORDER BY id, tier FOR UPDATE) AS rows"
)
# each memory's fastest copy, copied to %(target)s where it has no row there yet
_TO_TIER = (
    "INSERT INTO cm_memories (id, tier, owner, user_id, content, importance, tags, tags_text, created_at, "
    "last_accessed, access_count, metadata, source, superseded_by, merged_from, context, session_id, "
    "turn_index, session_date, search) SELECT DISTINCT ON (id) id, %(target)s, owner, user_id, content, "
    "importance, tags, tags_text, created_at, last_accessed, access_count, metadata, source, superseded_by, "
    "merged_from, context, session_id, turn_index, session_date, search FROM cm_memories AS m "
    "WHERE id = ANY(%(ids)s) AND NOT EXISTS "
    "(SELECT 1 FROM cm_memories AS t WHERE t.id = m.id AND t.tier = %(target)s) "
    f"ORDER BY id, {tier_rank_sql('m.tier')} ON CONFLICT (id, tier) DO NOTHING RETURNING id"
)


def owner_of(user_id: str | None) -> str:
    """The ``owner`` column value of a user (``''``: the default namespace; user ids are never empty)."""
    return "" if user_id is None else user_id


class PostgresBackend:
    """Memory tiers in PostgreSQL (see the module docstring).

    Args:
        database: The pool to use (shared with the persisted conversations).
        weights: BM25 column weights (content, tags, previous turn, date) used as ``ts_rank`` weights.
        owns_database: Close the database with the backend.
    """

    kind = "postgres"
    shared = True
    # an overflow move's statement runs beside the adds of every process and slows those it overlaps: one of
    # 16 rows overlaps fewer adds, for less long, than one of 64 (add p99: docs/benchmarks.md, issue 12)
    move_chunk = 16

    def __init__(
        self, database: PostgresDatabase, *, weights: ColumnWeights | None = None, owns_database: bool = True
    ) -> None:
        self.database = database
        """The connection pool."""
        self._weights = weights or ColumnWeights()
        self._owns_database = owns_database
        self._lexemes: dict[str, tuple[str, ...]] = {}
        self._term_frequencies: dict[str, float] = {}
        self._rare_frequency = 0.0
        self._rows_estimate = 0.0
        self._statistics_read_at = -math.inf
        self._analyzed_at = -math.inf
        self._vector_model: str | None = None
        self._vector_table_seen = False  # the vector table found to exist (it is never dropped once made)
        self._vector_dimension = 0
        self._vector_count = 0
        # tier -> (count, monotonic time it was read): the overflow checks run on every add, so a count
        # is reused for _COUNT_TTL seconds, with every change this process makes applied to it
        self._tier_counts: dict[MemoryTier, tuple[int, float]] = {}
        # memories this process added to each tier (a running sum): a count read while some were added may
        # or may not include them, so it is kept as the larger bound (a count one too low left a tier over
        # its capacity after flush(); one too high only makes the next overflow check read the tier)
        self._count_added: dict[MemoryTier, int] = dict.fromkeys(MemoryTier, 0)

    @classmethod
    def from_config(
        cls, config: ContextManagerConfig, *, weights: ColumnWeights | None = None
    ) -> PostgresBackend:
        """A backend on ``config.postgres_dsn`` with its own pool.

        Raises:
            ConfigurationError: no DSN is configured.
        """
        if config.postgres_dsn is None:
            raise ConfigurationError(
                "postgres_dsn",
                None,
                "a PostgreSQL connection string when memory_backend='postgres' "
                "(set postgres_dsn or PYTHON_CONTEXT_MANAGER_POSTGRES_DSN)",
            )
        database = PostgresDatabase(
            config.postgres_dsn.get_secret_value(),
            pool_size=config.postgres_pool_size,
            connect_timeout=config.postgres_connect_timeout,
            statement_timeout=config.postgres_statement_timeout,
        )
        return cls(database, weights=weights)

    @property
    def location(self) -> str:
        """The DSN without its password."""
        return self.database.location

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and apply the missing migrations (under an advisory lock)."""
        await self.database.open()
        try:
            await self.database.migrate(MIGRATIONS, optional=[name for name, _ in VECTOR_MIGRATIONS])
            await self._rederive_search_vectors()
        except BaseException:
            if self._owns_database:
                await self.database.close()
            raise

    async def _rederive_search_vectors(self) -> None:
        """Give the rows the search vector of migrations ``0011``, ``0012``, ``0014``: a batch a transaction.

        The range done so far is recorded in ``cm_search_rederive`` (a row per migration while work is left;
        ``0011`` derives every row, ``0012`` those holding a combining mark, ``0014`` those holding a
        half-width sound mark, all the current vector): a
        process stopped halfway goes on where it was; of processes starting together, one works while the
        others skip it (``SKIP LOCKED``) and open, their searches missing some folded words until it is
        done. A batch holds whole memories (every tier of its last id) and locks their rows, in key order
        as the moves and updates do, before it reads them (:data:`_REDERIVE_LOCKS`): a write waits at most
        for one batch's rows; rows written meanwhile get the vector from the trigger, or, copied by an
        overflow move, the one the batch gave their source row. A batch of ``0012`` or ``0014`` holding
        none of their rows is passed over after one read, without locks. Nothing is left to do, one indexed
        read.
        """

        async def step(connection: psycopg.AsyncConnection[Any]) -> bool:
            async with connection.transaction():
                cursor = await connection.execute(
                    "SELECT migration, after_id, after_tier FROM cm_search_rederive ORDER BY migration "
                    "LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                record = await cursor.fetchone()
                if record is None:  # done, or another process is on it
                    return True
                migration, after = record[0], record[1:]
                cursor = await connection.execute(
                    "SELECT id FROM cm_memories WHERE (id, tier) > (%s, %s) ORDER BY id, tier "
                    "OFFSET %s LIMIT 1",
                    (*after, _REDERIVE_BATCH - 1),
                )
                end = await cursor.fetchone()
                # a range without a row of this migration (0012, 0014: rare rows) is passed over after a
                # cheap read: no lock, no statement computing vectors (its planning alone takes 0.3 s or more)
                candidates = rederive_candidates_sql(last=end is None, migration=migration)
                if candidates is not None:
                    parameters = tuple(after) if end is None else (*after, end[0])
                    cursor = await connection.execute(candidates, parameters)
                    found = await cursor.fetchone()
                    if not (found and found[0]):
                        return await passed_over(connection, migration, None if end is None else end[0])
                # the rows locked first, the vectors computed in a statement after it: it reads the rows as
                # the writes committed before the locks left them, and none changes until the commit
                if end is None:
                    await connection.execute(_REDERIVE_LOCKS_LAST, tuple(after))
                    await connection.execute(
                        rederive_search_sql(last=True, migration=migration), tuple(after)
                    )
                    await connection.execute(
                        "DELETE FROM cm_search_rederive WHERE migration = %s", (migration,)
                    )
                    return False  # the next migration's rows, if any
                last_id = end[0]
                cursor = await connection.execute(_REDERIVE_LOCKS, (last_id, *after, last_id))
                locked = await cursor.fetchone()
                await connection.execute(
                    rederive_search_sql(last=False, migration=migration), (*after, last_id)
                )
                # done: every tier of the last id (a row of it written later needs nothing: see above)
                await connection.execute(
                    "UPDATE cm_search_rederive SET after_id = %s, after_tier = %s WHERE migration = %s",
                    (last_id, (locked[0] if locked is not None else None) or "", migration),
                )
                return False

        async def passed_over(
            connection: psycopg.AsyncConnection[Any], migration: str, last_id: str | None
        ) -> bool:
            """Record a range holding no row of ``migration`` as done (``None``: the last one); ``False``."""
            if last_id is None:
                await connection.execute("DELETE FROM cm_search_rederive WHERE migration = %s", (migration,))
                return False
            # after every tier of the id: a row of it written later has the trigger's vector
            cursor = await connection.execute("SELECT max(tier) FROM cm_memories WHERE id = %s", (last_id,))
            tier = await cursor.fetchone()
            await connection.execute(
                "UPDATE cm_search_rederive SET after_id = %s, after_tier = %s WHERE migration = %s",
                (last_id, (tier[0] if tier is not None else None) or "", migration),
            )
            return False

        async def allowed(connection: psycopg.AsyncConnection[Any]) -> bool:
            cursor = await connection.execute(_REDERIVE_ALLOWED)
            row = await cursor.fetchone()
            return bool(row and row[0])

        if not await self.database.run(allowed, "search vector upgrade"):
            # an application role granted the tables before this release (its owner ran the migrations):
            # refused, every open failed; the owner's opening derives the vectors
            logger.info(
                "PostgreSQL %s: this role may not change cm_search_rederive; the vectors of migrations 0011, "
                "0012 and 0014, "
                "if any are left to derive, are derived when the tables' owner opens the store",
                self.database.location,
            )
            return
        batches = 0
        while not await self.database.run(step, "search vector upgrade", unbounded=True):
            batches += 1
        if batches:
            logger.info(
                "PostgreSQL search vectors of %s derived again (%d batches)", self.database.location, batches
            )

    async def close(self) -> None:
        """Close the pool (when the backend owns it)."""
        if self._owns_database:
            await self.database.close()

    async def _fetch(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), what: str = "query"
    ) -> list[Any]:
        async def run(connection: psycopg.AsyncConnection[Any]) -> list[Any]:
            cursor = await connection.execute(sql, parameters)
            return await cursor.fetchall()

        return await self.database.run(run, what)

    async def _fetch_converted(
        self,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any],
        what: str,
        convert: Callable[[Sequence[Any]], _T],
    ) -> list[_T]:
        """The rows of ``sql`` (a select list of :func:`_columns` first) converted by ``convert``, in steps.

        The rows arrive whole either way; converting them to Python (decoding their text, parsing their
        metadata) is what holds the loop, for as long as all of them take: they are converted a chunk of
        bounded size at a time (:func:`_converted`), the loop getting a turn between chunks.
        """

        async def run(connection: psycopg.AsyncConnection[Any]) -> list[_T]:
            return await _converted(await connection.execute(sql, parameters), convert)

        return await self.database.run(run, what)

    async def _memories(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), what: str = "read"
    ) -> list[Memory]:
        return await self._fetch_converted(sql, parameters, what, _memory)

    # -- tiers -------------------------------------------------------------------------------------

    async def put(self, tier: MemoryTier, memories: Sequence[Memory]) -> None:
        """Insert or replace memories in ``tier``, committed before returning.

        One row is one autocommitted statement (one round trip); several rows are one transaction.
        """
        if not memories:
            return
        for memory in memories:
            memory.tier = tier
        rows = [_row(memory) for memory in sorted(memories, key=_by_id)]  # rows locked in key order

        async def write(connection: psycopg.AsyncConnection[Any]) -> int:
            if len(rows) == 1:
                cursor = await connection.execute(_INSERT_COUNTED, rows[0])
                found = await cursor.fetchone()
                return 1 if found is not None and found[0] else 0
            async with connection.transaction(), connection.cursor() as cursor:
                return await _execute_counted(cursor, rows)

        self._count_changed(tier, await self.database.run(write, "memory write"))

    async def put_tiers(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> None:
        """:meth:`put` of several tiers in one transaction: another process sees every row or none."""
        groups = [(tier, memories) for tier, memories in groups if memories]
        if len(groups) <= 1:
            for tier, memories in groups:
                await self.put(tier, memories)
            return
        for tier, memories in groups:
            for memory in memories:
                memory.tier = tier
        rows = [(tier, [_row(memory) for memory in memories]) for tier, memories in groups]
        count = sum(len(tier_rows) for _, tier_rows in rows)

        async def write(connection: psycopg.AsyncConnection[Any]) -> list[tuple[MemoryTier, int]]:
            if count <= _ONE_STATEMENT_ROWS:  # an add: one statement, one round trip
                values = [value for _, tier_rows in rows for row in tier_rows for value in row]
                cursor = await connection.execute(_insert_rows(count), values)
                new = [row[0] for row in await cursor.fetchall() if row[1]]
                return [(tier, new.count(tier.value)) for tier, _ in rows]
            async with connection.transaction(), connection.cursor() as cursor:
                return [(tier, await _execute_counted(cursor, tier_rows)) for tier, tier_rows in rows]

        for tier, inserted in await self.database.run(write, "memory write"):
            self._count_changed(tier, inserted)

    async def replace(self, tier: MemoryTier, memories: Sequence[Memory]) -> list[str]:
        """Replace the memories still stored in ``tier``, in one transaction; return the ids replaced.

        An ``UPDATE`` of the row ``(id, tier)``: a row another process deleted or moved meanwhile is not
        found, so it is not written back (an upsert would re-create it next to the moved copy). A memory
        whose text changes loses its stored vector (of the old text) in the same transaction, as with
        :meth:`update`.
        """
        if not memories:
            return []
        rows = []
        texts: dict[str, str] = {}
        for memory in sorted(memories, key=_by_id):  # rows locked in key order (see _DELETE)
            memory.tier = tier
            row = _row(memory)
            rows.append((*row[2:], row[0], row[1]))
            texts[memory.id] = memory.content
        drop_vectors = await self._vector_table_exists()

        async def write(connection: psycopg.AsyncConnection[Any]) -> tuple[list[str], int]:
            replaced: list[str] = []
            async with connection.transaction(), connection.cursor() as cursor:
                retexted: list[str] = []
                if drop_vectors:
                    await cursor.execute(
                        "SELECT m.id FROM cm_memories m "
                        "JOIN unnest(%s::text[], %s::text[]) AS n(id, content) ON m.id = n.id "
                        "WHERE m.tier = %s AND m.content <> n.content",
                        (list(texts), list(texts.values()), tier.value),
                    )
                    retexted = sorted(row[0] for row in await cursor.fetchall())
                await cursor.executemany(_REPLACE, rows, returning=True)
                while True:
                    found = await cursor.fetchone()
                    if found is not None:
                        replaced.append(found[0])
                    if not cursor.nextset():
                        break
                dropped = 0
                if retexted:  # the old text's vectors, committed with the new text
                    await cursor.execute(
                        "DELETE FROM cm_memory_vectors WHERE id = ANY(%s) "
                        "RETURNING model = %s AND dimension = %s",
                        (retexted, self._vector_model, self._vector_dimension),
                    )
                    dropped = sum(1 for row in await cursor.fetchall() if row[0])
            return replaced, dropped

        replaced, dropped = await self.database.run(write, "memory replace")
        if self._vector_model is not None:
            self._vector_count = max(0, self._vector_count - dropped)
        return replaced

    async def move(self, memories: Sequence[Memory], source: MemoryTier, target: MemoryTier) -> None:
        """Move memories between tiers: one statement copies the stored rows and deletes the old ones.

        The rows are copied on the server (nothing travels, and a memory another process deleted
        meanwhile is not brought back). A short-term memory moved to long-term keeps its short-term copy.
        """
        if not memories or source is target:
            return
        ids = [memory.id for memory in memories]
        keep_source = source is MemoryTier.SHORT and target is MemoryTier.LONG
        statement = (
            f"WITH moved AS ({_MOVE}), gone AS ({'SELECT 0 AS n' if keep_source else _MOVE_DELETE}) "
            "SELECT (SELECT count(*) FILTER (WHERE new) FROM moved), (SELECT sum(n) FROM gone)"
        )
        parameters = {"source": source.value, "target": target.value, "ids": ids}
        row = await self._one_under_id_locks(ids, statement, parameters, "memory move")
        inserted, deleted = int(row[0] or 0), int(row[1] or 0)
        self._count_changed(target, inserted)
        self._count_changed(source, -deleted)

    async def move_down(self, ids: Sequence[str], source: MemoryTier, target: MemoryTier) -> int:
        """Move the ``source`` rows of ``ids`` down to ``target`` as they are now: one statement.

        The server picks the rows still in ``source`` and, below long-term, leaves out the ids with a
        long-term row (those only lose their ``source`` row): one statement after the ids' locks
        (:data:`_ID_LOCKS`, sent with it in one pipeline), nothing read back, so an overflow move holds the
        manager's write lock for about one round trip per chunk. Returns how many rows left ``source``.
        """
        if not ids or source is target:
            return 0
        parameters = {"source": source.value, "target": target.value, "ids": list(ids)}
        row = await self._one_under_id_locks(ids, _MOVE_DOWN, parameters, "memory move")
        inserted, deleted = int(row[0] or 0), int(row[1] or 0)
        self._count_changed(target, inserted)
        self._count_changed(source, -deleted)
        return deleted

    async def put_new(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> list[str]:
        """See :meth:`MemoryBackend.put_new`: one transaction under the ids' locks (:data:`_ID_LOCKS`).

        Another process writing one of the ids waits for the lock, then finds it stored; the rows
        written are inserts (nothing stored is written over).
        """
        groups = [(tier, memories) for tier, memories in groups if memories]
        order = list(dict.fromkeys(memory.id for _, memories in groups for memory in memories))
        if not order:
            return []
        for tier, memories in groups:
            for memory in memories:
                memory.tier = tier

        async def work(
            connection: psycopg.AsyncConnection[Any],
        ) -> tuple[set[str], list[tuple[MemoryTier, int]]]:
            cursor = await connection.execute(
                "SELECT DISTINCT id FROM cm_memories WHERE id = ANY(%s)", (order,)
            )
            stored = {row[0] for row in await cursor.fetchall()}
            counts: list[tuple[MemoryTier, int]] = []
            async with connection.cursor() as writer:
                for tier, memories in groups:
                    rows = [_row(memory) for memory in memories if memory.id not in stored]
                    if rows:
                        counts.append((tier, await _execute_counted(writer, rows)))
            return stored, counts

        stored, counts = await self._under_id_locks(order, work, "memory write")
        for tier, inserted in counts:
            self._count_changed(tier, inserted)
        return [memory_id for memory_id in order if memory_id in stored]

    async def add_long_copies(self, ids: Sequence[str]) -> list[str]:
        """See :meth:`MemoryBackend.add_long_copies`: copied on the server under the ids' locks."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []

        async def work(connection: psycopg.AsyncConnection[Any]) -> list[str]:
            cursor = await connection.execute(_TO_TIER, {"target": MemoryTier.LONG.value, "ids": wanted})
            return [row[0] for row in await cursor.fetchall()]

        copied = await self._under_id_locks(wanted, work, "memory write")
        self._count_changed(MemoryTier.LONG, len(copied))
        return copied

    async def delete(
        self, tier: MemoryTier, ids: Sequence[str], *, only: Staleness | None = None
    ) -> list[str]:
        """See :meth:`MemoryBackend.delete` (with ``only``, the staleness is checked by the ``DELETE``).

        A row another transaction is changing (an undo restoring it, an access recorded) is deleted only
        if it is still stale once that change is committed (PostgreSQL re-checks the condition).
        """
        if not ids:
            return []
        parameters: dict[str, Any] = {"tier": tier.value, "ids": list(ids)}
        sql = _DELETE
        if only is not None:
            sql = _DELETE_STALE
            parameters.update(superseded=only.superseded, cutoff=only.cutoff, keep=only.keep_importance)
        rows = await self._fetch(sql, parameters, "memory delete")
        self._count_changed(tier, -len(rows))
        return [row[0] for row in rows]

    async def delete_together(self, ids: Sequence[str]) -> list[tuple[str, MemoryTier]]:
        """See :meth:`MemoryBackend.delete_together`: one ``DELETE`` under the ids' locks."""
        wanted = sorted(set(ids))
        if not wanted:
            return []

        async def work(connection: psycopg.AsyncConnection[Any]) -> list[tuple[str, MemoryTier]]:
            cursor = await connection.execute(
                "DELETE FROM cm_memories WHERE id = ANY(%s) RETURNING id, tier", (wanted,)
            )
            return [(row[0], MemoryTier(row[1])) for row in await cursor.fetchall()]

        deleted = await self._under_id_locks(wanted, work, "memory delete")
        for _, tier in deleted:
            self._count_changed(tier, -1)
        return deleted

    async def _under_id_locks(
        self,
        ids: Sequence[str],
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]],
        what: str,
    ) -> _T:
        """Run ``work`` in one transaction after the advisory locks of ``ids`` and their rows' locks.

        (:data:`_ID_LOCKS`, then :data:`_ROW_LOCKS`.) The locks and the first statement of ``work`` go in
        one pipeline (one round trip); the locks are released at the commit. Retried as a whole on a lost
        connection (nothing of it committed).
        """
        keys = sorted(set(ids))

        async def run(connection: psycopg.AsyncConnection[Any]) -> _T:
            async with connection.pipeline(), connection.transaction():
                await connection.execute(_ID_LOCKS, (_ID_LOCK_SPACE, keys))
                await connection.execute(_ROW_LOCKS, (keys,))
                return await work(connection)

        return await self.database.run(run, what)

    async def _one_under_id_locks(
        self, ids: Sequence[str], sql: str, parameters: Mapping[str, Any], what: str
    ) -> tuple[Any, ...]:
        """The one row of ``sql`` run in its own transaction after the ids' locks: one round trip.

        The transaction's five commands (begin, the two locks, ``sql``, commit) go in one pipeline; the row is
        read after the commit was queued (an overflow move holds the manager's write lock while it runs).
        """
        keys = sorted(set(ids))

        async def run(connection: psycopg.AsyncConnection[Any]) -> tuple[Any, ...]:
            async with connection.pipeline():
                async with connection.transaction():
                    await connection.execute(_ID_LOCKS, (_ID_LOCK_SPACE, keys))
                    await connection.execute(_ROW_LOCKS, (keys,))
                    cursor = await connection.execute(sql, parameters)
                row = await cursor.fetchone()
            return tuple(row) if row is not None else ()

        return await self.database.run(run, what)

    async def update(
        self, ids: Sequence[str], changes: Mapping[str, Any], tier: MemoryTier | None = None
    ) -> list[str]:
        """See :meth:`MemoryBackend.update`: one transaction under the ids' locks, only the changed columns.

        With ``tier``, each memory's fastest copy is copied there (on the server, with its stored search
        vector) where it has no row yet, then its rows in the other tiers are deleted.
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        assignments = _assignments(changes)
        # a new text's vector is made after the commit: the old one goes in the same transaction, so a
        # process killed before it embeds the new text leaves the memory without a vector (embedded by the
        # next open_vectors), never with its old text's vector for good
        drop_vectors = "content" in changes and await self._vector_table_exists()

        async def work(connection: psycopg.AsyncConnection[Any]) -> tuple[list[str], int, list[str], int]:
            if assignments:
                columns = ", ".join(f"{column} = %s" for column, _ in assignments)
                values = [*(value for _, value in assignments), wanted]
                if drop_vectors:  # in the same statement: no round trip of its own
                    cursor = await connection.execute(
                        "WITH dropped AS (DELETE FROM cm_memory_vectors WHERE id = ANY(%s) "
                        "RETURNING model = %s AND dimension = %s AS of_model) "
                        f"UPDATE cm_memories SET {columns} WHERE id = ANY(%s) "  # noqa: S608
                        "RETURNING id, (SELECT count(*) FILTER (WHERE of_model) FROM dropped)",
                        [wanted, self._vector_model, self._vector_dimension, *values],
                    )
                else:
                    cursor = await connection.execute(
                        f"UPDATE cm_memories SET {columns} WHERE id = ANY(%s) RETURNING id",  # noqa: S608
                        values,
                    )
            else:
                cursor = await connection.execute("SELECT id FROM cm_memories WHERE id = ANY(%s)", (wanted,))
            rows = await cursor.fetchall()
            found = {row[0] for row in rows}
            dropped = int(rows[0][1]) if drop_vectors and rows else 0
            present = [memory_id for memory_id in wanted if memory_id in found]
            if tier is None or not present:
                return present, 0, [], dropped
            cursor = await connection.execute(_TO_TIER, {"target": tier.value, "ids": present})
            inserted = len(await cursor.fetchall())
            cursor = await connection.execute(
                "DELETE FROM cm_memories WHERE id = ANY(%s) AND tier <> %s RETURNING tier",
                (present, tier.value),
            )
            return present, inserted, [row[0] for row in await cursor.fetchall()], dropped

        present, inserted, deleted, dropped = await self._under_id_locks(wanted, work, "memory update")
        if self._vector_model is not None:
            self._vector_count = max(0, self._vector_count - dropped)
        if tier is not None:
            self._count_changed(tier, inserted)
            for name in deleted:
                self._count_changed(MemoryTier(name), -1)
        return present

    async def merge(self, groups: Sequence[tuple[Memory, Sequence[Memory]]]) -> list[bool]:
        """See :meth:`MemoryBackend.merge`: every group in one transaction, under the originals' locks.

        The originals are read again under their locks; a group whose originals are all still as they
        were read gets its merged memory written and its originals marked (one ``UPDATE`` of the one
        column); the others are left as they are. Two consolidations (in two processes, or one that lost
        its lock connection) cannot merge an original twice: the second finds it superseded.
        """
        if not groups:
            return []
        ids = [original.id for _, originals in groups for original in originals]

        async def work(connection: psycopg.AsyncConnection[Any]) -> tuple[list[bool], int]:
            cursor = await connection.execute(  # their text converted a chunk per loop step
                "SELECT id, content, importance, tags, superseded_by, metadata, "
                "octet_length(content) + octet_length(tags_text) + pg_column_size(metadata) AS row_bytes "
                "FROM cm_memories WHERE id = ANY(%s)",
                (ids,),
            )
            found: dict[str, list[Memory]] = {}
            for original in await _converted(cursor, _original, size_column=6):
                found.setdefault(original.id, []).append(original)
            flags = [
                all(unchanged_since_read(original, found.get(original.id, [])) for original in originals)
                for _, originals in groups
            ]
            winners = [group for group, merged in zip(groups, flags, strict=True) if merged]
            if not winners:
                return flags, 0
            rows = []
            for merged, _ in winners:
                merged.tier = MemoryTier.LONG
                rows.append(_row(merged))
            async with connection.cursor() as writer:
                inserted = await _execute_counted(writer, rows)
            marks = [(original.id, merged.id) for merged, originals in winners for original in originals]
            await connection.execute(
                "UPDATE cm_memories AS m SET superseded_by = u.merged "
                "FROM unnest(%s::text[], %s::text[]) AS u(id, merged) WHERE m.id = u.id",
                ([mark[0] for mark in marks], [mark[1] for mark in marks]),
            )
            return flags, inserted

        flags, inserted = await self._under_id_locks(ids, work, "memory merge")
        self._count_changed(MemoryTier.LONG, inserted)
        return flags

    async def unmerge(self, merged_id: str, original_ids: Sequence[str]) -> tuple[list[str], list[Memory]]:
        """See :meth:`MemoryBackend.unmerge`: one transaction under the locks of all the ids."""

        async def work(connection: psycopg.AsyncConnection[Any]) -> tuple[list[str], list[Memory]]:
            cursor = await connection.execute(
                "SELECT superseded_by FROM cm_memories WHERE id = %s AND superseded_by IS NOT NULL LIMIT 1",
                (merged_id,),
            )
            later = await cursor.fetchone()
            if later is not None:
                raise merged_again(merged_id, later[0])  # the transaction rolls back: nothing changed
            cursor = await connection.execute(
                "SELECT DISTINCT id FROM cm_memories WHERE id = ANY(%s) AND superseded_by = %s",
                (list(original_ids), merged_id),
            )
            found = {row[0] for row in await cursor.fetchall()}
            missing = [memory_id for memory_id in original_ids if memory_id not in found]
            if missing:
                raise originals_gone(merged_id, missing)  # the transaction rolls back: nothing changed
            cursor = await connection.execute(
                "UPDATE cm_memories SET superseded_by = NULL WHERE id = ANY(%s) AND superseded_by = %s "
                "RETURNING id",
                (list(original_ids), merged_id),
            )
            restored = sorted({row[0] for row in await cursor.fetchall()})
            cursor = await connection.execute(
                f"DELETE FROM cm_memories WHERE id = %s RETURNING {_COLUMNS}",  # noqa: S608
                (merged_id,),
            )
            return restored, [_memory(row) for row in await cursor.fetchall()]

        restored, deleted = await self._under_id_locks([merged_id, *original_ids], work, "memory unmerge")
        for copy in deleted:
            self._count_changed(copy.tier, -1)
        return restored, deleted

    async def _vector_table_exists(self) -> bool:
        """Whether this store's vector table exists (made by the first session with an embedder; kept)."""
        if self._vector_model is None and not self._vector_table_seen:
            exists = await self._fetch(_VECTORS_EXIST, (), "vector table")
            self._vector_table_seen = bool(exists[0][0])
        return self._vector_model is not None or self._vector_table_seen

    async def forget(self, erased: Sequence[str], rewritten: Sequence[str] = ()) -> None:
        """Delete the vectors of memories now in no tier (with or without an embedder this session).

        The rows themselves were deleted by :meth:`delete`; PostgreSQL keeps their dead versions in the
        table's pages (and its WAL) until VACUUM (autovacuum) reclaims the space: see docs/reliability.md.
        ``rewritten`` needs nothing here (an update leaves a dead version like a delete does).
        """
        if not erased:
            return
        if self._vector_model is None:  # vectors written by an earlier session with an embedder
            exists = await self._fetch(_VECTORS_EXIST, (), "vector table")
            if not exists[0][0]:
                return
        dropped = await self._delete_vector_rows(erased)
        if self._vector_model is not None:
            self._vector_count = max(0, self._vector_count - dropped)

    async def touch(self, updates: Mapping[str, tuple[float, int]]) -> None:
        """Record access times and counts (never lowering what another process recorded)."""
        if not updates:
            return
        ids = list(updates)
        parameters = {"ids": ids, "at": [updates[i][0] for i in ids], "counts": [updates[i][1] for i in ids]}
        await self._fetch(_TOUCH, parameters, "access update")

    async def add_accesses(self, updates: Mapping[str, tuple[float, int]], attempts: list[str]) -> None:
        """Add ``id -> (last_accessed, accesses)`` to every stored copy (see :class:`AccessCounter`).

        Each attempt records its transaction id in ``attempts`` before it writes; a retry (the connection
        was lost, maybe after the commit; or a later call with the same list, after this one was cancelled)
        first asks the server whether an earlier attempt committed, and then writes nothing (an id the
        server has not assigned, from a primary that failed over, did not commit there).
        """
        if not updates:
            return
        ids = sorted(updates)
        parameters = {
            "ids": ids,
            "at": [updates[i][0] for i in ids],
            "added": [updates[i][1] for i in ids],
        }

        async def run(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(_LOCK_TOUCHED, (ids,))
                # the rows are locked: an earlier attempt has committed or never will
                cursor = await connection.execute(_ATTEMPT, (attempts,))
                row = await cursor.fetchone()
                assert row is not None
                attempts.append(str(row[0]))
                if not row[1]:
                    await connection.execute(_ADD_ACCESSES, parameters)

        await self.database.run(run, "access update")

    async def copies(self, ids: Sequence[str]) -> list[Memory]:
        """Every stored copy of the memories among ``ids``, fastest tier first per id."""
        if not ids:
            return []
        found = await self._memories(
            f"SELECT {_COLUMNS} FROM cm_memories WHERE id = ANY(%s) ORDER BY id, {tier_rank_sql()}",
            (list(ids),),
        )
        order = {memory_id: position for position, memory_id in enumerate(dict.fromkeys(ids))}
        return sorted(found, key=lambda memory: (order.get(memory.id, 0), TIER_ORDER[memory.tier]))

    async def count(self, tier: MemoryTier) -> int:
        """How many memories ``tier`` holds (every user).

        Read from the server at most every half second (the short and medium tiers together; the long
        tier, which only feeds a warning, every 10 s); in between, the count read last with every change
        this process made since (what it added while the count was read is added to it: it may or may
        not be in the count, and too low a count would leave an overflow unnoticed). Other processes'
        changes show at the next read: the capacities are soft limits, enforced by whichever process
        sees the overflow.
        """
        now = time.monotonic()
        known = self._tier_counts.get(tier)
        lifetime = _LONG_COUNT_TTL if tier is MemoryTier.LONG else _COUNT_TTL
        if known is not None and now - known[1] < lifetime:
            return known[0]
        tiers = [tier.value] if tier is MemoryTier.LONG else [MemoryTier.SHORT.value, MemoryTier.MEDIUM.value]
        added = dict(self._count_added)
        rows = await self._fetch(
            "SELECT t.tier, (SELECT count(*) FROM cm_memories AS m WHERE m.tier = t.tier) "
            "FROM unnest(%s::text[]) AS t(tier)",
            (tiers,),
            "count",
        )
        counted = {MemoryTier(name): int(count) for name, count in rows}
        for counted_tier, count in counted.items():
            self._keep_count(counted_tier, count, now, added[counted_tier])
        return self._tier_counts[tier][0]

    def known_count(self, tier: MemoryTier) -> tuple[int, bool] | None:
        """The count :meth:`count` keeps (this process's changes applied), and whether it is due a re-read."""
        known = self._tier_counts.get(tier)
        if known is None:
            return None
        lifetime = _LONG_COUNT_TTL if tier is MemoryTier.LONG else _COUNT_TTL
        return known[0], time.monotonic() - known[1] >= lifetime

    def _keep_count(self, tier: MemoryTier, count: int, read_at: float, added_before: int) -> None:
        """Keep a count read from the server, plus what this process added to the tier while it was read."""
        self._tier_counts[tier] = (count + self._count_added[tier] - added_before, read_at)

    def _count_changed(self, tier: MemoryTier, change: int) -> None:
        if change > 0:
            self._count_added[tier] += change
        known = self._tier_counts.get(tier)
        if known is not None and change:
            self._tier_counts[tier] = (max(0, known[0] + change), known[1])

    async def members(self, tier: MemoryTier) -> list[Memory]:
        """Every memory of ``tier`` (and so its exact count, kept for :meth:`count`)."""
        read_at, added = time.monotonic(), self._count_added[tier]
        found = await self._memories(f"SELECT {_COLUMNS} FROM cm_memories WHERE tier = %s", (tier.value,))
        self._keep_count(tier, len(found), read_at, added)
        return found

    async def overflow_victims(self, tier: MemoryTier, capacity: int, keep: int, now: float) -> list[str]:
        """See :meth:`MemoryBackend.overflow_victims`: ranked by the server, only the victims' ids travel.

        The tier's exact count comes back too and is kept for :meth:`count`.
        """
        read_at, added = time.monotonic(), self._count_added[tier]
        rows = await self._fetch(
            _OVERFLOW_VICTIMS,
            {"tier": tier.value, "capacity": capacity, "keep": keep, "now": now},
            "read",
        )
        count, victims = int(rows[0][0]), list(rows[0][1] or [])
        self._keep_count(tier, count, read_at, added)
        return victims

    async def long_copies(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` with a long-term row."""
        if not ids:
            return set()
        rows = await self._fetch(
            "SELECT id FROM cm_memories WHERE tier = 'long' AND id = ANY(%s)", (list(ids),), "read"
        )
        return {row[0] for row in rows}

    async def scan(self, scope: UserScope, *, every_copy: bool) -> list[Memory]:
        """Every memory of the scope (one per memory, fastest tier; or every stored copy)."""
        where, parameters = _scope_sql(scope)
        if every_copy:
            return await self._memories(f"SELECT {_COLUMNS} FROM cm_memories {where}", parameters, "scan")
        return await self._memories(
            f"SELECT DISTINCT ON (id) {_COLUMNS} FROM cm_memories {where} ORDER BY id, {tier_rank_sql()}",
            parameters,
            "scan",
        )

    async def newest(self, scope: UserScope, limit: int) -> list[Memory]:
        """The scope's ``limit`` newest memories not superseded, newest first (each once, fastest tier)."""
        where, parameters = _scope_sql(scope)
        condition = f"{where} AND superseded_by IS NULL" if where else "WHERE superseded_by IS NULL"
        return await self._memories(
            # a memory has at most one row per tier, all with its created_at: 3 x limit rows hold the newest
            f"SELECT * FROM (SELECT DISTINCT ON (id) * FROM (SELECT {_COLUMNS}, {tier_rank_sql()} AS rank "
            f"FROM cm_memories {condition} ORDER BY created_at DESC, id DESC LIMIT %s) AS rows "
            "ORDER BY id, rank) AS m ORDER BY created_at DESC, id DESC LIMIT %s",
            [*parameters, 3 * limit, limit],
            "newest",
        )

    async def with_tags(
        self, tags: Sequence[str], scope: UserScope, tiers: frozenset[MemoryTier] | None
    ) -> list[Memory]:
        """Memories of the scope carrying any of ``tags`` (one per memory, fastest tier)."""
        where, parameters = _scope_sql(scope)
        clauses = [where or "WHERE true", "AND tags && %s::text[]"]
        parameters.append(list(tags))
        if tiers is not None:
            clauses.append("AND tier = ANY(%s)")
            parameters.append([tier.value for tier in tiers])
        return await self._memories(
            f"SELECT DISTINCT ON (id) {_COLUMNS} FROM cm_memories {' '.join(clauses)} "
            f"ORDER BY id, {tier_rank_sql()}",
            parameters,
            "tag search",
        )

    async def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """The memories that are the given conversation turns (one per memory, fastest tier)."""
        if not keys:
            return []
        return await self._memories(
            f"SELECT DISTINCT ON (m.id) {_columns('m')} "
            "FROM cm_memories AS m JOIN unnest(%s::text[], %s::text[], %s::bigint[]) "
            "AS k(owner, session_id, turn_index) ON m.owner = k.owner AND m.session_id = k.session_id "
            "AND m.turn_index = k.turn_index "
            f"ORDER BY m.id, {tier_rank_sql('m.tier')}",
            (
                [owner_of(key[0]) for key in keys],
                [key[1] for key in keys],
                [key[2] for key in keys],
            ),
            "turn lookup",
        )

    async def last_turn_index(self, user_id: str | None, session_id: str) -> int | None:
        """The highest turn index stored for a conversation session, or ``None``."""
        rows = await self._fetch(
            "SELECT max(turn_index) FROM cm_memories WHERE owner = %s AND session_id = %s",
            (owner_of(user_id), session_id),
            "turn lookup",
        )
        return None if rows[0][0] is None else int(rows[0][0])

    # -- search ------------------------------------------------------------------------------------

    async def _term_statistics(self, tokens: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], float]:
        """Each token's lexemes (of all its :func:`_written_forms`, by the server's stemmer) and row estimate.

        Statistics are cached.
        """
        # read from the cache now: another search may clear it while this one awaits the server
        known = {token: self._lexemes[token] for token in tokens if token in self._lexemes}
        missing = [token for token in tokens if token not in known]
        now = time.monotonic()
        stale = now - self._statistics_read_at > _STATISTICS_TTL
        if not missing and not stale:
            return known, self._rows_estimate

        async def read(connection: psycopg.AsyncConnection[Any]) -> tuple[list[Any], list[Any], list[Any]]:
            lexemes: list[Any] = []
            if missing:
                forms = list(dict.fromkeys(form for token in missing for form in _written_forms(token)))
                cursor = await connection.execute(
                    f"SELECT t, tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, t)) "
                    "FROM unnest(%s::text[]) AS t",
                    (forms,),
                )
                lexemes = await cursor.fetchall()
            statistics: list[Any] = []
            rows: list[Any] = []
            if stale:
                cursor = await connection.execute(
                    "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
                    "WHERE schemaname = current_schema() AND tablename = 'cm_memories' AND attname = 'search'"
                )
                statistics = await cursor.fetchall()
                cursor = await connection.execute(
                    "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = 'cm_memories'::regclass"
                )
                rows = await cursor.fetchall()
            return lexemes, statistics, rows

        lexemes, statistics, rows = await self.database.run(read, "term statistics")
        of_form = {form: tuple(form_lexemes or ()) for form, form_lexemes in lexemes}
        if len(self._lexemes) + len(missing) > 50_000:
            self._lexemes.clear()
        for token in missing:
            known[token] = self._lexemes[token] = tuple(
                dict.fromkeys(lexeme for form in _written_forms(token) for lexeme in of_form.get(form, ()))
            )
        if stale:
            self._statistics_read_at = now
            self._rows_estimate = float(rows[0][0]) if rows else 0.0
            if statistics and statistics[0][0]:
                elements, frequencies = statistics[0]
                self._term_frequencies = dict(zip(elements, frequencies, strict=False))
                # the last three numbers are the minimum and maximum frequency and the null share
                self._rare_frequency = float(frequencies[-3]) / 2.0 if len(frequencies) > 3 else 0.0
            else:
                self._term_frequencies = {}
                self._rare_frequency = 0.0
                await self._maybe_analyze()
        return known, self._rows_estimate

    async def _maybe_analyze(self) -> None:
        """Collect statistics for a table the server has not analysed yet (at most every few minutes)."""
        now = time.monotonic()
        if now - self._analyzed_at < _ANALYZE_EVERY:
            return
        self._analyzed_at = now
        with contextlib.suppress(Exception):  # statistics are an optimisation: never fail a search on them
            await self._execute("ANALYZE cm_memories")
            self._statistics_read_at = -math.inf

    async def _execute(self, sql: str, parameters: Sequence[Any] = (), *, unbounded: bool = False) -> None:
        """Run one statement (``unbounded``: without the statement timeout, for index builds and rewrites)."""

        async def run(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(sql, parameters)

        await self.database.run(run, "statement", unbounded=unbounded)

    def _document_frequency(self, lexemes: tuple[str, ...], rows: float) -> int:
        if not lexemes:
            return 0
        frequency = max(self._term_frequencies.get(lexeme, self._rare_frequency) for lexeme in lexemes)
        return max(1, round(frequency * rows))

    async def term_frequencies(self, tokens: Sequence[str]) -> tuple[dict[str, int], int]:
        """Each word's document frequency estimated from the server's statistics, and the row estimate.

        A word counts as the terms it is searched by (``index_terms``: a symbol's term, a Chinese or
        Japanese run's pairs; ``spell_numbers``); a word of several terms, the fewest memories of one of them.
        """
        if not tokens:
            return {}, 0
        terms_of = {
            token: [spell_numbers(fold_accents(term)) for term in index_terms(token)] for token in tokens
        }
        terms = list(dict.fromkeys(term for token_terms in terms_of.values() for term in token_terms))
        lexemes, rows = await self._term_statistics(terms)
        counts = {term: self._document_frequency(lexemes[term], rows) for term in terms}
        frequencies = {token: min(counts[term] for term in terms_of[token]) for token in tokens}
        return frequencies, max(int(rows), 0)

    async def search(self, query: LexicalQuery) -> list[tuple[Memory, float]]:
        """One query over every tier: IDF-weighted ``ts_rank`` per word, filters in the ``WHERE`` clause."""
        # the terms Chinese, Japanese, symbols and the words holding a "²" or "½" are indexed as, accents
        # folded as the index folds them (fold_accents)
        tokens = list(
            dict.fromkeys(spell_numbers(fold_accents(token)) for token in segment_tokens(query.tokens))
        )
        if not tokens or query.limit <= 0:
            return []
        lexemes, rows = await self._term_statistics(tokens)
        tokens = [token for token in tokens if lexemes[token]]  # stop words index nothing
        if not tokens:
            return []
        total = max(int(rows), 1)
        frequencies = {token: self._document_frequency(lexemes[token], rows) for token in tokens}
        kept = prune_common_terms(
            tokens,
            tokens,
            frequencies,
            total,
            query.common_term_ratio,
            query.common_term_min_documents,
            query.common_term_max_documents,
        )
        weights = self._weights
        rank_weights = f"'{{{weights.date}, {weights.context}, {weights.tags}, {weights.content}}}'::float4[]"
        term = f"plainto_tsquery('{TEXT_SEARCH_CONFIG}'::regconfig, %s)"
        forms = [_written_forms(token) for token in kept]
        # each word's tsquery is parsed once, in a materialized CTE: written inline in the ranking
        # expression, the server parsed (and stemmed) every word again for every matching row: 43 % of
        # the statement's p50 at 100k memories, same results
        words = ", ".join(
            f"{' || '.join([term] * len(written))} AS q{number}" for number, written in enumerate(forms)
        )
        score = " + ".join(
            f"%s * ts_rank({rank_weights}, m.search, t.q{number}, {_RANK_NORMALIZATION})"
            for number in range(len(kept))
        )
        matches = " || ".join(f"t.q{number}" for number in range(len(kept)))
        parameters: list[Any] = [
            *(form for written in forms for form in written),
            *(bm25_idf(total, frequencies[token]) for token in kept),
        ]
        clauses = [f"m.search @@ ({matches})", "m.superseded_by IS NULL"]
        if query.scope is not ALL_USERS:
            clauses.append("m.owner = %s")
            parameters.append(owner_of(query.scope))
        if query.tiers is not None:
            clauses.append("m.tier = ANY(%s)")
            parameters.append([tier.value for tier in query.tiers])
        if query.tags is not None:  # an empty set matches nothing, as in LexicalQuery.accepts
            clauses.append("m.tags && %s::text[]")
            parameters.append(sorted(query.tags))
        if query.min_importance is not None:
            clauses.append("m.importance >= %s")
            parameters.append(query.min_importance)
        if query.since is not None:
            clauses.append("m.created_at >= %s")
            parameters.append(query.since)
        if query.until is not None:
            clauses.append("m.created_at <= %s")
            parameters.append(query.until)
        parameters.append(2 * query.limit)  # a memory held in two tiers takes two rows
        columns = _columns("m")
        found = await self._fetch_converted(
            f"WITH t AS MATERIALIZED (SELECT {words}) "
            f"SELECT {columns}, {score} AS score FROM t, cm_memories AS m WHERE {' AND '.join(clauses)} "
            "ORDER BY score DESC, m.id LIMIT %s",
            parameters,
            "search",
            _scored_memory,
        )
        best: dict[str, tuple[Memory, float]] = {}
        for memory, value in found:
            previous = best.get(memory.id)
            if previous is None or TIER_ORDER[memory.tier] < TIER_ORDER[previous[0].tier]:
                best[memory.id] = (memory, max(value, previous[1]) if previous else value)
        ranked = sorted(best.values(), key=lambda pair: (-pair[1], pair[0].id))
        return [(memory, value) for memory, value in ranked[: query.limit] if value > 0]

    # -- vectors -----------------------------------------------------------------------------------

    async def open_vectors(self, model: str, dimension: int) -> list[Memory]:
        """Create the vector table and its HNSW index (pgvector); return the memories without a vector.

        The vectors of memories no longer stored (in no tier) are deleted.
        """
        try:
            await self.database.migrate(MIGRATIONS + VECTOR_MIGRATIONS)
        except StorageError as error:
            if 'extension "vector"' not in str(error) or await self._has_vector_extension():
                raise
            # the server's words (permission denied, extension not available) say what failed, not why
            # the library wanted it nor what to do: a default embedder turns the vector channel on
            raise StorageError(
                f"{error}. The vector channel of memory search (an embedder: the default "
                "embedder='auto' uses MiniLM once the embeddings extra is installed) needs the pgvector "
                "extension in this database; have an administrator run 'CREATE EXTENSION vector' in it "
                "(docs/postgres.md), or search lexically only with embedder='none' "
                "(PYTHON_CONTEXT_MANAGER_EMBEDDER=none)",
                path=error.path,
            ) from error
        # workers starting together: each would create the index; they take turns under the lock
        await self.database.create_if_missing(hnsw_index_statement(dimension), "vector index")
        self._vector_model, self._vector_dimension = model, dimension
        # the vectors of memories in no tier: a delete whose vector was to be erased after its commit (a
        # process killed in between, a cancellation as the commit went through before this version)
        await self._fetch(
            "DELETE FROM cm_memory_vectors AS v WHERE NOT EXISTS "
            "(SELECT 1 FROM cm_memories AS m WHERE m.id = v.id) RETURNING 1",
            (),
            "orphaned vector delete",
        )
        missing = await self._memories(
            f"SELECT DISTINCT ON (m.id) {_columns('m')} "
            "FROM cm_memories AS m WHERE NOT EXISTS (SELECT 1 FROM cm_memory_vectors AS v "
            "WHERE v.id = m.id AND v.model = %s AND v.dimension = %s) "
            f"ORDER BY m.id, {tier_rank_sql('m.tier')}",
            (model, dimension),
            "vector scan",
        )
        await self._refresh_vector_count()
        return missing

    async def _has_vector_extension(self) -> bool:
        """Whether pgvector is enabled in the database (True when that cannot be read either)."""
        try:
            rows = await self._fetch("SELECT 1 FROM pg_extension WHERE extname = 'vector'", (), "extension")
        except StorageError:
            return True  # the server cannot say: keep the error it gave
        return bool(rows)

    async def _refresh_vector_count(self) -> None:
        rows = await self._fetch(
            "SELECT count(*) FROM cm_memory_vectors WHERE model = %s AND dimension = %s",
            (self._vector_model, self._vector_dimension),
            "vector count",
        )
        self._vector_count = int(rows[0][0])

    async def save_vectors(self, model: str, memories: Sequence[Memory], vectors: numpy.ndarray) -> None:
        """Upsert one vector per memory.

        The vectors go in pgvector's binary form (their float32 values as they are): formatting each value
        as text took longer than the server's insert.
        """
        if not memories:
            return
        rows = [
            (memory.id, owner_of(memory.user_id), model, int(vector.shape[0]), _BinaryVector(vector))
            for memory, vector in zip(memories, vectors, strict=True)
        ]

        current = (self._vector_model, self._vector_dimension)

        async def write(connection: psycopg.AsyncConnection[Any]) -> int:
            async with connection.transaction(), connection.cursor() as cursor:
                # the vectors of the current model this write adds (one replacing a memory's vector of
                # that model adds none): the count is of vectors stored, not of vectors saved
                await cursor.execute(
                    "SELECT count(*) FROM cm_memory_vectors "
                    "WHERE id = ANY(%s) AND model = %s AND dimension = %s",
                    ([row[0] for row in rows], *current),
                )
                counted = await cursor.fetchone()
                replaced = int(counted[0]) if counted is not None else 0
                cursor.adapters.register_dumper(_BinaryVector, _binary_vector_dumper())
                await cursor.executemany(
                    "INSERT INTO cm_memory_vectors (id, owner, model, dimension, embedding) "
                    "VALUES (%s, %s, %s, %s, %b::vector) ON CONFLICT (id) DO UPDATE SET "
                    "owner = EXCLUDED.owner, model = EXCLUDED.model, dimension = EXCLUDED.dimension, "
                    "embedding = EXCLUDED.embedding",
                    rows,
                )
            ours = len({row[0] for row in rows if (row[2], row[3]) == current})
            return ours - replaced

        self._vector_count = max(0, self._vector_count + await self.database.run(write, "vector write"))

    @contextlib.asynccontextmanager
    async def bulk_vectors(self, dimension: int, count: int) -> AsyncIterator[None]:
        """Around :meth:`save_vectors` of ``count`` vectors of ``dimension`` (``memory migrate``).

        Inserting a vector into the HNSW index costs far more than building the index over the stored
        vectors at once (20,000 vectors of 384 dimensions: ~50 s of inserts, a few seconds without the
        index and ~2 s to build it). So when ``count`` is at least :data:`_BULK_VECTORS` and at least the
        number of vectors of that dimension stored already, the dimension's index is dropped for the block
        and built again after it. Searches meanwhile read every vector (exact, slower). A block that fails
        builds it again too; one interrupted (cancelled, or the process killed) leaves that to the next
        :meth:`open_vectors`: a manager opening the storage with an embedder, or the migration run again.
        """
        if count < _BULK_VECTORS:
            yield
            return
        stored = await self._fetch(
            "SELECT count(*) FROM cm_memory_vectors WHERE dimension = %s", (dimension,), "vector count"
        )
        if int(stored[0][0]) > count:
            yield
            return
        try:
            await self._execute(f"DROP INDEX IF EXISTS {hnsw_index_name(dimension)}", unbounded=True)
        except StorageError as error:  # not the index's owner, say: written through the index then
            logger.info("vectors written with their index kept: %s", error)
            yield
            return
        try:
            yield
        except Exception:
            with contextlib.suppress(Exception):
                await self._execute(hnsw_index_statement(dimension), unbounded=True)
            raise
        await self._execute(hnsw_index_statement(dimension), unbounded=True)

    async def delete_vectors(self, ids: Sequence[str]) -> None:
        """Forget the vectors of ``ids`` (in a session without an embedder too: if the table exists)."""
        if not ids or not await self._vector_table_exists():
            return
        self._vector_count = max(0, self._vector_count - await self._delete_vector_rows(ids))

    async def _delete_vector_rows(self, ids: Sequence[str]) -> int:
        """Delete the vectors of ``ids`` (every model); return how many were of the current model."""
        rows = await self._fetch(
            "DELETE FROM cm_memory_vectors WHERE id = ANY(%s) RETURNING model = %s AND dimension = %s",
            (list(ids), self._vector_model, self._vector_dimension),
            "vector delete",
        )
        return sum(1 for row in rows if row[0])

    async def nearest(self, vector: numpy.ndarray, scope: UserScope, limit: int) -> list[VectorHit]:
        """The scope's most similar vectors (HNSW with iterative scans, so a filter keeps enough hits)."""
        if self._vector_model is None or limit <= 0:
            return []
        dimension = self._vector_dimension
        cast = f"embedding::vector({dimension})"
        clauses = ["dimension = %s", "model = %s"]
        parameters: list[Any] = [_vector_text(vector), dimension, self._vector_model]
        if scope is not ALL_USERS:
            clauses.append("owner = %s")
            parameters.append(owner_of(scope))
        parameters += [_vector_text(vector), limit]

        async def run(connection: psycopg.AsyncConnection[Any]) -> list[Any]:
            async with connection.transaction():
                await connection.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                await connection.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, limit))}")
                cursor = await connection.execute(
                    f"SELECT id, 1 - ({cast} <=> %s::vector({dimension})) FROM cm_memory_vectors "  # noqa: S608
                    f"WHERE {' AND '.join(clauses)} ORDER BY {cast} <=> %s::vector({dimension}) LIMIT %s",
                    parameters,
                )
                return await cursor.fetchall()

        rows = await self.database.run(run, "vector search")
        hits = [(row[0], float(row[1])) for row in rows]
        hits.sort(key=lambda hit: -hit[1])
        return hits

    async def similarities(self, vector: numpy.ndarray, ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity with the stored vector of each id that has one."""
        if not ids or self._vector_model is None:
            return {}
        dimension = self._vector_dimension
        rows = await self._fetch(
            f"SELECT id, 1 - (embedding::vector({dimension}) <=> %s::vector({dimension})) "
            "FROM cm_memory_vectors WHERE id = ANY(%s) AND model = %s AND dimension = %s",
            (_vector_text(vector), list(ids), self._vector_model, dimension),
            "vector scores",
        )
        return {row[0]: float(row[1]) for row in rows}

    async def vectors_of(self, ids: Sequence[str]) -> dict[str, numpy.ndarray]:
        """The stored vectors of ``ids``."""
        if not ids or self._vector_model is None:
            return {}
        rows = await self._fetch(
            "SELECT id, embedding::text FROM cm_memory_vectors WHERE id = ANY(%s) AND model = %s",
            (list(ids), self._vector_model),
            "vector read",
        )
        return {row[0]: _vector_of(row[1]) for row in rows}

    def vector_count(self) -> int:
        """Vectors of the current model, as last counted (this process's writes included)."""
        return self._vector_count

    async def vector_models(self) -> list[tuple[str, int]]:
        """Every ``(model, dimension)`` with stored vectors (none before the vector table exists)."""
        rows = await self._fetch(_VECTORS_EXIST, (), "vector models")
        if not rows[0][0]:
            return []
        rows = await self._fetch(
            "SELECT model, dimension FROM cm_memory_vectors GROUP BY model, dimension ORDER BY 1, 2",
            (),
            "vector models",
        )
        return [(str(model), int(dimension)) for model, dimension in rows]

    async def load_vectors(self, model: str, dimension: int) -> tuple[list[str], numpy.ndarray]:
        """The ids and the matrix (float32) of the vectors stored for ``model``."""
        import numpy as np

        if not await self.vector_models():
            return [], np.zeros((0, dimension), dtype=np.float32)

        async def run(connection: psycopg.AsyncConnection[Any]) -> tuple[list[str], numpy.ndarray]:
            # binary (vector_send): parsing the text form took 10 times longer
            cursor = await connection.execute(
                "SELECT id, vector_send(embedding), octet_length(id) + 8 * dimension + 8 AS row_bytes "
                "FROM cm_memory_vectors WHERE model = %s AND dimension = %s ORDER BY id",
                (model, dimension),
            )
            result = cursor.pgresult
            matrix = np.empty((0 if result is None else result.ntuples, dimension), dtype=np.float32)
            # its pages first touched in a worker thread (numpy releases the interpreter while it fills):
            # a large array is backed by huge pages, and their first touch (the kernel compacting memory
            # for them) held the loop's thread tens of milliseconds per chunk converted into it
            await asyncio.to_thread(matrix.fill, 0.0)
            ids: list[str] = []

            def fill(row: Sequence[Any]) -> None:  # into the matrix, a chunk per loop step
                matrix[len(ids)] = _vector_of_binary(row[1])
                ids.append(row[0])

            await _converted(cursor, fill, size_column=2)
            return ids, matrix

        return await self.database.run(run, "vector read")

    # -- coordination and upkeep -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, *names: str) -> AsyncIterator[None]:
        """Hold session advisory locks named ``names`` (taken in this order) on one connection for the block.

        The connection is not one of the pool's (:meth:`PostgresDatabase.lock_connection`): the work in
        the block needs pooled connections. Taking the locks is retried on a lost connection
        (:meth:`PostgresDatabase.advisory_locks`); they are released in the reverse order at the end of the
        block (or by the server if the connection is lost: what runs in the block stays correct without
        them, see :meth:`merge`).
        """
        async with self.database.advisory_locks([f"context_manager:{name}" for name in names]):
            yield

    @contextlib.asynccontextmanager
    async def try_exclusive(self, name: str) -> AsyncIterator[bool]:
        """Try a session advisory lock named ``name`` (no wait); held for the block, as :meth:`exclusive`."""
        async with self.database.advisory_locks([f"context_manager:{name}"], wait=False) as acquired:
            yield acquired

    def file_faults(self) -> dict[str, str]:
        """No files: the memory lives on the server."""
        return {}

    async def restore_files(self) -> dict[str, Any]:
        """Nothing to restore (no files)."""
        return {"restored": [], "failed": {}}

    def needs_compaction(self) -> bool:
        """PostgreSQL reclaims space itself (autovacuum)."""
        return False

    async def compact(self) -> tuple[int, int]:
        """Nothing to rewrite."""
        return (0, 0)

    async def stats(self, scope: UserScope) -> BackendStats:
        """Counts of the scope, by SQL aggregates on the server."""
        where, parameters = _scope_sql(scope)
        tiers = await self._fetch(
            f"SELECT tier, count(*) FROM cm_memories {where} GROUP BY tier", parameters, "stats"
        )
        users = await self._fetch(
            "SELECT user_id, count(*), count(*) FILTER (WHERE superseded_by IS NOT NULL), min(created_at), "
            f"max(created_at), sum(importance) FROM (SELECT DISTINCT ON (id) * FROM cm_memories {where} "
            f"ORDER BY id, {tier_rank_sql()}) AS distinct_memories GROUP BY user_id",
            parameters,
            "stats",
        )
        stats = BackendStats()
        for tier, count in tiers:
            stats.by_tier[tier] = int(count)
        for user_id, count, superseded, oldest, newest, importance in users:
            stats.total += int(count)
            owner = owner_label(user_id)
            stats.by_user[owner] = stats.by_user.get(owner, 0) + int(count)
            stats.superseded += int(superseded)
            stats.oldest = oldest if stats.oldest is None else min(stats.oldest, oldest)
            stats.newest = newest if stats.newest is None else max(stats.newest, newest)
            stats.importance_total += float(importance or 0.0)
        return stats

    async def size(self) -> dict[str, int]:
        """Bytes the tables and their indexes use on the server."""
        rows = await self._fetch(
            _SIZES,
            (),
            "size",
        )
        memories, vectors, conversations = (int(value) for value in rows[0])
        return {
            "database": memories + vectors,
            "conversations": conversations,
            "total": memories + vectors + conversations,
        }

    async def optimize(self) -> dict[str, Any]:
        """Refresh the planner statistics (the search's term frequencies come from them)."""
        before = (await self.size())["database"]
        await self._execute("ANALYZE cm_memories")
        self._statistics_read_at = -math.inf
        return {
            "log_bytes_before": 0,
            "log_bytes_after": 0,
            "database_bytes_before": before,
            "database_bytes_after": (await self.size())["database"],
        }

    async def check_integrity(self, *, quick: bool = False) -> dict[str, Any]:
        """The server answers and the schema is in place; ``"ok"`` or the problem."""
        try:
            rows = await self._fetch(_MEMORIES_EXIST, (), "check")
        except Exception as error:  # StorageError: the server is unreachable
            return {"postgres": str(error)}
        return {"postgres": "ok" if rows[0][0] else "the cm_memories table is missing"}

    async def rebuild_index(self) -> dict[str, int]:
        """Compute every search vector again from its row, rebuild the indexes, count rows per tier."""
        await self._execute("UPDATE cm_memories SET search = NULL", unbounded=True)  # the trigger computes it
        await self._execute("REINDEX TABLE cm_memories", unbounded=True)
        rows = await self._fetch("SELECT tier, count(*) FROM cm_memories GROUP BY tier", (), "count")
        counts = {tier.value: 0 for tier in MemoryTier}
        counts.update({tier: int(count) for tier, count in rows})
        return counts


def _by_id(memory: Memory) -> str:
    return memory.id


async def _execute_counted(cursor: psycopg.AsyncCursor[Any], rows: Sequence[Sequence[Any]]) -> int:
    """Upsert ``rows`` (in the caller's transaction); return how many were new rows."""
    await cursor.executemany(_INSERT_COUNTED, rows, returning=True)
    inserted = 0
    while True:
        found = await cursor.fetchone()
        if found is not None and found[0]:
            inserted += 1
        if not cursor.nextset():
            return inserted


_ONE_STATEMENT_ROWS = 16  # put_tiers writes up to this many rows with one multi-row INSERT
_BULK_VECTORS = 1000  # bulk_vectors drops and rebuilds the HNSW index from this many vectors on


@functools.lru_cache(maxsize=_ONE_STATEMENT_ROWS)
def _insert_rows(count: int) -> str:
    """:data:`_INSERT` of ``count`` rows in one statement, returning each row's tier and whether it is new."""
    one = f"({', '.join(['%s'] * 19)})"
    return _INSERT.replace(one, ", ".join([one] * count), 1) + " RETURNING tier, (xmax = 0)"


def _assignments(changes: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The columns (and values) an :meth:`PostgresBackend.update` of ``changes`` writes."""
    from psycopg.types.json import Json

    assignments: list[tuple[str, Any]] = []
    for name, value in changes.items():
        if name in ("content", "context"):
            assignments.append((name, str(value)))
        elif name == "importance":
            assignments.append(("importance", float(value)))
        elif name == "tags":
            tags = list(value)
            assignments += [("tags", tags), ("tags_text", _indexed_tags_text(tags))]
        elif name == "metadata":
            probe = Memory(id="-", content="-", metadata=dict(value))  # the columns read from the metadata
            assignments += [
                ("metadata", Json(probe.metadata)),
                ("session_id", probe.session_id),
                ("turn_index", probe.turn_index),
                ("session_date", _indexed_date(probe)),
            ]
        else:
            raise ValueError(
                f"update: {name!r} cannot be changed (allowed: content, context, importance, tags, metadata)"
            )
    return assignments


INDEXED_TAG_BYTES = 256 * 1024
"""The full-text index holds a memory's tags, in their order, while their text as the server parses it
(:func:`_indexed_tags_text`) fits this many bytes of UTF-8; the tag filter and ``search_by_tags`` see every
tag. A ``tsvector`` holds at most 1 MB of words, and 80,000 distinct tags made more: the memory failed to
store ("string is too long for tsvector"), where SQLite indexes them all. This leaves room for the first
100,000 characters of the content (``schema.SEARCHED_CONTENT_CHARS``): a few hundred KB of words, but for
text made mostly of distinct words of superscripts or circled numbers (each spelled in ASCII), which with
such tags exceeded the limit: the trigger then indexes less of the content (``schema.FITTING_TEXT_BYTES``,
migration ``0011``)."""

INDEXED_DATE_CHARS = 1_000
"""The full-text index holds the first this many characters of a memory's ``session_date`` (a date is
short; a megabyte of words in it would not fit a ``tsvector`` either)."""

_TEXT_GROWTH = 14
"""At most this many bytes of parsed text per character of a tag: the server writes a Chinese or Japanese
character as itself and its pairs (``" 東 京 東京 "``; 14 bytes a character of four), a symbol as
``" sym1f355 "``, a number that is no digit as ``num2460x``."""


def _indexed_tags_text(tags: Sequence[str]) -> str:
    """The ``tags_text`` column of ``tags``: what the search vector indexes (see :data:`INDEXED_TAG_BYTES`).

    Tags that fit are joined as they are (a few short tags cost a ``join``); the first that would go over
    the budget and those after it are left out (never cut inside a tag).
    """
    text = " ".join(tags)
    if len(text) * _TEXT_GROWTH <= INDEXED_TAG_BYTES:
        return text
    used = 0
    kept: list[str] = []
    for tag in tags:
        parsed = tag if tag.isascii() else spell_numbers(segment_text(tag))
        used += len(parsed.encode("utf-8", "surrogatepass")) + 1
        if used > INDEXED_TAG_BYTES:
            break
        kept.append(tag)
    return " ".join(kept)


def _indexed_date(memory: Memory) -> str | None:
    """The ``session_date`` column of ``memory`` (see :data:`INDEXED_DATE_CHARS`)."""
    date = memory.session_date
    return date if date is None or len(date) <= INDEXED_DATE_CHARS else date[:INDEXED_DATE_CHARS]


def _scope_sql(scope: UserScope) -> tuple[str, list[Any]]:
    if scope is ALL_USERS:
        return "", []
    return "WHERE owner = %s", [owner_of(scope)]


def _row(memory: Memory) -> tuple[Any, ...]:
    from psycopg.types.json import Json

    return (
        memory.id,
        memory.tier.value,
        owner_of(memory.user_id),
        memory.user_id,
        memory.content,
        memory.importance,
        list(memory.tags),
        _indexed_tags_text(memory.tags),
        memory.created_at,
        memory.last_accessed,
        memory.access_count,
        Json(memory.metadata),
        memory.source,
        memory.superseded_by,
        list(memory.merged_from),
        memory.context,
        memory.session_id,
        memory.turn_index,  # None unless it fits the bigint column
        _indexed_date(memory),
    )


def _vector_of(text: str) -> numpy.ndarray:
    """A vector from pgvector's text form (``[0.1,-0,...]``); all floats, so ``-0`` keeps its sign."""
    import numpy as np

    return np.asarray(json.loads(text, parse_int=float), dtype=np.float32)


def _vector_of_binary(data: bytes) -> numpy.ndarray:
    """A vector from pgvector's binary form (``vector_send``: two int16, then big-endian float32)."""
    import numpy as np

    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


async def _converted(
    cursor: psycopg.AsyncCursor[Any], convert: Callable[[Sequence[Any]], _T], size_column: int = _SIZE_COLUMN
) -> list[_T]:
    """The rows of ``cursor``'s result, each converted by ``convert``, a chunk per loop step.

    Column ``size_column`` of a row is the size it takes to convert (by default, the rows start with
    :func:`_columns`, whose last is that size): a chunk is the rows up to :data:`_STEP_BYTES` (a larger
    row alone) or :data:`_STEP_ROWS`, and the loop gets a turn before the next one. The sizes are read
    from the raw result (a few bytes each), before converting.
    """
    if cursor.pgresult is None:  # in a pipeline, the result arrives when a fetch (a scroll) syncs it
        await cursor.scroll(0)
    result = cursor.pgresult
    count = 0 if result is None else result.ntuples
    if result is None or count == 0:
        return []
    converted: list[_T] = []
    position = 0
    while True:
        end, size = position, 0
        while end < count and end - position < _STEP_ROWS and size < _STEP_BYTES:
            size += int(result.get_value(end, size_column) or 0)
            end += 1
        converted += [convert(row) for row in await cursor.fetchmany(end - position)]
        position = end
        if position >= count:
            return converted
        await asyncio.sleep(0)


def _original(row: Sequence[Any]) -> Memory:
    """An original of a merge as read again under its lock (:meth:`PostgresBackend.merge`)."""
    return Memory(
        id=row[0],
        content=row[1],
        importance=float(row[2]),
        tags=list(row[3]),
        superseded_by=row[4],
        metadata=dict(row[5]),
    )


def _scored_memory(row: Sequence[Any]) -> tuple[Memory, float]:
    """A search result's memory and its score (the row's last column)."""
    return _memory(row), float(row[-1])


def _memory(row: Sequence[Any]) -> Memory:
    return Memory(
        id=row[0],
        tier=MemoryTier(row[1]),
        user_id=row[2],
        content=row[3],
        importance=float(row[4]),
        tags=list(row[5]),
        created_at=float(row[6]),
        last_accessed=float(row[7]),
        access_count=int(row[8]),
        metadata=dict(row[9]),
        source=row[10],
        superseded_by=row[11],
        merged_from=list(row[12]),
        context=row[13],
    )


class _BinaryVector:
    """A vector sent to the server in pgvector's binary form (a ``%b::vector`` parameter)."""

    __slots__ = ("values",)

    def __init__(self, values: numpy.ndarray) -> None:
        self.values = values


@functools.cache
def _binary_vector_dumper() -> type:
    """The psycopg dumper of :class:`_BinaryVector` (made on first use: psycopg is an optional extra).

    pgvector's binary input: the dimension and a reserved 0 (two big-endian int16), then the float32
    values, big-endian. Sent with no type (oid 0): the ``::vector`` cast names it, whatever the schema
    the extension is in.
    """
    import struct

    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class BinaryVectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            values: numpy.ndarray = obj.values
            data: bytes = values.astype(">f4", copy=False).tobytes()
            return struct.pack(">HH", int(values.shape[0]), 0) + data

    return BinaryVectorDumper


def _vector_text(vector: numpy.ndarray) -> str:
    return "[" + ",".join(repr(float(value)) for value in vector.tolist()) + "]"


def _written_forms(token: str) -> tuple[str, ...]:
    """The forms a query word may have in stored text: as given, with a final sigma as "σ".

    The query word is folded as the index folds text (``normalize_text``, ``fold_accents``: migration
    ``0011``); the server lower-cases "ΣΟΦΟΣ" to "σοφοσ", where Python (so the query) writes "σοφος".
    """
    if "ς" in token:  # a final sigma: the server lower-cases "Σ" to "σ" wherever it stands
        return (token, token.replace("ς", "σ"))
    return (token,)
