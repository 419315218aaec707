"""Durable state of the Router: the stores (SQLite; PostgreSQL), the write-ahead journal,
snapshots."""
