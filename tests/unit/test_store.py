"""The state stores on real SQLite files and real PostgreSQL databases (a throwaway server,
tests/pg_server.py): round trips, exactly-once journal, retention, durability, schema versions.
Every test that takes `target` or `store` runs against both backends."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.net import free_port
from core.state.open_store import Store, open_store
from core.state.pg_store import PgStateStore, redact
from core.state.store import (
    SCHEMA_VERSION,
    DuplicateRequestError,
    Event,
    PendingRow,
    SchemaVersionError,
    StaleVersionError,
    StateStore,
    StoreError,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new store lives: a SQLite file path, or the DSN of a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def store(target: str):
    with open_store(target) as s:
        yield s


@pytest.fixture
def pg_target(pg_server) -> str:
    return pg_server.create_database()


def _row(i: int, t: int | None = None, ttl: float = 60.0, dim: int = 4) -> PendingRow:
    x = np.random.default_rng(i).normal(size=dim)
    return PendingRow(f"req-{i}", f"model-{i % 3}", x, i if t is None else t, i % 2 == 0,
                      1000.0 + i, 1000.0 + i + ttl)  # fmt: skip


def _ev(rid: str, kind: str = "feedback", value: float = 0.5, t: int = 1) -> Event:
    return Event(None, rid, kind, value, t, 2000.0 + t)  # type: ignore[arg-type]


# -- pending contexts -------------------------------------------------------------------------


def test_pending_round_trip_keeps_the_vector_bit_for_bit(store: Store) -> None:
    rows = [_row(i) for i in range(5)]
    store.add_pending(rows)
    for r in rows:
        got = store.get_pending(r.request_id)
        assert got == r
        assert got is not None and got.x.dtype == np.float64 and got.x.tobytes() == r.x.tobytes()
        assert not got.x.flags.writeable
    assert store.get_pending("nope") is None


def test_pending_row_owns_a_read_only_copy() -> None:
    x = np.array([1.0, 2.0])
    row = PendingRow("r", "m", x, 1, False, 0.0, 1.0)
    x[0] = 9.0
    assert row.x.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="1-D"):
        PendingRow("r", "m", np.zeros((2, 2)), 1, False, 0.0, 1.0)


def test_pending_tenant_and_reservation_round_trip_and_count_in_equality(store: Store) -> None:
    plain = PendingRow("p", "m", np.ones(3), 1, False, 0.0, 9.0)
    assert (plain.tenant, plain.reserved_usd) == (None, 0.0)  # the defaults: no tenant, no hold
    held = PendingRow("h", "m", np.ones(3), 2, True, 0.0, 9.0, tenant="acme", reserved_usd=0.0125)
    store.add_pending([plain, held])
    assert store.get_pending("p") == plain and store.get_pending("h") == held
    got = store.get_pending("h")
    assert got is not None and (got.tenant, got.reserved_usd) == ("acme", 0.0125)
    assert store.pending_after(0) == [plain, held]
    assert held != PendingRow("h", "m", np.ones(3), 2, True, 0.0, 9.0, "acme", 0.0126)
    assert held != PendingRow("h", "m", np.ones(3), 2, True, 0.0, 9.0, "other", 0.0125)
    assert held != PendingRow("h", "m", np.ones(3), 2, True, 0.0, 9.0, None, 0.0125)
    store.set_pending_model([("h", "m2", False, 0.02)])  # a fallback: the new model's bound
    moved = store.get_pending("h")
    assert moved is not None and (moved.model, moved.tenant, moved.reserved_usd) == (
        "m2", "acme", 0.02,
    )  # fmt: skip
    for bad in (float("nan"), float("inf"), -0.01):
        with pytest.raises(ValueError, match="reserved_usd"):
            PendingRow("r", "m", np.ones(1), 1, False, 0.0, 1.0, "acme", bad)


def test_duplicate_pending_is_an_error_and_the_batch_is_not_half_applied(store: Store) -> None:
    store.add_pending([_row(1)])
    with pytest.raises(DuplicateRequestError, match="'req-1'"):
        store.add_pending([_row(2), _row(1)])
    assert store.get_pending("req-2") is None  # rolled back with its batch
    with pytest.raises(DuplicateRequestError, match="'req-3'"):
        store.add_pending([_row(3), _row(3)])
    assert store.stats()["pending"] == 1


def test_pending_after_is_ordered_by_t(store: Store) -> None:
    ts = [7, 3, 9, 1, 5, 5]
    store.add_pending([_row(i, t=t) for i, t in enumerate(ts)])
    after = store.pending_after(4)
    assert [r.t for r in after] == [5, 5, 7, 9]
    assert [r.request_id for r in after[:2]] == ["req-4", "req-5"]  # ties in insertion order
    assert store.pending_after(9) == []


def test_prune_pending_deletes_expired_rows_only(store: Store) -> None:
    store.add_pending(
        [_row(i, ttl=10.0 * (i + 1)) for i in range(4)]
    )  # expires 1010,1021,1032,1043
    assert store.get_pending("req-0") is not None  # expired rows stay until pruned
    assert store.prune_pending(now=1009.0) == 0
    assert store.prune_pending(now=1021.0) == 2  # expires_at <= now counts as expired
    assert store.get_pending("req-1") is None and store.get_pending("req-2") is not None
    assert store.prune_pending(now=1e9) == 2
    assert store.stats()["pending"] == 0


# -- event journal ----------------------------------------------------------------------------


def test_duplicate_event_returns_the_original_seq(store: Store) -> None:
    assert store.append_event(_ev("a", value=0.9)) == (1, True)
    assert store.append_event(_ev("a", "charge", 0.002)) == (2, True)  # other kind, same id
    assert store.append_event(_ev("b")) == (3, True)
    assert store.append_event(_ev("a", value=0.1)) == (1, False)
    assert store.append_event(_ev("a", "charge", 0.5)) == (2, False)
    assert store.append_event(_ev("c")) == (4, True)  # a refused duplicate uses no seq
    assert store.events_after(0)[0].value == 0.9  # the first value wins
    assert store.has_event("a", "charge") and not store.has_event("b", "charge")
    assert store.count_events() == 4
    assert store.count_events("charge") == 1 and store.count_events("feedback") == 3


def test_events_appended_together_are_one_transaction_with_per_event_dedup(store: Store) -> None:
    """The Router's writer journals a batch at once: each event is fresh or a repeat exactly as
    if appended alone, a repeat inside the batch included, and a failed batch writes none."""
    assert store.append_event(_ev("a", "charge")) == (1, True)
    batch = [_ev("b", "charge"), _ev("a", "charge"), _ev("c", "charge"), _ev("b", "charge")]
    assert store.append_events(batch) == [(2, True), (1, False), (3, True), (2, False)]
    assert store.count_events("charge") == 3
    bad = Event(None, "d", "charge", 1.0, 0, at=None)  # NOT NULL `at`: the insert fails
    with pytest.raises((sqlite3.IntegrityError, TypeError)):  # SQLite's NOT NULL; psycopg's float()
        store.append_events([_ev("e", "charge"), bad])
    assert not store.has_event("e", "charge")  # rolled back with the failing one
    assert store.append_events([]) == []


def test_events_after_is_ordered_and_round_trips(store: Store) -> None:
    rng = np.random.default_rng(0)
    sent = [
        Event(None, f"r{i}", "charge" if i % 3 else "feedback", float(rng.random()), i, 10.0 + i)
        for i in range(20)
    ]
    seqs = [store.append_event(e)[0] for e in sent]
    assert seqs == list(range(1, 21))
    got = store.events_after(12)
    assert [e.seq for e in got] == list(range(13, 21))
    assert [(e.request_id, e.kind, e.value, e.t, e.at) for e in got] == [
        (e.request_id, e.kind, e.value, e.t, e.at) for e in sent[12:]
    ]
    assert store.events_after(20) == []
    assert store.max_seq() == 20


def test_event_validates_kind_and_value() -> None:
    with pytest.raises(ValueError, match="kind"):
        Event(None, "r", "refund", 1.0, 1, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Event(None, "r", "feedback", float("nan"), 1, 0.0)


def test_compaction_needs_both_conditions_and_keeps_seq_monotonic(store: Store) -> None:
    for i in range(10):
        store.append_event(Event(None, f"r{i}", "feedback", 1.0, i, at=100.0 + i))
    # seq < 6 and at < 103: seqs 1..3 (at 100..102) go, 4..5 are too recent.
    assert store.compact_events(before_seq=6, older_than=103.0) == 3
    assert [e.seq for e in store.events_after(0)] == list(range(4, 11))
    assert not store.has_event("r0", "feedback") and store.has_event("r3", "feedback")
    assert store.compact_events(before_seq=100, older_than=1e9) == 7
    assert store.count_events() == 0
    assert store.max_seq() == 10  # a snapshot's seq stays a valid cursor
    assert store.append_event(_ev("new"))[0] == 11


def test_max_seq_is_zero_when_empty(store: Store) -> None:
    assert store.max_seq() == 0 and store.count_events() == 0 and store.events_after(0) == []


# -- snapshots and docs -----------------------------------------------------------------------


def test_snapshot_retention_keeps_the_newest_three(store: Store) -> None:
    assert store.latest_snapshot() is None
    ids = [store.save_snapshot(bytes([i]) * 100, t=10 * i, seq=i, at=50.0 + i) for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    latest = store.latest_snapshot()
    assert latest is not None
    assert (latest.id, latest.blob, latest.t, latest.seq, latest.at) == (
        5,
        b"\x04" * 100,
        40,
        4,
        54.0,
    )
    assert store.stats()["snapshots"] == 3
    store.save_snapshot(b"x", t=0, seq=0, at=0.0, keep=1)
    assert store.stats()["snapshots"] == 1
    with pytest.raises(ValueError, match="keep"):
        store.save_snapshot(b"x", t=0, seq=0, at=0.0, keep=0)


def test_doc_versioning_rejects_stale_versions(store: Store) -> None:
    assert store.get_doc("models") is None
    store.put_doc("models", {"a": {"price": 1.0}}, version=1)
    store.put_doc("models", {"a": {"price": 0.5}, "b": [1, 2]}, version=2)
    assert store.get_doc("models") == ({"a": {"price": 0.5}, "b": [1, 2]}, 2)
    for stale in (2, 1):
        with pytest.raises(StaleVersionError, match="version 2"):
            store.put_doc("models", {"lost": True}, version=stale)
    assert store.get_doc("models") == ({"a": {"price": 0.5}, "b": [1, 2]}, 2)
    store.put_doc("models", {}, version=7)  # gaps are fine: only "newer" is required
    assert store.get_doc("models") == ({}, 7)
    with pytest.raises(ValueError):
        store.put_doc("bad", {"x": float("nan")}, version=1)
    assert store.get_doc("bad") is None


def test_stats(store: Store) -> None:
    store.add_pending([_row(1), _row(2)])
    store.append_event(_ev("a", "charge"))
    store.put_doc("k", {}, 1)
    st = store.stats()
    assert {k: st[k] for k in ("pending", "events", "events_charge", "events_feedback")} == {
        "pending": 2, "events": 1, "events_charge": 1, "events_feedback": 0,
    }  # fmt: skip
    assert st["docs"] == 1 and st["snapshots"] == 0 and st["schema_version"] == SCHEMA_VERSION
    assert st["db_bytes"] > 0
    if isinstance(store, StateStore):
        assert st["wal_bytes"] > 0
    else:  # the server's WAL is shared by all its databases: not counted
        assert st["wal_bytes"] == 0 and st["path"] == store.where


# -- files, connections, threads --------------------------------------------------------------


def test_reopening_after_close_keeps_everything(target: str, tmp_path: Path) -> None:
    if not target.startswith("postgresql://"):
        target = str(tmp_path / "sub" / "state.db")  # the folder is created
    with open_store(target) as s:
        s.add_pending([_row(1)])
        s.append_event(_ev("a"))
        s.save_snapshot(b"snap", t=3, seq=1, at=9.0)
        s.put_doc("models", {"m": 1}, 4)
    with pytest.raises(StoreError, match="closed"):
        s.max_seq()
    with pytest.raises(StoreError, match="closed"):
        s.append_event(_ev("b"))
    s.close()  # idempotent
    with open_store(target) as s:
        assert s.get_pending("req-1") == _row(1)
        assert s.append_event(_ev("a")) == (1, False)
        snap = s.latest_snapshot()
        assert snap is not None and snap.blob == b"snap"
        assert s.get_doc("models") == ({"m": 1}, 4)
        assert s.max_seq() == 1 and s.count_events() == 1


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as s:
        mode = s._one("PRAGMA journal_mode")[0]
        sync = s._one("PRAGMA synchronous")[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_a_second_store_on_the_same_file_sees_committed_writes(target: str) -> None:
    with open_store(target) as a, open_store(target) as b:
        a.append_event(_ev("x"))
        assert b.has_event("x", "feedback")
        assert b.append_event(_ev("x")) == (1, False)  # dedup holds across connections
        b.put_doc("models", {"v": 1}, 1)
        with pytest.raises(StaleVersionError):
            a.put_doc("models", {"v": 0}, 1)
        a.add_pending([_row(5)])
        assert b.get_pending("req-5") == _row(5)


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_writers_apply_each_id_once(target: str, shared: bool) -> None:
    path = target
    rng = np.random.default_rng(42)
    # 4 threads x 500 appends over 600 ids x 2 kinds: many collide within and across threads.
    plans = [[(f"r{rng.integers(600)}", str(rng.choice(["charge", "feedback"])))
              for _ in range(500)] for _ in range(4)]  # fmt: skip
    unique = {key for plan in plans for key in plan}
    shared_store = open_store(path)
    results: list[list[tuple[str, str, int, bool]]] = [[] for _ in plans]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(plans))

    def work(i: int) -> None:
        s = shared_store if shared else open_store(path)
        try:
            barrier.wait()
            for rid, kind in plans[i]:
                results[i].append((rid, kind, *s.append_event(_ev(rid, kind))))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if not shared:
                s.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(plans))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert shared_store.count_events() == len(unique)
    assert sum(applied for res in results for *_, applied in res) == len(unique)
    seq_of: dict[tuple[str, str], int] = {}
    for res in results:
        for rid, kind, seq, _ in res:
            assert seq_of.setdefault((rid, kind), seq) == seq  # every caller saw the same seq
    stored = {(e.request_id, e.kind): e.seq for e in shared_store.events_after(0)}
    assert stored == seq_of
    assert sorted(stored.values()) == list(range(1, len(unique) + 1))  # no seq burnt by repeats
    shared_store.close()


# -- schema -----------------------------------------------------------------------------------


def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        StateStore(path)


_V1_SCHEMA = """
CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE pending (request_id TEXT PRIMARY KEY, model TEXT NOT NULL, x BLOB NOT NULL,
    dim INTEGER NOT NULL, t INTEGER NOT NULL, forced INTEGER NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE INDEX pending_t ON pending (t);
CREATE INDEX pending_expires ON pending (expires_at);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'feedback')), value REAL NOT NULL,
    t INTEGER NOT NULL, at REAL NOT NULL, UNIQUE (request_id, kind));
CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL,
    t INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE docs (key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL);
INSERT INTO schema_version (id, version) VALUES (1, 1);
"""


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A file written by the schema-1 code (pending rows had no tenant and no reservation)."""
    path = tmp_path / "state.db"
    old = _row(1)
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
        conn.execute(
            "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (old.request_id, old.model, old.x.astype("<f8").tobytes(), old.x.size, old.t,
             int(old.forced), old.created_at, old.expires_at),
        )  # fmt: skip
        conn.execute("INSERT INTO events (request_id, kind, value, t, at) VALUES"
                     " ('a', 'charge', 0.25, 1, 5.0), ('b', 'feedback', 1.0, 2, 6.0)")  # fmt: skip
        conn.execute("INSERT INTO docs VALUES ('models', '{\"m\": 1}', 3)")
    conn.close()
    with StateStore(path) as s:
        assert s.stats()["schema_version"] == SCHEMA_VERSION == 2
        assert s.get_pending("req-1") == old  # tenant None, reserved 0
        assert [(e.seq, e.request_id) for e in s.events_after(0)] == [(1, "a"), (2, "b")]
        assert s.append_event(_ev("a", "charge")) == (1, False)
        assert s.append_event(_ev("c")) == (3, True)
        assert s.get_doc("models") == ({"m": 1}, 3)
        new = PendingRow("req-9", "m", np.ones(2), 9, False, 1.0, 2.0, "acme", 0.5)
        s.add_pending([new])
        assert s.pending_after(0) == [old, new]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(pending)")]
    conn.close()
    assert cols[-2:] == ["tenant", "reserved"]
    with StateStore(path) as s:  # opening a migrated file again changes nothing
        assert s.get_pending("req-9") == new and s.get_pending("req-1") == old


def test_a_failed_migration_leaves_the_file_at_version_1(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
        conn.execute("ALTER TABLE pending ADD COLUMN reserved REAL")  # the second step clashes
    conn.close()
    with pytest.raises(StoreError, match="duplicate column"):
        StateStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(pending)")]
    conn.close()
    assert "tenant" not in cols  # the first step was rolled back with the second


def test_pg_schema_version_mismatch_is_a_clear_error(pg_server, pg_target: str) -> None:
    PgStateStore(pg_target).close()
    pg_server.execute(pg_target, "UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        PgStateStore(pg_target)


def test_pg_foreign_databases_and_dead_servers_are_refused(pg_server, pg_target: str) -> None:
    pg_server.execute(pg_target, "CREATE TABLE t (a int)")
    with pytest.raises(SchemaVersionError, match="not a paretoserve store"):
        PgStateStore(pg_target)
    dead = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x"
    with pytest.raises(StoreError, match="cannot open state store") as err:
        PgStateStore(dead, connect_timeout_s=2)
    assert "secret" not in str(err.value) and redact(dead) in str(err.value)


def test_open_store_picks_the_backend_from_the_state_path(pg_target: str, tmp_path: Path) -> None:
    with open_store(pg_target) as s:
        assert isinstance(s, PgStateStore)
    with open_store(pg_target.replace("postgresql://", "postgres://", 1)) as s:
        assert isinstance(s, PgStateStore)
    with open_store(str(tmp_path / "a.db")) as s, open_store(tmp_path / "b.db") as t:
        assert isinstance(s, StateStore) and isinstance(t, StateStore)


def test_pg_many_processes_opening_a_new_database_create_it_once(pg_target: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        try:
            barrier.wait()
            PgStateStore(pg_target).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


# -- PostgreSQL: dropped connections ----------------------------------------------------------


def _drop_connection(pg_server, store: PgStateStore) -> None:
    """End the store's server process from outside, as a server restart or a network cut."""
    pid = store._one("SELECT pg_backend_pid()")[0]
    (ok,) = pg_server.execute(pg_server.dsn(), "SELECT pg_terminate_backend(%s)", (pid,))[0]
    assert ok


def test_pg_reads_and_writes_reconnect_after_a_dropped_connection(
    pg_server, pg_target: str
) -> None:
    with PgStateStore(pg_target) as s:
        s.append_event(_ev("a"))
        s.add_pending([_row(1)])
        _drop_connection(pg_server, s)
        assert s.events_after(0)[0].request_id == "a"  # a read: reconnected and retried
        assert s.get_pending("req-1") == _row(1)
        _drop_connection(pg_server, s)
        assert s.append_event(_ev("b")) == (2, True)  # dropped before BEGIN: reconnected
        _drop_connection(pg_server, s)
        s.put_doc("k", {"v": 1}, 1)
        assert s.get_doc("k") == ({"v": 1}, 1)
        assert s.stats()["events"] == 2


def test_pg_a_write_cut_mid_transaction_is_not_retried_and_not_applied(
    pg_server, pg_target: str
) -> None:
    """The connection dies inside the write (a trigger holds the INSERT for a while): the write
    raises StoreError and is not repeated, since in general it might have committed; the server
    rolled it back; the next call reconnects."""
    with PgStateStore(pg_target) as s:
        pid = s._one("SELECT pg_backend_pid()")[0]
        pg_server.execute(
            pg_target,
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;"
            " CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow()",
        )
        cut: list[bool] = []

        def cut_inside_the_insert() -> None:
            deadline = time.monotonic() + 10
            sql = "SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
            while time.monotonic() < deadline:
                rows = pg_server.execute(pg_server.dsn(), sql, (pid,))
                if rows and "INSERT INTO events" in rows[0][0]:
                    kill = "SELECT pg_terminate_backend(%s)"
                    cut.append(pg_server.execute(pg_server.dsn(), kill, (pid,))[0][0])
                    return
                time.sleep(0.02)

        th = threading.Thread(target=cut_inside_the_insert)
        th.start()
        with pytest.raises(StoreError, match="write failed"):
            s.append_event(_ev("lost"))
        th.join()
        assert cut == [True]
        pg_server.execute(pg_target, "DROP TRIGGER slow ON events")
        assert not s.has_event("lost", "feedback")  # reconnected; the insert was rolled back
        assert s.append_event(_ev("next")) == (1, True)  # and the rollback burnt no seq


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (a)")
    with pytest.raises(SchemaVersionError, match="not a paretoserve store"):
        StateStore(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open state store"):
        StateStore(junk)


# -- durability across a killed process -------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from core.state.open_store import open_store
    from core.state.store import Event

    store = open_store(sys.argv[1])
    for i in range(1_000_000):
        seq, applied = store.append_event(Event(None, f"k{i}", "feedback", 0.25, i, float(i)))
        print(seq, f"k{i}", flush=True)  # acknowledged only after the commit returned
    """
)


def test_every_acknowledged_event_survives_sigkill(target: str) -> None:
    path = target
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[int, str]] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            seq, rid = line.split()
            acked.append((int(seq), rid))
        os.kill(proc.pid, signal.SIGKILL)  # midway: the writer is still appending
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # a complete line is an acknowledgement too
            seq, rid = line.split()
            acked.append((int(seq), rid))

    with open_store(path) as s:
        stored = {e.seq: e.request_id for e in s.events_after(0)}
    assert all(stored.get(seq) == rid for seq, rid in acked)
    assert len(stored) >= len(acked)
