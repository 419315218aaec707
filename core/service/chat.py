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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from core.method.costs import realised_cost_usd
from core.method.faults import can_fall_back
from core.method.registry import ModelSpec
from core.replay.simulator import estimate_tokens, prompt_tokens_of
from core.service.capabilities import request_needs
from core.service.decision import RouteDecision
from core.service.judge_rubric import JudgedExchange
from core.service.judge_sampling import JudgeOffer, JudgeSampler
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
    ProviderResponse,
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


def capped(req: ProviderRequest, decision: RouteDecision) -> ProviderRequest:
    """The request with the output limit a capped tenant's reservation covers, if any."""
    if decision.max_tokens is None or req.max_tokens == decision.max_tokens:
        return req
    return req.model_copy(update={"max_tokens": decision.max_tokens})


def streamed_text(chunk: ProviderChunk) -> str:
    """What a chunk adds to the answer, for estimates: its text and tool-call pieces."""
    calls = chunk.tool_calls or []
    pieces = [c.function.name or "" for c in calls if c.function is not None]
    pieces += [c.function.arguments or "" for c in calls if c.function is not None]
    return chunk.delta + "".join(pieces)


def answer_text(resp: ProviderResponse) -> str:
    """What a judge reads of an answer: its text, and its tool calls as JSON."""
    calls = [c.model_dump(mode="json") for c in resp.tool_calls or []]
    return "\n".join(p for p in (resp.content, json.dumps(calls) if calls else "") if p)


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
    """A plain request's answer: the decision of the model that answered, its cost, the
    provider's answer with what the router did (`info`), and OpenAI's body of it."""

    decision: RouteDecision
    cost_usd: float
    response: ChatCompletionResponse
    provider: ProviderResponse
    info: ParetoserveInfo


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
        judge: tuple[JudgeOffer, JudgeSampler] | None = None,
    ) -> None:
        self.embedder, self.router, self.providers = embedder, router, providers
        self.stream_error = stream_error
        self.log = log or logging.getLogger(__name__)
        self.judge = judge
        self._detached: set[asyncio.Task] = set()

    # ---- the steps ------------------------------------------------------------------------

    async def complete(
        self, request_id: str, body: ChatCompletionRequest, tenant: str | None = None
    ) -> Answer:
        """Decide, call the provider (falling back), charge, and build the response. A
        `tenant`'s request is paced, capped and charged for that tenant."""
        a = await self._decide(request_id, body, tenant)
        resp = await self._with_fallback(a, self.providers.complete)
        cost = cost_usd(a.decision.spec, resp.usage)
        await asyncio.shield(self._charge(a, cost))
        self._judge_later(a, answer_text(resp))
        info = a.info(cost, resp.recorded_reward)
        return Answer(a.decision, cost, ChatCompletionResponse.build(resp, info), resp, info)

    async def open_stream(
        self, request_id: str, body: ChatCompletionRequest, tenant: str | None = None
    ) -> ChatStream:
        """Decide and open the provider's stream (falling back) up to its first chunk, so that a
        failure before any token is a plain error; `ChatStream.events()` gives the rest."""
        a = await self._decide(request_id, body, tenant)
        first, chunks = await self._with_fallback(a, self._first_chunk)
        return ChatStream(
            a,
            body,
            first,
            chunks,
            partial(self._charge, a),
            self.stream_error,
            partial(self._judge_later, a),
        )

    async def _decide(
        self, request_id: str, body: ChatCompletionRequest, tenant: str | None
    ) -> _Attempt:
        x = await self.embedder.embed(body.prompt_text())
        # The caller's own limits plus what the request needs of a model (capabilities, size).
        limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else {}
        limits |= request_needs(body)
        model = None if body.model == "auto" else body.model
        decision = await self.router.route(x, limits, model, request_id, tenant)
        req = ProviderRequest.from_chat(request_id, body, decision.spec)
        return _Attempt(x, limits, decision, capped(req, decision))

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
                a.decision, a.req = nxt, capped(ProviderRequest.for_model(a.req, nxt.spec), nxt)
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
                await self.router.charge(d.request_id, cost, d.model, x, d.forced, d.tenant)
            except Exception:
                self.log.exception("charge of %s ($%.6g to %s) failed", d.request_id, cost, d.model)
                raise

        return self._detach(charge())

    def _detach(self, work: Awaitable[None]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._detached.add(task)  # kept referenced until done
        task.add_done_callback(self._detached.discard)
        return task

    # ---- judging --------------------------------------------------------------------------

    def _judge_later(self, a: _Attempt, answer: str) -> None:
        """Hand a sampled answered exchange to the Judge, off the response path."""
        if self.judge is None:
            return
        judge, sampler = self.judge
        if not sampler.wants(a.decision):
            return
        exchange = JudgedExchange(
            request=a.req, answer=answer, forced=a.decision.forced, answered_at=time.time()
        )

        async def offer() -> None:
            try:
                await judge.offer(exchange)
            except Exception:  # a lost sample, never a failed request
                self.log.exception("offering %s to the judge failed", a.decision.request_id)

        self._detach(offer())


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended: its finish reason (OpenAI's), the stop sequence that ended it (if
    the upstream said), its usage and what the router did."""

    finish_reason: str
    stop_sequence: str | None
    usage: Usage
    info: ParetoserveInfo


class StreamFormat(Protocol):
    """Writes a stream as SSE events: OpenAI's chunks (`OpenAIStreamFormat`) or Anthropic's
    message events (core/service/anthropic_translate.py). Each call returns the events to send
    for one step; `failure` is the end of a stream that failed after its first chunk."""

    def start(self) -> Iterable[str]: ...

    def piece(self, chunk: ProviderChunk) -> Iterable[str]: ...

    def end(self, end: StreamEnd) -> Iterable[str]: ...

    def failure(self, exc: Exception) -> Iterable[str]: ...


class OpenAIStreamFormat:
    """OpenAI's chat-completion chunks: a role chunk, a chunk per piece, a final chunk with the
    finish reason and the `paretoserve` object (and usage, if asked), then `[DONE]`; a failure
    is an error event (`stream_error`'s payload) and `[DONE]`."""

    def __init__(
        self,
        request_id: str,
        model_id: str,
        include_usage: bool,
        stream_error: ErrorPayload,
    ) -> None:
        self.id, self.model_id, self.created = completion_id(request_id), model_id, int(time.time())
        self.include_usage, self.stream_error = include_usage, stream_error

    def _chunk(
        self, delta: Delta, finish: str | None = None, logprobs: dict | None = None, **extra: Any
    ) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model_id, choices=[choice], **extra
        ).sse()

    def start(self) -> Iterable[str]:
        return [self._chunk(Delta(role="assistant", content=""))]

    def piece(self, chunk: ProviderChunk) -> Iterable[str]:
        delta = Delta(content=chunk.delta or None, tool_calls=chunk.tool_calls)
        return [self._chunk(delta, logprobs=chunk.logprobs)]

    def end(self, end: StreamEnd) -> Iterable[str]:
        usage = CompletionUsage.of(end.usage) if self.include_usage else None
        final = self._chunk(Delta(), end.finish_reason, paretoserve=end.info, usage=usage)
        return [final, SSE_DONE]

    def failure(self, exc: Exception) -> Iterable[str]:
        return [f"data: {json.dumps(self.stream_error(exc))}\n\n", SSE_DONE]


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
        judge_later: Callable[[str], None] = lambda answer: None,
    ) -> None:
        self._a, self._body, self._first, self._chunks = attempt, body, first, chunks
        self._charge, self._stream_error = charge, stream_error
        self._judge_later = judge_later

    @property
    def decision(self) -> RouteDecision:
        """The decision of the model that is answering."""
        return self._a.decision

    @property
    def estimated_prompt_tokens(self) -> int:
        """The prompt's size as the router estimated it (the real count comes at the end)."""
        return prompt_tokens_of(self._a.req)

    async def events(self, fmt: StreamFormat | None = None) -> AsyncIterator[str]:
        """The chunks as SSE events in `fmt` (default: OpenAI's chunks, then a final chunk with
        the `paretoserve` object, and usage if asked, and `[DONE]`). A failure ends the stream
        with `fmt`'s error event; a stream that does not complete (failed, or closed by a
        client that went away) stops the upstream and is charged for what was streamed."""
        a, chunks = self._a, self._chunks
        spec, req = a.decision.spec, a.req
        if fmt is None:
            fmt = OpenAIStreamFormat(
                a.decision.request_id, spec.id, self._body.include_usage, self._stream_error
            )
        last, streamed, completed = self._first, [], False
        try:
            for event in fmt.start():
                yield event
            current = self._first
            while True:
                if current.delta or current.tool_calls or current.logprobs:
                    streamed.append(streamed_text(current))
                    for event in fmt.piece(current):
                        yield event
                last = current
                current = await anext(chunks)
        except StopAsyncIteration:
            completed = True
        except Exception as exc:  # mid-stream failure: a clear error event, then stop
            for event in fmt.failure(exc):
                yield event
            return
        finally:
            if not completed:  # failed, or the client went away: the provider still bills
                self._charge(cost_usd(spec, usage_so_far(req, streamed)))
                await close_stream(chunks)  # stop the upstream generation
        usage = last.usage or usage_so_far(req, streamed)  # some servers send no usage
        cost = cost_usd(spec, usage)
        await asyncio.shield(self._charge(cost))
        self._judge_later("".join(streamed))
        info = a.info(cost, last.recorded_reward)
        end = StreamEnd(last.finish_reason or "stop", last.stop_sequence, usage, info)
        for event in fmt.end(end):
            yield event
