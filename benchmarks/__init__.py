"""Benchmarks of the service and of its parts, and the helpers they share (common.py)."""
