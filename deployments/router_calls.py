"""Calls to the Router that ride out its restart.

The Router is one replica; when its process dies, the calls in flight to it fail with an
actor error while Serve starts a new replica (new calls wait for it). Its operations are safe
to repeat: a charge or a feedback already journalled answers "duplicate", and a decision that
survived is picked up with `resume` instead of being made twice (see
deployments/ports.py, `ServeRouter.route`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import ActorUnavailableError, RayActorError

from deployments.http_errors import cause

T = TypeVar("T")

# With the backoff below: ~28 s of waiting. A replica restart takes ~5 s here; the loss of the
# Router's node takes Ray 14-20 s to detect before the replica starts elsewhere
# (docs/reliability.md, multi-node failover).
ATTEMPTS = 11
BACKOFF_S = 0.25


def router_died(exc: BaseException) -> bool:
    return isinstance(cause(exc), RayActorError | ActorUnavailableError)


async def retrying(
    call: Callable[[], Awaitable[T]], on_retry: Callable[[], None] | None = None
) -> T:
    """`call()`, again after a backoff while the failure is the Router's death."""
    for attempt in range(ATTEMPTS):
        try:
            return await call()
        except Exception as exc:
            if attempt == ATTEMPTS - 1 or not router_died(exc):
                raise
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(min(BACKOFF_S * 2**attempt, 4.0))
    raise AssertionError("unreachable")
