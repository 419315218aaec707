"""Provider clients: one per provider, the same async interface, no Ray (the provider
deployment wraps one). Clients keep no model table: each request carries its model's `spec`.
See docs/architecture.md."""

from __future__ import annotations

from core.service.ports import ProviderPort
from deployments.clients.errors import ProviderError

# A client is a provider port for its own provider: `complete(req)`, `stream(req)`.
ProviderClient = ProviderPort

__all__ = ["ProviderClient", "ProviderError"]
