"""Durable state of the Router: the SQLite store, the write-ahead journal, snapshots."""
