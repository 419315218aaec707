"""The service's durable state in one SQLite file: pending contexts, event journal, snapshots, docs.

One `StateStore` holds one connection guarded by a lock, so it is safe to share between threads
(async callers wrap the calls in `asyncio.to_thread`). Several processes (Ray replicas) may open
the same file: WAL mode lets readers run beside a writer, and `busy_timeout` makes writers wait
for each other instead of failing. Every write is one `BEGIN IMMEDIATE` transaction, committed
with `synchronous=FULL`, so a method that returned has its write on disk. Times are passed in
by the caller (unix seconds); the store never reads the clock. A file of an older schema
version is migrated in place when it is opened (`_MIGRATIONS`, one transaction).

core/state/pg_store.py offers the same calls on PostgreSQL, for clusters of several nodes;
core/state/open_store.py picks the backend from the configured `state_path`.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast, get_args

import numpy as np

SCHEMA_VERSION = 2

EventKind = Literal["charge", "feedback"]
_KINDS: tuple[str, ...] = get_args(EventKind)

_SCHEMA = """
CREATE TABLE schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE pending (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    x BLOB NOT NULL,              -- little-endian float64
    dim INTEGER NOT NULL,
    t INTEGER NOT NULL,
    forced INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    tenant TEXT,                  -- NULL: no tenant
    reserved REAL NOT NULL DEFAULT 0  -- the tenant's hard-cap reservation held (US$)
);
CREATE INDEX pending_t ON pending (t);
CREATE INDEX pending_expires ON pending (expires_at);
-- AUTOINCREMENT: a seq is never reused, even after compaction empties the table, so a
-- snapshot's seq stays a valid cursor into the journal.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'feedback')),
    value REAL NOT NULL,
    t INTEGER NOT NULL,
    at REAL NOT NULL,
    UNIQUE (request_id, kind)
);
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blob BLOB NOT NULL,
    t INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE docs (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,          -- JSON object
    version INTEGER NOT NULL
);
"""


# Each step moves a file from version v to v + 1, inside the transaction that opens it.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE pending ADD COLUMN tenant TEXT",
        "ALTER TABLE pending ADD COLUMN reserved REAL NOT NULL DEFAULT 0",
    ),
}

PENDING_COLUMNS = "request_id, model, x, dim, t, forced, created_at, expires_at, tenant, reserved"


class StoreError(RuntimeError):
    """The state store cannot do what was asked; the message names the file or the row."""


class SchemaVersionError(StoreError):
    pass


class DuplicateRequestError(StoreError, ValueError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"pending context for request_id {request_id!r} already exists")
        self.request_id = request_id


class StaleVersionError(StoreError, ValueError):
    def __init__(self, key: str, version: int, stored: int) -> None:
        super().__init__(
            f"doc {key!r}: version {version} is not newer than the stored version {stored}"
        )
        self.key, self.version, self.stored = key, version, stored


@dataclass(frozen=True, eq=False)
class PendingRow:
    """A routing decision awaiting feedback: the context the bandit update needs later.
    `tenant` is the tenant the request was paced for (None: none), `reserved_usd` the part of
    that tenant's hard cap the decision holds until its charge (0: nothing held)."""

    request_id: str
    model: str
    x: np.ndarray
    t: int
    forced: bool
    created_at: float
    expires_at: float
    tenant: str | None = None
    reserved_usd: float = 0.0

    def __post_init__(self) -> None:
        # Own a read-only copy, so the frozen row cannot change under the caller or the store.
        x = np.array(self.x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"PendingRow.x must be a 1-D vector, got shape {x.shape}")
        x.setflags(write=False)
        object.__setattr__(self, "x", x)
        reserved = float(self.reserved_usd)
        if not (math.isfinite(reserved) and reserved >= 0):  # SQLite would store NaN as NULL
            raise ValueError(f"PendingRow.reserved_usd must be finite and >= 0, got {reserved!r}")
        object.__setattr__(self, "reserved_usd", reserved)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PendingRow):
            return NotImplemented
        return self._scalars() == other._scalars() and np.array_equal(self.x, other.x)

    def _scalars(self) -> tuple[object, ...]:
        return (self.request_id, self.model, self.t, self.forced, self.created_at,
                self.expires_at, self.tenant, self.reserved_usd)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]  # holds an array


@dataclass(frozen=True)
class Event:
    """One journal entry; `seq` is None until the store assigns it."""

    seq: int | None
    request_id: str
    kind: EventKind
    value: float
    t: int
    at: float

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Event.kind must be one of {_KINDS}, got {self.kind!r}")
        if not math.isfinite(self.value):  # SQLite would store NaN as NULL
            raise ValueError(f"Event.value must be finite, got {self.value!r}")


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    blob: bytes
    t: int
    seq: int
    at: float


class StateStore:
    def __init__(self, path: Path | str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per method.
        conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
                raise StoreError(f"{self.path}: cannot enable WAL mode (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every commit
            self._conn: sqlite3.Connection | None = conn
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open state store {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a busy file waits
        in busy_timeout instead of failing on a read-to-write upgrade."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also when COMMIT itself failed
                    conn.execute("ROLLBACK")
                raise

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._db().execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db().execute(sql, params).fetchall()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent state of the file."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        # Under the write lock, so processes opening a new file together create it once.
        with self._write() as conn:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "schema_version" not in tables:
                if tables - {"sqlite_sequence"}:
                    raise SchemaVersionError(
                        f"{self.path} has tables but no schema_version: not a paretoserve store"
                    )
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_version (id, version) VALUES (1, ?)", (SCHEMA_VERSION,)
                )
                return
            row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
            found = None if row is None else int(row[0])
            while found is not None and found < SCHEMA_VERSION and found in _MIGRATIONS:
                for stmt in _MIGRATIONS[found]:  # in the open transaction: all steps or none
                    conn.execute(stmt)
                found += 1
                conn.execute("UPDATE schema_version SET version = ? WHERE id = 1", (found,))
            if found != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has schema version {found}, this code expects {SCHEMA_VERSION};"
                    " migrate the file or point the service at a new one"
                )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # the last connection to close checkpoints the WAL
                self._conn = None

    def __enter__(self) -> StateStore:
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
            (r.request_id, r.model, r.x.astype("<f8").tobytes(), r.x.size, r.t, int(r.forced))
            + (r.created_at, r.expires_at, r.tenant, r.reserved_usd)
            for r in rows
        ]
        marks = ", ".join("?" * len(PENDING_COLUMNS.split(",")))
        sql = f"INSERT INTO pending ({PENDING_COLUMNS}) VALUES ({marks})"
        try:
            with self._write() as conn:
                conn.executemany(sql, params)
        except sqlite3.IntegrityError as exc:  # the batch was rolled back: nothing half-applied
            raise DuplicateRequestError(self._first_duplicate(rows)) from exc

    def _first_duplicate(self, rows: Sequence[PendingRow]) -> str:
        seen: set[str] = set()
        for r in rows:
            if r.request_id in seen or self.get_pending(r.request_id) is not None:
                return r.request_id
            seen.add(r.request_id)
        return "?"

    def get_pending(self, request_id: str) -> PendingRow | None:
        sql = f"SELECT {PENDING_COLUMNS} FROM pending WHERE request_id = ?"
        row = self._one(sql, (request_id,))
        return None if row is None else pending_from_row(row)

    def pending_after(self, t: int) -> list[PendingRow]:
        sql = f"SELECT {PENDING_COLUMNS} FROM pending WHERE t > ? ORDER BY t, rowid"
        return [pending_from_row(r) for r in self._all(sql, (t,))]

    def prune_pending(self, now: float) -> int:
        """Delete rows with expires_at <= now; returns how many."""
        with self._write() as conn:
            return conn.execute("DELETE FROM pending WHERE expires_at <= ?", (now,)).rowcount

    def set_pending_model(self, changes: Sequence[tuple[str, str, bool, float]]) -> int:
        """(request_id, model, forced, reserved_usd) per row: a decision re-keyed to another
        model (a provider fallback), with what its tenant's cap now holds for it. Unknown ids
        are ignored; returns how many rows changed. One transaction."""
        with self._write() as conn:
            cur = conn.executemany(
                "UPDATE pending SET model = ?, forced = ?, reserved = ? WHERE request_id = ?",
                [(m, int(f), float(r), rid) for rid, m, f, r in changes],
            )
            return cur.rowcount

    def delete_pending(self, request_ids: Sequence[str]) -> int:
        """Forget decisions (a request that failed for good); returns how many rows went."""
        with self._write() as conn:
            cur = conn.executemany(
                "DELETE FROM pending WHERE request_id = ?", [(r,) for r in request_ids]
            )
            return cur.rowcount

    # -- event journal ------------------------------------------------------------------------

    def append_event(self, ev: Event) -> tuple[int, bool]:
        """(seq, True) when applied; (seq of the original, False) for a repeat (request_id, kind).
        The row is on disk (WAL fsynced) before this returns."""
        return self.append_events([ev])[0]

    def append_events(self, events: Sequence[Event]) -> list[tuple[int, bool]]:
        """`append_event` for each event, in order, in one transaction (one fsync): a repeat
        of an earlier event of the same call is a repeat too."""
        out = []
        with self._write() as conn:
            for ev in events:
                # Look first: the write lock is held, so nobody can insert in between, and an
                # INSERT .. ON CONFLICT DO NOTHING would burn an AUTOINCREMENT seq on a repeat.
                sql = "SELECT seq FROM events WHERE request_id = ? AND kind = ?"
                row = conn.execute(sql, (ev.request_id, ev.kind)).fetchone()
                if row is not None:
                    out.append((int(row[0]), False))
                    continue
                cur = conn.execute(
                    "INSERT INTO events (request_id, kind, value, t, at) VALUES (?, ?, ?, ?, ?)",
                    (ev.request_id, ev.kind, ev.value, ev.t, ev.at),
                )
                out.append((cast(int, cur.lastrowid), True))
        return out

    def has_event(self, request_id: str, kind: EventKind) -> bool:
        sql = "SELECT 1 FROM events WHERE request_id = ? AND kind = ?"
        return self._one(sql, (request_id, kind)) is not None

    def events_after(self, seq: int) -> list[Event]:
        sql = "SELECT seq, request_id, kind, value, t, at FROM events WHERE seq > ? ORDER BY seq"
        return [Event(*r) for r in self._all(sql, (seq,))]

    def max_seq(self) -> int:
        """The highest seq ever assigned (0 for a new store); compaction does not lower it."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return 0 if row is None else int(row[0])

    def compact_events(self, before_seq: int, older_than: float) -> int:
        """Delete events with seq < before_seq and at < older_than; returns how many."""
        with self._write() as conn:
            sql = "DELETE FROM events WHERE seq < ? AND at < ?"
            return conn.execute(sql, (before_seq, older_than)).rowcount

    def count_events(self, kind: EventKind | None = None) -> int:
        if kind is None:
            return int(self._one("SELECT COUNT(*) FROM events")[0])
        return int(self._one("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,))[0])

    # -- router snapshots ---------------------------------------------------------------------

    def save_snapshot(self, blob: bytes, t: int, seq: int, at: float, keep: int = 3) -> int:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO snapshots (blob, t, seq, at) VALUES (?, ?, ?, ?)", (blob, t, seq, at)
            )
            conn.execute(
                "DELETE FROM snapshots WHERE id NOT IN"
                " (SELECT id FROM snapshots ORDER BY id DESC LIMIT ?)",
                (keep,),
            )
            return cast(int, cur.lastrowid)

    def latest_snapshot(self) -> SnapshotRow | None:
        """The most recently saved snapshot (by insertion order, not by t)."""
        row = self._one("SELECT id, blob, t, seq, at FROM snapshots ORDER BY id DESC LIMIT 1")
        return None if row is None else SnapshotRow(row[0], bytes(row[1]), *row[2:])

    # -- JSON documents -----------------------------------------------------------------------

    def put_doc(self, key: str, value: dict[str, Any], version: int) -> None:
        """Store `value` under `key` if `version` is newer than the stored one (optimistic
        concurrency: a writer that read an older version gets StaleVersionError)."""
        if not isinstance(value, dict):
            raise TypeError(f"doc {key!r} must be a dict, got {type(value).__name__}")
        text = json.dumps(value, allow_nan=False)  # fails here, not on a later read
        with self._write() as conn:
            row = conn.execute("SELECT version FROM docs WHERE key = ?", (key,)).fetchone()
            if row is not None and version <= row[0]:
                raise StaleVersionError(key, version, int(row[0]))
            conn.execute(
                "INSERT INTO docs (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value, version = excluded.version",
                (key, text, version),
            )

    def get_doc(self, key: str) -> tuple[dict[str, Any], int] | None:
        row = self._one("SELECT value, version FROM docs WHERE key = ?", (key,))
        return None if row is None else (json.loads(row[0]), int(row[1]))

    # -- observability ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:

            def count(sql: str) -> int:
                return int(conn.execute(sql).fetchone()[0])

            out: dict[str, Any] = {
                "path": str(self.path),
                "schema_version": SCHEMA_VERSION,
                "pending": count("SELECT COUNT(*) FROM pending"),
                "events": count("SELECT COUNT(*) FROM events"),
                "events_charge": count("SELECT COUNT(*) FROM events WHERE kind = 'charge'"),
                "events_feedback": count("SELECT COUNT(*) FROM events WHERE kind = 'feedback'"),
                "snapshots": count("SELECT COUNT(*) FROM snapshots"),
                "docs": count("SELECT COUNT(*) FROM docs"),
            }
        wal = Path(f"{self.path}-wal")
        out["db_bytes"] = os.path.getsize(self.path)
        out["wal_bytes"] = os.path.getsize(wal) if wal.exists() else 0
        return out


def pending_from_row(row: Sequence[Any]) -> PendingRow:
    """A row of PENDING_COLUMNS (either backend) as a PendingRow."""
    request_id, model, blob, dim, t, forced, created_at, expires_at, tenant, reserved = row
    x = np.frombuffer(bytes(blob), dtype="<f8")
    if x.size != dim:
        raise StoreError(f"pending row {request_id!r}: x has {x.size} values, expected {dim}")
    return PendingRow(request_id, model, x, int(t), bool(forced), float(created_at),
                      float(expires_at), tenant, float(reserved))  # fmt: skip
