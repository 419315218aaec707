"""Provider clients: one per provider, the same async interface, no Ray (the provider
deployment wraps one). Clients keep no model table: each request carries its model's `spec`.
See docs/architecture.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from deployments.clients.errors import ProviderError


@runtime_checkable
class ProviderClient(Protocol):
    async def complete(self, req: ProviderRequest) -> ProviderResponse: ...

    def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        """Text deltas; the last chunk carries finish_reason and usage."""
        ...


__all__ = ["ProviderClient", "ProviderError"]
