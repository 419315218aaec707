"""Provider clients: one per provider, the same async interface, no Ray (the provider
deployment wraps one). See docs/architecture.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from core.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from core.registry import ModelSpec
from deployments.clients.errors import ProviderError


@runtime_checkable
class ProviderClient(Protocol):
    async def complete(self, req: ProviderRequest) -> ProviderResponse: ...

    def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        """Text deltas; the last chunk carries finish_reason and usage."""
        ...

    def set_models(self, specs: list[ModelSpec]) -> None: ...


__all__ = ["ProviderClient", "ProviderError"]
