"""The request path's ports: the Embedder, Router and provider Protocols, and `ProviderError`.

core/service/chat.py runs over them; `ProviderError` is the one failure a provider port raises.
The Ingress adapts Serve handles to them (deployments/ports.py); tests plug in-memory ones. A
provider client (deployments/clients) is itself a provider port for its own provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from core.service.decision import RouteDecision
from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse


class ProviderError(Exception):
    """An upstream failure. `status` is the HTTP status (None: no response, e.g. timeout or
    connection error); `retryable` says whether trying again (maybe elsewhere) may succeed;
    `timeout` marks an upstream that did not answer in time."""

    def __init__(
        self,
        status: int | None,
        message: str,
        retry_after_s: float | None = None,
        retryable: bool = False,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.retryable = retryable
        self.timeout = timeout

    def __reduce__(self):  # keep every field when pickled across Ray processes
        return (
            type(self),
            (self.status, self.message, self.retry_after_s, self.retryable, self.timeout),
        )

    def __repr__(self) -> str:
        return (
            f"ProviderError(status={self.status!r}, message={self.message!r}, "
            f"retry_after_s={self.retry_after_s!r}, retryable={self.retryable!r}, "
            f"timeout={self.timeout!r})"
        )


@runtime_checkable
class ProviderPort(Protocol):
    """Answers a request with the model named by its `spec` (after any retries on that model);
    a failure is a `ProviderError`."""

    async def complete(self, req: ProviderRequest) -> ProviderResponse: ...

    def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        """Text deltas; the last chunk carries finish_reason and usage. Closing the iterator
        (`aclose()`) before its end stops the upstream generation."""
        ...


async def close_stream(chunks: AsyncIterator[ProviderChunk]) -> None:
    """Close a provider stream (an iterator without `aclose` needs no closing)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class EmbedderPort(Protocol):
    async def embed(self, text: str) -> list[float]:
        """The prompt's context vector."""
        ...


class RouterPort(Protocol):
    """The Router's calls on the request path (docs/architecture.md, docs/reliability.md)."""

    async def route(
        self,
        x: list[float],
        limits: dict | None,
        model: str | None,
        request_id: str,
        tenant: str | None = None,
    ) -> RouteDecision:
        """Decide the model for context `x` (an explicit `model` bypasses the bandit), under
        the caller's `limits` (a `paretoserve` routing object), keyed by `request_id`, paced
        for `tenant` (None: the service-wide budget)."""
        ...

    async def fallback(
        self,
        request_id: str,
        failed_model: str,
        status: int | None,
        retry_after_s: float | None,
        limits: dict | None,
    ) -> RouteDecision | None:
        """`failed_model` failed the request: cool it down and re-decide (the pending decision
        moves to the new model). None: no fallback left; the decision is dropped."""
        ...

    async def fail(
        self,
        request_id: str,
        model: str,
        status: int | None,
        retry_after_s: float | None,
        cool: bool,
    ) -> object:
        """The request failed for good on `model`: cool it down (unless not `cool`) and drop
        the decision."""
        ...

    async def charge(
        self,
        request_id: str,
        cost_usd: float,
        model: str,
        x: list[float],
        forced: bool,
        tenant: str | None = None,
    ) -> str:
        """Charge the answered request's realised cost to `model`, the one that answered; with
        the context `x` a Router that lost the decision restores it. Safe to repeat."""
        ...
