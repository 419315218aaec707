"""Frame a Router's own state (Router.to_state) as a versioned, pickle-free snapshot, and back."""

from __future__ import annotations

from core.method.router import Router
from core.persistence import pack, unpack

SNAPSHOT_FORMAT = "paretoserve.router/1"


def snapshot(router: Router) -> bytes:
    """The router's state as one .npz: its arrays plus a JSON metadata record."""
    arrays, meta = router.to_state()
    return pack(arrays, {"format": SNAPSHOT_FORMAT, **meta})


def restore(data: bytes) -> Router:
    """The Router a snapshot() holds; a snapshot of another format is refused."""
    arrays, meta = unpack(data)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(
            f"not a router snapshot of format {SNAPSHOT_FORMAT}: {meta.get('format')!r}"
        )
    return Router.from_state(arrays, meta)
