"""The service's durable state on PostgreSQL: the calls and semantics of `StateStore`, shared by
the replicas of every node of a cluster (a `postgresql://` state_path, core/state/open_store.py).

One `PgStateStore` holds one connection (psycopg 3, autocommit) guarded by a lock, so it is safe
to share between threads (async callers wrap the calls in `asyncio.to_thread`). Every write is
one transaction that first takes one transaction-scoped advisory lock of the database: writers
are serialised as SQLite's `BEGIN IMMEDIATE` serialises them, so journal seqs are handed out in
commit order (a reader's `events_after(seq)` cursor never skips a late commit), a refused
duplicate uses no seq, and `put_doc`'s version check cannot race. Seqs and snapshot ids come from
a counter table inside that transaction, like SQLite's AUTOINCREMENT: never reused, never burnt
by a rollback. A commit returned = on the server's disk (synchronous_commit is PostgreSQL's
default). A dropped connection is reopened and the call retried once where that is safe: a
read, and a write whose BEGIN found the connection gone; a write that fails later is not retried
(it may have committed): it raises StoreError, and the next call reconnects.

The database (or the schema the DSN's search_path names) holds only this store's tables.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from core.state.store import (
    PENDING_COLUMNS,
    SCHEMA_VERSION,
    DuplicateRequestError,
    Event,
    EventKind,
    PendingRow,
    SchemaVersionError,
    SnapshotRow,
    StaleVersionError,
    StoreError,
    pending_from_row,
)

# pg_advisory_xact_lock key of the store's writers (advisory locks are per database).
_WRITE_LOCK = int.from_bytes(b"pareto", "big")

_TABLES = ("schema_version", "pending", "events", "snapshots", "docs", "counters")

_SCHEMA = """
CREATE TABLE schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE pending (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    x BYTEA NOT NULL,                 -- little-endian float64
    dim INTEGER NOT NULL,
    t BIGINT NOT NULL,
    forced BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    tenant TEXT,                      -- NULL: no tenant
    reserved DOUBLE PRECISION NOT NULL DEFAULT 0,
    ord BIGINT GENERATED ALWAYS AS IDENTITY  -- insertion order (SQLite's rowid)
);
CREATE INDEX pending_t ON pending (t, ord);
CREATE INDEX pending_expires ON pending (expires_at);
CREATE TABLE events (
    seq BIGINT PRIMARY KEY,           -- from counters: never reused, even after compaction
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'feedback')),
    value DOUBLE PRECISION NOT NULL,
    t BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    UNIQUE (request_id, kind)
);
CREATE TABLE snapshots (
    id BIGINT PRIMARY KEY,            -- from counters
    blob BYTEA NOT NULL,
    t BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE docs (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,              -- JSON object, as written
    version BIGINT NOT NULL
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,            -- 'events', 'snapshots': the highest value handed out
    value BIGINT NOT NULL
)
"""

# Each step moves a database from version v to v + 1. The PostgreSQL store began at version 2.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

_NEXT = (
    "INSERT INTO counters (name, value) VALUES (%s, 1) ON CONFLICT (name)"
    " DO UPDATE SET value = counters.value + 1 RETURNING value"
)


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and stats."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PgStateStore:
    def __init__(
        self, dsn: str, *, busy_timeout_s: float = 10.0, connect_timeout_s: float = 10.0
    ) -> None:
        self.dsn = dsn
        self.where = redact(dsn)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._closed = False
        self._conn = self._connect()
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s))
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open state store {self.where}: {exc}") from exc
        try:
            # A writer waits this long for another's transaction, as SQLite's busy_timeout; a
            # transaction left open by a client that vanished is ended by the server.
            conn.execute(f"SET lock_timeout = {self._busy_ms}")
            conn.execute("SET idle_in_transaction_session_timeout = 60000")
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot open state store {self.where}: {exc}") from exc
        return conn

    def _db(self) -> psycopg.Connection:
        """The connection; one that dropped is replaced (the caller holds the lock)."""
        if self._closed or self._conn is None:
            raise StoreError(f"state store {self.where} is closed")
        if self._conn.closed:
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """One write transaction, serialised with every other writer of the database."""
        with self._lock:
            conn = self._begin()
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if not conn.closed:  # also when COMMIT itself failed
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, psycopg.OperationalError):  # not retried: it may have committed
                    raise StoreError(f"{self.where}: write failed: {exc}") from exc
                raise

    def _begin(self) -> psycopg.Connection:
        """BEGIN and the writers' lock. Nothing of the write has been sent yet, so a connection
        found dropped here is reopened and the BEGIN sent again, once."""
        for attempt in (1, 2):
            conn = self._db()
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                return conn
            except pg_errors.LockNotAvailable as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"{self.where}: another writer held the store: {exc}") from exc
            except psycopg.OperationalError as exc:
                if attempt == 2 or not conn.closed:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                    raise StoreError(f"{self.where}: cannot begin a write: {exc}") from exc
                conn.close()
        raise AssertionError("unreachable")

    def _read(self, sql: str, params: Sequence[Any], *, many: bool) -> Any:
        """One SELECT (one snapshot of the database); a dropped connection is reopened and the
        statement run again, once."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._db()
                try:
                    cur = conn.execute(sql, params)
                    return cur.fetchall() if many else cur.fetchone()
                except psycopg.OperationalError as exc:
                    if attempt == 2 or not conn.closed:  # e.g. a timeout: not a dropped link
                        raise StoreError(f"{self.where}: read failed: {exc}") from exc
                    conn.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._read(sql, params, many=False)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._read(sql, params, many=True)

    def _init_schema(self) -> None:
        # Under the write lock, so processes opening a new database together create it once.
        with self._write() as conn:
            sql = (
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
            tables = {r[0] for r in conn.execute(sql)}
            if "schema_version" not in tables:
                if tables:
                    raise SchemaVersionError(
                        f"{self.where} has tables but no schema_version: not a paretoserve store"
                        " (give it a database or schema of its own)"
                    )
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_version (id, version) VALUES (1, %s)", (SCHEMA_VERSION,)
                )
                return
            row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
            found = None if row is None else int(row[0])
            while found is not None and found < SCHEMA_VERSION and found in _MIGRATIONS:
                for stmt in _MIGRATIONS[found]:
                    conn.execute(stmt)
                found += 1
                conn.execute("UPDATE schema_version SET version = %s WHERE id = 1", (found,))
            if found != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.where} has schema version {found}, this code expects"
                    f" {SCHEMA_VERSION}; migrate the database or point the service at a new one"
                )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PgStateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- pending contexts ---------------------------------------------------------------------

    def add_pending(self, rows: Sequence[PendingRow]) -> None:
        params = [
            (r.request_id, r.model, r.x.astype("<f8").tobytes(), int(r.x.size), int(r.t))
            + (bool(r.forced), float(r.created_at), float(r.expires_at), r.tenant)
            + (float(r.reserved_usd),)
            for r in rows
        ]
        marks = ", ".join(["%s"] * len(PENDING_COLUMNS.split(",")))
        try:
            with self._write() as conn, conn.cursor() as cur:
                cur.executemany(f"INSERT INTO pending ({PENDING_COLUMNS}) VALUES ({marks})", params)
        except pg_errors.UniqueViolation as exc:  # the batch was rolled back
            raise DuplicateRequestError(self._first_duplicate(rows)) from exc

    def _first_duplicate(self, rows: Sequence[PendingRow]) -> str:
        seen: set[str] = set()
        for r in rows:
            if r.request_id in seen or self.get_pending(r.request_id) is not None:
                return r.request_id
            seen.add(r.request_id)
        return "?"

    def get_pending(self, request_id: str) -> PendingRow | None:
        sql = f"SELECT {PENDING_COLUMNS} FROM pending WHERE request_id = %s"
        row = self._one(sql, (request_id,))
        return None if row is None else pending_from_row(row)

    def pending_after(self, t: int) -> list[PendingRow]:
        sql = f"SELECT {PENDING_COLUMNS} FROM pending WHERE t > %s ORDER BY t, ord"
        return [pending_from_row(r) for r in self._all(sql, (int(t),))]

    def prune_pending(self, now: float) -> int:
        """Delete rows with expires_at <= now; returns how many."""
        with self._write() as conn:
            return conn.execute("DELETE FROM pending WHERE expires_at <= %s", (now,)).rowcount

    def set_pending_model(self, changes: Sequence[tuple[str, str, bool, float]]) -> int:
        """(request_id, model, forced, reserved_usd) per row: a decision re-keyed to another
        model (a provider fallback), with what its tenant's cap now holds for it. Unknown ids
        are ignored; returns how many rows changed. One transaction."""
        sql = "UPDATE pending SET model = %s, forced = %s, reserved = %s WHERE request_id = %s"
        with self._write() as conn:
            return sum(
                conn.execute(sql, (m, bool(f), float(r), rid)).rowcount for rid, m, f, r in changes
            )

    def delete_pending(self, request_ids: Sequence[str]) -> int:
        """Forget decisions (a request that failed for good); returns how many rows went."""
        with self._write() as conn:
            sql = "DELETE FROM pending WHERE request_id = ANY(%s)"
            return conn.execute(sql, (list(request_ids),)).rowcount

    # -- event journal ------------------------------------------------------------------------

    def append_event(self, ev: Event) -> tuple[int, bool]:
        """(seq, True) when applied; (seq of the original, False) for a repeat (request_id, kind).
        The row is committed (WAL flushed on the server) before this returns."""
        return self.append_events([ev])[0]

    def append_events(self, events: Sequence[Event]) -> list[tuple[int, bool]]:
        """`append_event` for each event, in order, in one transaction (one commit): a repeat
        of an earlier event of the same call is a repeat too."""
        out = []
        with self._write() as conn:
            for ev in events:
                # Look first: the write lock is held, so nobody can insert in between.
                sql = "SELECT seq FROM events WHERE request_id = %s AND kind = %s"
                row = conn.execute(sql, (ev.request_id, ev.kind)).fetchone()
                if row is not None:
                    out.append((int(row[0]), False))
                    continue
                seq = int(conn.execute(_NEXT, ("events",)).fetchone()[0])
                conn.execute(
                    "INSERT INTO events (seq, request_id, kind, value, t, at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (seq, ev.request_id, ev.kind, float(ev.value), int(ev.t), float(ev.at)),
                )
                out.append((seq, True))
        return out

    def has_event(self, request_id: str, kind: EventKind) -> bool:
        sql = "SELECT 1 FROM events WHERE request_id = %s AND kind = %s"
        return self._one(sql, (request_id, kind)) is not None

    def events_after(self, seq: int) -> list[Event]:
        sql = "SELECT seq, request_id, kind, value, t, at FROM events WHERE seq > %s ORDER BY seq"
        return [
            Event(int(s), rid, kind, float(v), int(t), float(at))
            for s, rid, kind, v, t, at in self._all(sql, (int(seq),))
        ]

    def max_seq(self) -> int:
        """The highest seq ever assigned (0 for a new store); compaction does not lower it."""
        row = self._one("SELECT value FROM counters WHERE name = 'events'")
        return 0 if row is None else int(row[0])

    def compact_events(self, before_seq: int, older_than: float) -> int:
        """Delete events with seq < before_seq and at < older_than; returns how many."""
        with self._write() as conn:
            sql = "DELETE FROM events WHERE seq < %s AND at < %s"
            return conn.execute(sql, (int(before_seq), float(older_than))).rowcount

    def count_events(self, kind: EventKind | None = None) -> int:
        if kind is None:
            return int(self._one("SELECT COUNT(*) FROM events")[0])
        return int(self._one("SELECT COUNT(*) FROM events WHERE kind = %s", (kind,))[0])

    # -- router snapshots ---------------------------------------------------------------------

    def save_snapshot(self, blob: bytes, t: int, seq: int, at: float, keep: int = 3) -> int:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        with self._write() as conn:
            sid = int(conn.execute(_NEXT, ("snapshots",)).fetchone()[0])
            conn.execute(
                "INSERT INTO snapshots (id, blob, t, seq, at) VALUES (%s, %s, %s, %s, %s)",
                (sid, bytes(blob), int(t), int(seq), float(at)),
            )
            conn.execute(
                "DELETE FROM snapshots WHERE id NOT IN"
                " (SELECT id FROM snapshots ORDER BY id DESC LIMIT %s)",
                (int(keep),),
            )
            return sid

    def latest_snapshot(self) -> SnapshotRow | None:
        """The most recently saved snapshot (by insertion order, not by t)."""
        row = self._one("SELECT id, blob, t, seq, at FROM snapshots ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        sid, blob, t, seq, at = row
        return SnapshotRow(int(sid), bytes(blob), int(t), int(seq), float(at))

    # -- JSON documents -----------------------------------------------------------------------

    def put_doc(self, key: str, value: dict[str, Any], version: int) -> None:
        """Store `value` under `key` if `version` is newer than the stored one (optimistic
        concurrency: a writer that read an older version gets StaleVersionError)."""
        if not isinstance(value, dict):
            raise TypeError(f"doc {key!r} must be a dict, got {type(value).__name__}")
        text = json.dumps(value, allow_nan=False)  # fails here, not on a later read
        with self._write() as conn:
            row = conn.execute("SELECT version FROM docs WHERE key = %s", (key,)).fetchone()
            if row is not None and version <= row[0]:
                raise StaleVersionError(key, version, int(row[0]))
            conn.execute(
                "INSERT INTO docs (key, value, version) VALUES (%s, %s, %s) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value, version = excluded.version",
                (key, text, int(version)),
            )

    def get_doc(self, key: str) -> tuple[dict[str, Any], int] | None:
        row = self._one("SELECT value, version FROM docs WHERE key = %s", (key,))
        return None if row is None else (json.loads(row[0]), int(row[1]))

    # -- observability ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        # One statement: every count from one snapshot of the database.
        row = self._one(
            "SELECT (SELECT COUNT(*) FROM pending), (SELECT COUNT(*) FROM events),"
            " (SELECT COUNT(*) FROM events WHERE kind = 'charge'),"
            " (SELECT COUNT(*) FROM events WHERE kind = 'feedback'),"
            " (SELECT COUNT(*) FROM snapshots), (SELECT COUNT(*) FROM docs),"
            " (SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c"
            "  WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
            "  AND c.relname = ANY(%s))",
            (list(_TABLES),),
        )
        pending, events, charge, feedback, snapshots, docs, size = row
        return {
            "path": self.where,
            "schema_version": SCHEMA_VERSION,
            "pending": int(pending),
            "events": int(events),
            "events_charge": int(charge),
            "events_feedback": int(feedback),
            "snapshots": int(snapshots),
            "docs": int(docs),
            "db_bytes": int(size or 0),  # the store's tables, their indexes and TOAST
            "wal_bytes": 0,  # the server's WAL is shared by every database: not ours to count
        }
