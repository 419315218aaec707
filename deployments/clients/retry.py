"""Retries of one provider call on the same model, by core.method.faults.RetryPolicy (no Ray).

Each try is a new `attempt` of the request (the simulated provider draws its faults per
attempt). A stream is retried only until its first chunk arrives: after that the caller has
seen text, and a failure ends the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from core.method.faults import RetryPolicy
from core.service.ports import close_stream
from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from deployments.clients import ProviderClient
from deployments.clients.errors import ProviderError

OnRetry = Callable[[ProviderRequest, ProviderError, float], None]


async def _next_attempt(
    policy: RetryPolicy, req: ProviderRequest, exc: ProviderError, on_retry: OnRetry | None
) -> ProviderRequest:
    """The request's next attempt, after the policy's wait; re-raises `exc` if none is left."""
    delay = policy.delay(req.attempt, exc.status, exc.retryable, exc.retry_after_s)
    if delay is None:
        raise exc
    if on_retry is not None:
        on_retry(req, exc, delay)
    if delay > 0:
        await asyncio.sleep(delay)
    return req.model_copy(update={"attempt": req.attempt + 1})


async def complete(
    client: ProviderClient,
    req: ProviderRequest,
    policy: RetryPolicy,
    on_retry: OnRetry | None = None,
) -> ProviderResponse:
    while True:
        try:
            return await client.complete(req)
        except ProviderError as exc:
            req = await _next_attempt(policy, req, exc, on_retry)


async def stream(
    client: ProviderClient,
    req: ProviderRequest,
    policy: RetryPolicy,
    on_retry: OnRetry | None = None,
) -> AsyncIterator[ProviderChunk]:
    while True:
        chunks = client.stream(req).__aiter__()
        try:
            first = await chunks.__anext__()
            break
        except StopAsyncIteration:
            return
        except ProviderError as exc:
            await close_stream(chunks)
            req = await _next_attempt(policy, req, exc, on_retry)
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await close_stream(chunks)
