"""The state store a configured `state_path` names: a PostgreSQL DSN (`postgresql://...` or
`postgres://...`, for a cluster of several nodes) or a SQLite file path (one machine)."""

from __future__ import annotations

from pathlib import Path

from core.state.pg_store import PgStateStore
from core.state.store import StateStore

DSN_PREFIXES = ("postgresql://", "postgres://")

Store = StateStore | PgStateStore


def is_dsn(state_path: str | Path) -> bool:
    return isinstance(state_path, str) and state_path.startswith(DSN_PREFIXES)


def open_store(state_path: str | Path) -> Store:
    """PgStateStore for a DSN, else StateStore on the file (created with its folder)."""
    if is_dsn(state_path):
        return PgStateStore(str(state_path))
    return StateStore(state_path)
