"""The simulated provider: answers from core.replay.simulator with its latency played out in real
time (scaled by `time_scale`; 0 answers at once). No network, no keys: the embedded default.

Tool calls and JSON answers come from the simulator too (core/replay/simulator.py explains
when); a stream sends a tool call the way OpenAI does: a first delta with the call's id, type
and function name, then pieces of its arguments."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

from core.replay.simulator import SimPlan, Simulator, SimulatorConfig
from core.service.protocol import (
    FunctionCallDelta,
    ProviderChunk,
    ProviderRequest,
    ProviderResponse,
    ToolCallDelta,
)
from deployments.clients.errors import ProviderError

_TOKEN = re.compile(r"\s*\S+")  # one word with its leading space; pieces join back exactly


class SimulatedClient:
    """Stateless about the model table: each request carries its model's spec (prices, speed
    class, simulation knobs), so every replica answers a model added at runtime alike."""

    def __init__(self, config: SimulatorConfig | None = None, tokens_per_chunk: int = 4) -> None:
        self.simulator = Simulator(config)
        self.tokens_per_chunk = max(1, tokens_per_chunk)  # fewer, larger chunks: fewer wakeups

    async def _attempt(self, req: ProviderRequest) -> SimPlan:
        """This attempt's injected fault, played out (raised), else its plan after any spike."""
        fault = self.simulator.fault(req, req.spec)
        if fault.kind == "timeout":
            if fault.wait_s > 0:
                await asyncio.sleep(fault.wait_s)
            raise ProviderError(
                None, "upstream timed out (simulated)", retryable=True, timeout=True
            )
        if fault.kind == "rate_limit":
            raise ProviderError(
                429,
                "rate limited (simulated)",
                retry_after_s=fault.retry_after_s,
                retryable=True,
            )
        if fault.kind == "error":
            raise ProviderError(
                fault.status, f"upstream error {fault.status} (simulated)", retryable=True
            )
        if fault.spike_s > 0:
            await asyncio.sleep(fault.spike_s)
        return self.simulator.plan(req, req.spec)

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        plan = await self._attempt(req)
        if plan.latency_s > 0:
            await asyncio.sleep(plan.latency_s)
        return ProviderResponse(
            model_id=plan.model_id,
            content=plan.content,
            tool_calls=list(plan.tool_calls) or None,
            finish_reason=plan.finish_reason,
            usage=plan.usage,
            latency_s=plan.latency_s,
            ttft_s=plan.ttft_s,
            recorded_reward=plan.recorded_reward,
        )

    def _chunks(self, plan: SimPlan) -> list[ProviderChunk]:
        """The answer's streamed pieces: words of a text answer (`tokens_per_chunk` words a
        chunk), slices of a JSON answer or of tool-call arguments (4 characters a token)."""
        width = 4 * self.tokens_per_chunk
        if plan.kind == "text":
            words, step = _TOKEN.findall(plan.content), self.tokens_per_chunk
            pieces = ["".join(words[i : i + step]) for i in range(0, len(words), step)]
            return [ProviderChunk(delta=piece) for piece in pieces]
        if plan.kind == "json":
            text = plan.content
            return [ProviderChunk(delta=text[i : i + width]) for i in range(0, len(text), width)]
        chunks = []
        for index, call in enumerate(plan.tool_calls):
            head = FunctionCallDelta(name=call.function.name, arguments="")
            chunks.append(
                ProviderChunk(
                    tool_calls=[
                        ToolCallDelta(index=index, id=call.id, type="function", function=head)
                    ]
                )
            )
            args = call.function.arguments
            for i in range(0, len(args), width):
                piece = FunctionCallDelta(arguments=args[i : i + width])
                chunks.append(
                    ProviderChunk(tool_calls=[ToolCallDelta(index=index, function=piece)])
                )
        return chunks

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        plan = await self._attempt(req)
        start = time.monotonic()
        if plan.ttft_s > 0:
            await asyncio.sleep(plan.ttft_s)
        chunks = self._chunks(plan)
        # The header "[simulated <model>]" is not billed, so pace by billed tokens instead of
        # pieces: the total stream time matches plan.latency_s.
        delay = plan.completion_tokens * plan.per_token_s / max(1, len(chunks))
        for i, chunk in enumerate(chunks):
            if i and delay > 0:
                await asyncio.sleep(delay)
            yield chunk
        if delay > 0:
            await asyncio.sleep(max(0.0, start + plan.latency_s - time.monotonic()))
        yield ProviderChunk(
            finish_reason=plan.finish_reason,
            usage=plan.usage,
            recorded_reward=plan.recorded_reward,
        )
