"""A provider client deployment, bound once per provider (simulated, openai, anthropic).

Thin: it builds the client named in ProviderSettings, keeps one per replica (pooled HTTP
connections belong to the replica's event loop), retries a failed call on the same model by
the settings' RetryPolicy (deployments/clients/retry.py), and records latency, retries and
errors. It keeps no model table: each request carries its model's spec, so every replica of an
autoscaled provider serves a model added at runtime.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.metrics import Counter, Histogram

from core.replay.simulator import SimulatorConfig
from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from core.service.settings import ProviderSettings
from deployments.clients import ProviderClient, ProviderError, retry


def make_client(settings: ProviderSettings) -> ProviderClient:
    if settings.kind == "simulated":
        from deployments.clients.simulated import SimulatedClient

        return SimulatedClient(SimulatorConfig.model_validate(settings.options))
    if settings.kind == "openai":
        from deployments.clients.openai_client import OpenAIClient

        return OpenAIClient(**settings.options)
    from deployments.clients.anthropic_client import AnthropicClient

    return AnthropicClient(**settings.options)


_LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


@serve.deployment(name="Provider")  # replica options: graphs/app.py, from the settings tree
class ProviderDeployment:
    def __init__(self, name: str, settings: ProviderSettings | dict) -> None:
        self.name = name
        settings = ProviderSettings.model_validate(settings)
        self.client = make_client(settings)
        self.retry = settings.retry
        tags = ("provider", "model")
        self._m_latency = Histogram(
            "paretoserve_provider_latency_ms",
            "provider call latency",
            boundaries=_LATENCY_BUCKETS_MS,
            tag_keys=tags,
        )
        self._m_errors = Counter(
            "paretoserve_provider_errors",
            "provider call failures (after retries)",
            tag_keys=(*tags, "status"),
        )
        self._m_retries = Counter(
            "paretoserve_provider_retries", "provider calls retried", tag_keys=(*tags, "status")
        )

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        start = time.perf_counter()
        try:
            return await retry.complete(self.client, req, self.retry, self._retried)
        except ProviderError as exc:
            self._error(req, exc)
            raise
        finally:
            self._observe(req, start)

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        start = time.perf_counter()
        try:
            async for chunk in retry.stream(self.client, req, self.retry, self._retried):
                yield chunk
        except ProviderError as exc:
            self._error(req, exc)
            raise
        finally:
            self._observe(req, start)

    def _observe(self, req: ProviderRequest, start: float) -> None:
        self._m_latency.observe(
            (time.perf_counter() - start) * 1000,
            tags={"provider": self.name, "model": req.model_id},
        )

    def _retried(self, req: ProviderRequest, exc: ProviderError, delay_s: float) -> None:
        self._m_retries.inc(
            tags={"provider": self.name, "model": req.model_id, "status": str(exc.status)}
        )

    def _error(self, req: ProviderRequest, exc: ProviderError) -> None:
        self._m_errors.inc(
            tags={"provider": self.name, "model": req.model_id, "status": str(exc.status)}
        )
