"""One chat request's steps over the ports: embed -> route -> provider with fallback -> charge.

Plain async code, no Ray: the Ingress adapts Serve handles to the ports (deployments/ports.py)
and keeps HTTP, auth and error mapping; tests plug in-memory ports (tests/unit/test_chat.py).

- One fallback loop serves plain and streamed requests: a provider failure (after its own
  retries) moves an auto-routed request to the Router's next-best model and cools the failed
  one down; an explicit model, the caller's bad input, or no fallback left ends the request
  with the provider's `ProviderError` (the Ingress maps it). A stream falls back only until
  its first chunk; a later failure ends it with an error event.
- Answers carry what the provider returned: text, tool calls (finish reason `tool_calls`;
  streamed as OpenAI's tool-call deltas, which the SDKs assemble) and logprobs.
- Charges run in tasks of their own, outside the request's context: when a client hangs up,
  Serve cancels every call its request made, and a charge must land anyway. An abandoned or
  failed stream is charged for what was streamed. Each answered request is charged once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from core.method.costs import realised_cost_usd
from core.method.faults import can_fall_back
from core.method.registry import ModelSpec
from core.replay.simulator import estimate_tokens
from core.service.capabilities import request_needs
from core.service.decision import RouteDecision
from core.service.ports import (
    EmbedderPort,
    ProviderError,
    ProviderPort,
    RouterPort,
    close_stream,
)
from core.service.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ParetoserveInfo,
    ProviderChunk,
    ProviderRequest,
    Usage,
    completion_id,
)

T = TypeVar("T")
ErrorPayload = Callable[[BaseException], dict[str, Any]]


def cost_usd(spec: ModelSpec, usage: Usage) -> float:
    """Realised cost: usage x the registry's prices of the model that answered."""
    return realised_cost_usd(
        usage.prompt_tokens, usage.completion_tokens, spec.input_per_m, spec.output_per_m
    )


def streamed_text(chunk: ProviderChunk) -> str:
    """What a chunk adds to the answer, for estimates: its text and tool-call pieces."""
    calls = chunk.tool_calls or []
    pieces = [c.function.name or "" for c in calls if c.function is not None]
    pieces += [c.function.arguments or "" for c in calls if c.function is not None]
    return chunk.delta + "".join(pieces)


def usage_so_far(req: ProviderRequest, streamed: list[str]) -> Usage:
    """Estimated usage of a stream that ended early (or whose server reports none)."""
    return Usage(
        prompt_tokens=estimate_tokens(len(req.prompt_text)),
        completion_tokens=estimate_tokens(sum(map(len, streamed))) if streamed else 0,
    )


@dataclass
class _Attempt:
    """A request in flight: its context, limits, current decision and provider request, and
    the models that failed it so far."""

    x: list[float]
    limits: dict | None
    decision: RouteDecision
    req: ProviderRequest
    failed: list[str] = field(default_factory=list)

    def info(self, cost: float, reward: float | None) -> ParetoserveInfo:
        d = self.decision
        return ParetoserveInfo(
            request_id=d.request_id,
            cost_usd=cost,
            routed=d.routed,
            forced=d.forced,
            dual=d.dual,
            recorded_reward=reward,
            fallback_from=list(self.failed) if self.failed else None,
        )


@dataclass(frozen=True)
class Answer:
    """A plain request's answer: the decision of the model that answered, its cost, the body."""

    decision: RouteDecision
    cost_usd: float
    response: ChatCompletionResponse


class ChatService:
    """The chat request path over an embedder, a router and a provider port. `stream_error`
    turns a failure after a stream's first chunk into the error event's JSON payload."""

    def __init__(
        self,
        embedder: EmbedderPort,
        router: RouterPort,
        providers: ProviderPort,
        stream_error: ErrorPayload,
        log: logging.Logger | None = None,
    ) -> None:
        self.embedder, self.router, self.providers = embedder, router, providers
        self.stream_error = stream_error
        self.log = log or logging.getLogger(__name__)
        self._detached: set[asyncio.Task] = set()

    # ---- the steps ------------------------------------------------------------------------

    async def complete(self, request_id: str, body: ChatCompletionRequest) -> Answer:
        """Decide, call the provider (falling back), charge, and build the response."""
        a = await self._decide(request_id, body)
        resp = await self._with_fallback(a, self.providers.complete)
        cost = cost_usd(a.decision.spec, resp.usage)
        await asyncio.shield(self._charge(a, cost))
        out = ChatCompletionResponse.build(resp, a.info(cost, resp.recorded_reward))
        return Answer(a.decision, cost, out)

    async def open_stream(self, request_id: str, body: ChatCompletionRequest) -> ChatStream:
        """Decide and open the provider's stream (falling back) up to its first chunk, so that a
        failure before any token is a plain error; `ChatStream.events()` gives the rest."""
        a = await self._decide(request_id, body)
        first, chunks = await self._with_fallback(a, self._first_chunk)
        return ChatStream(a, body, first, chunks, partial(self._charge, a), self.stream_error)

    async def _decide(self, request_id: str, body: ChatCompletionRequest) -> _Attempt:
        x = await self.embedder.embed(body.prompt_text())
        # The caller's own limits plus what the request needs of a model (capabilities, size).
        limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else {}
        limits |= request_needs(body)
        model = None if body.model == "auto" else body.model
        decision = await self.router.route(x, limits, model, request_id)
        return _Attempt(
            x, limits, decision, ProviderRequest.from_chat(request_id, body, decision.spec)
        )

    async def _first_chunk(
        self, req: ProviderRequest
    ) -> tuple[ProviderChunk, AsyncIterator[ProviderChunk]]:
        chunks = aiter(self.providers.stream(req))
        try:
            return await anext(chunks), chunks
        except BaseException:
            await close_stream(chunks)
            raise

    # ---- fallback -------------------------------------------------------------------------

    async def _with_fallback(
        self, a: _Attempt, call: Callable[[ProviderRequest], Awaitable[T]]
    ) -> T:
        """`call(a.req)`, moving the request to the next model after each provider failure."""
        while True:
            try:
                return await call(a.req)
            except ProviderError as exc:
                await self._fall_back(a, exc)

    async def _fall_back(self, a: _Attempt, exc: ProviderError) -> None:
        """The decided model failed (after its provider's retries). An auto-routed request moves
        to the Router's next-best model (the decision is re-keyed there); an explicit model, the
        caller's own bad input, or no model left ends the request with the provider's error.
        The failed model is appended to `a.failed`."""
        d = a.decision
        fallible = can_fall_back(exc.status, exc.retryable)  # not for the caller's bad input
        if d.routed and fallible:
            nxt = await self.router.fallback(
                d.request_id, d.model, exc.status, exc.retry_after_s, a.limits
            )
            a.failed.append(d.model)
            if nxt is not None:
                self.log.warning(
                    "fallback %s -> %s after %s: %s", d.model, nxt.model, exc.status, exc
                )
                a.decision, a.req = nxt, ProviderRequest.for_model(a.req, nxt.spec)
                return
        else:
            await self.router.fail(d.request_id, d.model, exc.status, exc.retry_after_s, fallible)
        raise exc

    # ---- charging -------------------------------------------------------------------------

    def _charge(self, a: _Attempt, cost: float) -> asyncio.Task:
        """Charge the Router in a task of its own, outside the request's context: when a client
        hangs up, Serve cancels every call its request made, and a charge must land anyway.
        The context goes along so that a restarted Router can restore a lost decision."""
        d, x = a.decision, a.x

        async def charge() -> None:
            try:
                await self.router.charge(d.request_id, cost, d.model, x, d.forced)
            except Exception:
                self.log.exception("charge of %s ($%.6g to %s) failed", d.request_id, cost, d.model)
                raise

        task = asyncio.get_running_loop().create_task(charge(), context=contextvars.Context())
        self._detached.add(task)  # kept referenced until done
        task.add_done_callback(self._detached.discard)
        return task


class ChatStream:
    """A streamed answer whose first chunk has arrived. `events()` yields its SSE events once."""

    def __init__(
        self,
        attempt: _Attempt,
        body: ChatCompletionRequest,
        first: ProviderChunk,
        chunks: AsyncIterator[ProviderChunk],
        charge: Callable[[float], asyncio.Task],
        stream_error: ErrorPayload,
    ) -> None:
        self._a, self._body, self._first, self._chunks = attempt, body, first, chunks
        self._charge, self._stream_error = charge, stream_error

    @property
    def decision(self) -> RouteDecision:
        """The decision of the model that is answering."""
        return self._a.decision

    async def events(self) -> AsyncIterator[str]:
        """The chunks as OpenAI SSE events, then a final chunk with the `paretoserve` object
        (and usage, if asked) and `[DONE]`. A failure ends the stream with an error event; a
        stream that does not complete (failed, or closed by a client that went away) stops the
        upstream and is charged for what was streamed."""
        a, chunks = self._a, self._chunks
        spec, req = a.decision.spec, a.req
        cid, created = completion_id(a.decision.request_id), int(time.time())

        def chunk(
            delta: Delta, finish: str | None = None, logprobs: dict | None = None, **extra: Any
        ) -> str:
            choice = ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)
            return ChatCompletionChunk(
                id=cid, created=created, model=spec.id, choices=[choice], **extra
            ).sse()

        last, streamed, completed = self._first, [], False
        try:
            yield chunk(Delta(role="assistant", content=""))
            current = self._first
            while True:
                if current.delta or current.tool_calls or current.logprobs:
                    streamed.append(streamed_text(current))
                    delta = Delta(content=current.delta or None, tool_calls=current.tool_calls)
                    yield chunk(delta, logprobs=current.logprobs)
                last = current
                current = await anext(chunks)
        except StopAsyncIteration:
            completed = True
        except Exception as exc:  # mid-stream failure: a clear error event, then stop
            yield f"data: {json.dumps(self._stream_error(exc))}\n\n"
            yield SSE_DONE
            return
        finally:
            if not completed:  # failed, or the client went away: the provider still bills
                self._charge(cost_usd(spec, usage_so_far(req, streamed)))
                await close_stream(chunks)  # stop the upstream generation
        usage = last.usage or usage_so_far(req, streamed)  # some servers send no usage
        cost = cost_usd(spec, usage)
        await asyncio.shield(self._charge(cost))
        yield chunk(
            Delta(),
            last.finish_reason or "stop",
            paretoserve=a.info(cost, last.recorded_reward),
            usage=CompletionUsage.of(usage) if self._body.include_usage else None,
        )
        yield SSE_DONE
