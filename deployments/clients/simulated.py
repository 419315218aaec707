"""The simulated provider: answers from core.simulator with its latency played out in real time
(scaled by `time_scale`; 0 answers at once). No network, no keys: the embedded default."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

from core.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from core.registry import ModelSpec
from core.simulator import SimPlan, Simulator, SimulatorConfig
from deployments.clients.errors import ProviderError

_TOKEN = re.compile(r"\s*\S+")  # one word with its leading space; pieces join back exactly


class SimulatedClient:
    def __init__(self, config: SimulatorConfig | None = None, tokens_per_chunk: int = 4) -> None:
        self.simulator = Simulator(config)
        self.tokens_per_chunk = max(1, tokens_per_chunk)  # fewer, larger chunks: fewer wakeups
        self._specs: dict[str, ModelSpec] = {}

    def set_models(self, specs: list[ModelSpec]) -> None:
        self._specs = {s.id: s for s in specs}

    def _plan(self, req: ProviderRequest) -> SimPlan:
        spec = self._specs.get(req.model_id)
        if spec is None:
            # The registry pushes the model table before routing to a new model; a miss means
            # the model was removed (or never added here), which retrying will not fix.
            raise ProviderError(404, f"model {req.model_id!r} is not served by this provider")
        return self.simulator.plan(req, spec)

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        plan = self._plan(req)
        if plan.latency_s > 0:
            await asyncio.sleep(plan.latency_s)
        return ProviderResponse(
            model_id=plan.model_id,
            content=plan.content,
            finish_reason=plan.finish_reason,
            usage=plan.usage,
            latency_s=plan.latency_s,
            ttft_s=plan.ttft_s,
            recorded_reward=plan.recorded_reward,
        )

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        plan = self._plan(req)
        start = time.monotonic()
        if plan.ttft_s > 0:
            await asyncio.sleep(plan.ttft_s)
        pieces = _TOKEN.findall(plan.content)
        step = self.tokens_per_chunk
        # The header "[simulated <model>]" is not billed, so pace by billed tokens instead of
        # pieces: the total stream time matches plan.latency_s.
        delay = plan.completion_tokens * plan.per_token_s / max(1, -(-len(pieces) // step))
        for i in range(0, len(pieces), step):
            if i and delay > 0:
                await asyncio.sleep(delay)
            yield ProviderChunk(delta="".join(pieces[i : i + step]))
        if delay > 0:
            await asyncio.sleep(max(0.0, start + plan.latency_s - time.monotonic()))
        yield ProviderChunk(
            finish_reason=plan.finish_reason,
            usage=plan.usage,
            recorded_reward=plan.recorded_reward,
        )
