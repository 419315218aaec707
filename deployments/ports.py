"""Serve handles as the ports of core/service/chat.py, each call timed as a hop of the Ingress.

`ServeRouter` calls ride out a Router restart (deployments/router_calls.py): a route whose
decision survived is picked up with `resume`, a charge is repeated (a journalled one answers
"duplicate"). Charges go in batches: one Router call for those that arrive while one runs.
A provider's own failure comes back as the `ProviderError` it is, not Ray's wrapper, so the
request can fall back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ray.serve.handle import DeploymentHandle

from core.encoding.embedding_cache import ContextLRU
from core.service.busy_batcher import BusyBatcher
from core.service.decision import RouteDecision
from core.service.judge_rubric import JudgedExchange
from core.service.ports import ProviderError
from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from deployments.http_errors import cause
from deployments.router_calls import retrying

T = TypeVar("T")
Observe = Callable[[str, float], None]  # (hop, milliseconds)


async def timed(observe: Observe, hop: str, call: Awaitable[T]) -> T:
    """Await `call`, observing its latency under `hop` however it ends."""
    start = time.perf_counter()
    try:
        return await call
    finally:
        observe(hop, (time.perf_counter() - start) * 1000)


class ServeEmbedder:
    """The Embedder's handle, with an LRU of the contexts it returned: a repeated prompt skips
    the hop (the Embedder's own LRU still serves the other Ingress replicas)."""

    def __init__(self, handle: DeploymentHandle, observe: Observe, cache_size: int = 0) -> None:
        self.handle, self.observe = handle, observe
        self.contexts = ContextLRU(cache_size)

    async def embed(self, text: str) -> list[float]:
        contexts = self.contexts
        if contexts.capacity and (hit := contexts.get(text)) is not None:
            self.observe("embed", 0.0)
            return hit.tolist()
        x = await timed(self.observe, "embed", self.handle.embed.remote(text))
        contexts.put(text, x)
        return x


# Charges one Ingress gathers while its previous charge call runs, sent as one Router call.
CHARGE_BATCH = 256


class ServeRouter:
    def __init__(
        self, handle: DeploymentHandle, observe: Observe, on_retry: Callable[[], None]
    ) -> None:
        self.handle, self.observe, self.on_retry = handle, observe, on_retry
        self._charges = BusyBatcher(self._charge_many, CHARGE_BATCH)

    async def route(
        self,
        x: list[float],
        limits: dict | None,
        model: str | None,
        request_id: str,
        tenant: str | None = None,
    ) -> RouteDecision:
        """Route; if the Router died mid-call, pick up the decision if it survived, else route
        again under the same request id."""
        first = True

        async def once() -> RouteDecision:
            nonlocal first
            if not first:
                d = await self.handle.resume.remote(request_id, model is not None)
                if d is not None:
                    return d
            first = False
            return await self.handle.route.remote(x, limits, model, request_id, tenant)

        return await timed(self.observe, "route", retrying(once, self.on_retry))

    async def fallback(
        self,
        request_id: str,
        failed_model: str,
        status: int | None,
        retry_after_s: float | None,
        limits: dict | None,
    ) -> RouteDecision | None:
        call = self.handle.fallback.remote(request_id, failed_model, status, retry_after_s, limits)
        return await timed(self.observe, "fallback", call)

    async def fail(
        self,
        request_id: str,
        model: str,
        status: int | None,
        retry_after_s: float | None,
        cool: bool,
    ) -> dict | None:
        call = self.handle.fail.remote(request_id, model, status, retry_after_s, cool)
        return await timed(self.observe, "fallback", call)

    async def charge(
        self,
        request_id: str,
        cost_usd: float,
        model: str,
        x: list[float],
        forced: bool,
        tenant: str | None = None,
    ) -> str:
        """Charge through the batcher: a lone charge goes at once; those that come while a
        charge call runs go together in the next (one Router call, one journal write)."""
        charge = (request_id, cost_usd, model, x, forced, tenant)
        status = await timed(self.observe, "charge", self._charges.submit(charge))
        if isinstance(status, Exception):
            raise status
        return status

    async def _charge_many(self, charges: list[tuple]) -> list[str | Exception]:
        return await retrying(lambda: self.handle.charge_many.remote(charges), self.on_retry)


class ServeJudge:
    """The Judge deployment as the chat path's judge port."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def offer(self, exchange: JudgedExchange) -> None:
        await self.handle.offer.remote(exchange)


def _raise_provider_error(exc: Exception) -> None:
    """Raise a provider's own failure as the ProviderError it is, not Ray's wrapper of it."""
    original = cause(exc)
    if isinstance(original, ProviderError):
        raise original from None


class ServeProviders:
    """Every provider deployment as one provider port: a request goes to its spec's provider."""

    def __init__(self, handles: dict[str, DeploymentHandle], observe: Observe) -> None:
        self.handles, self.observe = handles, observe

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        call = self.handles[req.spec.provider].complete.remote(req)
        try:
            return await timed(self.observe, "provider", call)
        except Exception as exc:
            _raise_provider_error(exc)
            raise

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        handle = self.handles[req.spec.provider]
        chunks = handle.options(stream=True).stream.remote(req)
        started = completed = False
        try:
            try:
                first = await timed(self.observe, "provider_first_chunk", chunks.__anext__())
                started = True
                yield first
                async for chunk in chunks:
                    yield chunk
            except Exception as exc:
                _raise_provider_error(exc)
                raise
            completed = True
        finally:
            if started and not completed:
                chunks.cancel()  # closed early, or failed: stop the upstream generation
