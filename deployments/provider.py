"""A provider client deployment, bound once per provider (simulated, openai, anthropic).

Thin: it builds the client named in ProviderSettings, keeps one per replica (pooled HTTP
connections belong to the replica's event loop), and records latency and errors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.metrics import Counter, Histogram

from core.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from core.registry import ModelSpec
from core.settings import ProviderSettings
from core.simulator import SimulatorConfig
from deployments.clients import ProviderClient, ProviderError


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


@serve.deployment(
    name="Provider",
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0.1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64},
)
class ProviderDeployment:
    def __init__(
        self, name: str, settings: ProviderSettings | dict, models: list[ModelSpec | dict]
    ) -> None:
        self.name = name
        self.client = make_client(ProviderSettings.model_validate(settings))
        self.client.set_models([ModelSpec.model_validate(m) for m in models])
        tags = ("provider", "model")
        self._m_latency = Histogram(
            "paretoserve_provider_latency_ms",
            "provider call latency",
            boundaries=_LATENCY_BUCKETS_MS,
            tag_keys=tags,
        )
        self._m_errors = Counter(
            "paretoserve_provider_errors", "provider call failures", tag_keys=(*tags, "status")
        )

    async def set_models(self, models: list[ModelSpec | dict]) -> None:
        self.client.set_models([ModelSpec.model_validate(m) for m in models])

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        start = time.perf_counter()
        try:
            return await self.client.complete(req)
        except ProviderError as exc:
            self._error(req, exc)
            raise
        finally:
            self._observe(req, start)

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        start = time.perf_counter()
        try:
            async for chunk in self.client.stream(req):
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

    def _error(self, req: ProviderRequest, exc: ProviderError) -> None:
        self._m_errors.inc(
            tags={"provider": self.name, "model": req.model_id, "status": str(exc.status)}
        )
