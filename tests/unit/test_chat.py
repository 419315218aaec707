"""The chat request path (core.service.chat) without Ray: fallback, cool-down, streams, charges.

The ports are in-memory: the router port runs a real core Router in process (its decisions,
fallback re-keys, cool-downs and charges are the real ones), the provider port plays a script
per model, the embedder returns one fixed context.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from core.method.config import PacerConfig, RouterConfig
from core.method.costs import realised_cost_usd
from core.method.errors import UnknownRequestError
from core.method.faults import CooldownConfig
from core.method.registry import ModelSpec
from core.method.router import FeedbackStatus, RouteLimits, Router
from core.replay.simulator import estimate_tokens
from core.service.chat import ChatService
from core.service.decision import RouteDecision
from core.service.ports import ProviderError
from core.service.protocol import (
    ChatCompletionRequest,
    ProviderChunk,
    ProviderRequest,
    ProviderResponse,
    Usage,
)

A = ModelSpec(id="a", input_per_m=0.1, output_per_m=0.1)
B = ModelSpec(id="b", input_per_m=0.5, output_per_m=1.5)
C = ModelSpec(id="c", input_per_m=1.25, output_per_m=10.0)
SPECS = {m.id: m for m in (A, B, C)}
QUALITY = {"a": 0.2, "b": 0.5, "c": 0.9}  # learned below: auto-routing ranks c > b > a
NOW = 1_000.0
PROMPT = "What is the capital of France?"
USAGE = Usage(prompt_tokens=12, completion_tokens=30)
REQUEST_CONTEXT = contextvars.ContextVar("request_context", default="none")


def _x(seed: int) -> np.ndarray:
    return np.append(np.random.default_rng(seed).normal(size=25), 1.0)


def _core_router() -> Router:
    cfg = RouterConfig(pacer=PacerConfig(budget_usd=1.0), seed=0)
    r = Router(cfg, [A, B, C], cooldowns=CooldownConfig(cooldown_s=30.0))
    for i in range(30):  # learn each model's quality by direct routes
        for m in QUALITY:
            rid = f"train-{i}-{m}"
            r.route(_x(100 + i), model=m, request_id=rid)
            r.charge(rid, 0.0)
            r.feedback(rid, QUALITY[m])
    return r


# ---------------------------------------------------------------- in-memory ports


class LocalRouter:
    """The router port over a real core Router in this process (the Router deployment's calls
    without durability). Records each charge and the request context it ran in; `gate`, when
    set, holds charges until it opens."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.charges: list[tuple[str, float, str]] = []
        self.answered: list[str] = []  # Router.answered_by: "known" = the decision named it
        self.charge_contexts: list[str] = []
        self.charge_started = asyncio.Event()
        self.charged = asyncio.Event()
        self.gate: asyncio.Event | None = None

    def _decision(self, d) -> RouteDecision:
        return RouteDecision.of(d, self.router.registry.specs[d.model])

    async def route(self, x, limits, model, request_id, tenant=None) -> RouteDecision:
        lim = RouteLimits.model_validate(limits) if limits else None
        d = self.router.route(np.asarray(x), lim, model, request_id, NOW, tenant)
        return self._decision(d)

    async def fallback(self, request_id, failed_model, status, retry_after_s, limits):
        lim = RouteLimits.model_validate(limits) if limits else None
        d = self.router.fallback(request_id, failed_model, NOW, status, retry_after_s, lim)
        return None if d is None else self._decision(d)

    async def fail(self, request_id, model, status, retry_after_s, cool):
        return self.router.fail(request_id, model, NOW, status, retry_after_s, cool)

    async def charge(self, request_id, cost_usd, model, x, forced, tenant=None) -> str:
        self.charge_contexts.append(REQUEST_CONTEXT.get())
        self.charge_started.set()
        if self.gate is not None:
            await self.gate.wait()
        x = np.asarray(x)
        self.answered.append(self.router.answered_by(request_id, model, x, forced, tenant))
        status = self.router.charge(request_id, cost_usd, NOW)
        self.charges.append((request_id, cost_usd, model))
        self.charged.set()
        return status.value


class FixedEmbedder:
    async def embed(self, text: str) -> list[float]:
        return _x(0).tolist()


@dataclass
class Outcome:
    """One provider call: `error` before any token (after `chunks_before_error` chunks when
    streamed), else `text` with USAGE."""

    text: str = "Paris is the capital."
    error: ProviderError | None = None
    chunks_before_error: int = 0


@dataclass
class ScriptedProviders:
    """The provider port: each call of a model plays that model's next scripted outcome (the
    default one when its script is used up). Records calls and closed streams."""

    script: dict[str, list[Outcome]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    max_tokens: list[int | None] = field(default_factory=list)  # what each call asked for

    def _next(self, req: ProviderRequest) -> Outcome:
        self.calls.append(req.model_id)
        self.max_tokens.append(req.max_tokens)
        queue = self.script.get(req.model_id, [])
        return queue.pop(0) if queue else Outcome()

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        out = self._next(req)
        if out.error is not None:
            raise out.error
        return ProviderResponse(
            model_id=req.model_id, content=out.text, finish_reason="stop", usage=USAGE, latency_s=0
        )

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        out = self._next(req)
        words = [w + " " for w in out.text.split()]
        completed = False
        try:
            if out.error is not None:
                for w in words[: out.chunks_before_error]:
                    yield ProviderChunk(delta=w)
                raise out.error
            for w in words:
                yield ProviderChunk(delta=w)
            yield ProviderChunk(finish_reason="stop", usage=USAGE)
            completed = True
        finally:
            if not completed:
                self.closed.append(req.model_id)


def _assert_dropped(router: LocalRouter, request_id: str = "r1") -> None:
    """A request that failed for good leaves no decision: its feedback is unknown."""
    with pytest.raises(UnknownRequestError):
        router.router.feedback(request_id, 0.5)


def _stream_error(exc: BaseException) -> dict:
    return {"error": {"message": str(exc), "type": "upstream_error"}}


def _service(script: dict[str, list[Outcome]] | None = None):
    router, providers = LocalRouter(_core_router()), ScriptedProviders(script or {})
    return ChatService(FixedEmbedder(), router, providers, _stream_error), router, providers


def _body(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": PROMPT}], **kw)


def _cost(model: str, usage: Usage) -> float:
    spec = SPECS[model]
    return realised_cost_usd(
        usage.prompt_tokens, usage.completion_tokens, spec.input_per_m, spec.output_per_m
    )


def _events(raw: list[str]) -> list[dict | str]:
    out: list[dict | str] = []
    for e in raw:
        assert e.startswith("data: ") and e.endswith("\n\n")
        data = e[len("data: ") : -2]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def _drain(stream) -> list[dict | str]:
    return _events([e async for e in stream.events()])


def _fail(status: int | None = 503, **kw) -> Outcome:
    retryable = status is None or status == 429 or status >= 500
    return Outcome(error=ProviderError(status, f"upstream {status}", retryable=retryable, **kw))


# ---------------------------------------------------------------- fallback and cool-down


def test_the_first_choice_answers_without_fallback() -> None:
    chat, router, providers = _service()
    answer = asyncio.run(chat.complete("r1", _body()))
    assert providers.calls == ["c"]
    assert answer.response.model == "c" and answer.decision.routed
    assert answer.response.paretoserve.fallback_from is None
    assert router.router.cooldowns.cooling(NOW) == frozenset()


def test_a_provider_failure_falls_back_to_the_next_best_model() -> None:
    chat, router, providers = _service({"c": [_fail(503)]})
    answer = asyncio.run(chat.complete("r1", _body()))
    assert providers.calls == ["c", "b"]
    assert answer.response.model == "b" and answer.decision.model == "b"
    assert answer.response.paretoserve.fallback_from == ["c"]
    assert answer.response.choices[0].message.content == "Paris is the capital."
    # the charge goes to the model that answered, at its prices
    assert router.charges == [("r1", _cost("b", USAGE), "b")]
    assert router.answered == ["known"]  # the Router's decision was re-keyed to b
    assert answer.cost_usd == _cost("b", USAGE)


def test_the_failing_model_cools_down_and_the_next_request_skips_it() -> None:
    chat, router, providers = _service({"c": [_fail(429, retry_after_s=60.0)]})
    asyncio.run(chat.complete("r1", _body()))
    cooldown = router.router.cooldowns.get("c")
    assert cooldown is not None and cooldown.until == NOW + 60.0 and cooldown.status == 429
    assert router.router.cooldowns.cooling(NOW) == {"c"}
    nxt = asyncio.run(chat.complete("r2", _body()))
    assert providers.calls == ["c", "b", "b"]  # r2 is routed past the cooling model at once
    assert nxt.response.model == "b" and nxt.response.paretoserve.fallback_from is None


def test_an_explicit_model_fails_without_fallback_and_cools_down() -> None:
    out = _fail(503)
    chat, router, providers = _service({"a": [out]})
    with pytest.raises(ProviderError) as raised:
        asyncio.run(chat.complete("r1", _body(model="a")))
    assert raised.value is out.error
    assert providers.calls == ["a"]
    assert router.router.cooldowns.cooling(NOW) == {"a"}
    assert router.charges == []
    _assert_dropped(router)


def test_the_callers_bad_input_neither_falls_back_nor_cools_down() -> None:
    out = _fail(400)
    chat, router, providers = _service({"c": [out]})
    with pytest.raises(ProviderError) as raised:
        asyncio.run(chat.complete("r1", _body()))
    assert raised.value is out.error
    assert providers.calls == ["c"]
    assert router.router.cooldowns.cooling(NOW) == frozenset()
    _assert_dropped(router)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_on_every_model_ends_with_the_last_models_error(stream: bool) -> None:
    last = _fail(503, retry_after_s=5.0)
    chat, router, providers = _service({"c": [_fail(502)], "b": [_fail(None)], "a": [last]})
    call = chat.open_stream if stream else chat.complete
    with pytest.raises(ProviderError) as raised:
        asyncio.run(call("r1", _body(stream=stream)))
    # the error of the last model tried, as is: the Ingress maps it (503, Retry-After 5)
    assert raised.value is last.error
    assert providers.calls == ["c", "b", "a"]  # max_fallbacks = 2: every model was tried
    assert router.router.cooldowns.cooling(NOW) == {"a", "b", "c"}
    assert router.charges == []
    _assert_dropped(router)


# ---------------------------------------------------------------- streams


def test_a_stream_falls_back_before_its_first_token() -> None:
    async def run():
        stream = await chat.open_stream("r1", _body(stream=True))
        return stream.decision, await _drain(stream)

    chat, router, providers = _service({"c": [_fail(503)]})
    decision, events = asyncio.run(run())
    assert providers.calls == ["c", "b"] and decision.model == "b"
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["model"] for c in chunks} == {"b"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "Paris is the capital. "
    )
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["paretoserve"]["fallback_from"] == ["c"]
    assert final["paretoserve"]["cost_usd"] == _cost("b", USAGE)
    assert router.router.cooldowns.cooling(NOW) == {"c"}
    assert router.charges == [("r1", _cost("b", USAGE), "b")]


def test_a_failure_after_the_first_token_ends_the_stream_with_an_error_event() -> None:
    error = ProviderError(503, "upstream went away", retryable=True)
    chat, router, providers = _service({"c": [Outcome(error=error, chunks_before_error=2)]})

    async def run():
        stream = await chat.open_stream("r1", _body(stream=True))
        events = await _drain(stream)
        await asyncio.wait_for(router.charged.wait(), 5)
        return events

    events = asyncio.run(run())
    assert providers.calls == ["c"]  # no fallback once text was sent
    assert [e["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "Paris "},
        {"content": "is "},
    ]
    assert events[3:] == [_stream_error(error), "[DONE]"]
    assert router.router.cooldowns.cooling(NOW) == frozenset()
    # charged once, for what was streamed
    streamed = Usage(
        prompt_tokens=estimate_tokens(len(PROMPT)),
        completion_tokens=estimate_tokens(len("Paris is ")),
    )
    assert router.charges == [("r1", _cost("c", streamed), "c")] and router.answered == ["known"]


def test_an_abandoned_stream_stops_upstream_and_is_charged_once_for_what_was_streamed() -> None:
    chat, router, providers = _service()

    async def run():
        stream = await chat.open_stream("r1", _body(stream=True))
        events = stream.events()
        first = [await anext(events), await anext(events)]  # role, then "Paris "
        await events.aclose()  # the client went away
        closed = list(providers.closed)  # at once, not when the garbage collector gets to it
        await asyncio.wait_for(router.charged.wait(), 5)
        await asyncio.sleep(0.01)  # room for a second charge, if one were sent
        return _events(first), closed

    first, closed = asyncio.run(run())
    assert first[1]["choices"][0]["delta"] == {"content": "Paris "}
    assert closed == ["c"]
    streamed = Usage(
        prompt_tokens=estimate_tokens(len(PROMPT)), completion_tokens=estimate_tokens(len("Paris "))
    )
    assert router.charges == [("r1", _cost("c", streamed), "c")] and router.answered == ["known"]


# ---------------------------------------------------------------- charges


def test_a_plain_answer_is_charged_once_with_its_realised_cost() -> None:
    chat, router, _ = _service()
    answer = asyncio.run(chat.complete("r1", _body()))
    assert router.charges == [("r1", _cost("c", USAGE), "c")]
    assert answer.cost_usd == _cost("c", USAGE) == answer.response.paretoserve.cost_usd
    assert router.router.charge("r1", 1.0) == FeedbackStatus.DUPLICATE  # it was charged


def test_a_charge_lands_although_the_request_is_cancelled_and_runs_outside_its_context() -> None:
    chat, router, _ = _service()
    router.gate = asyncio.Event()

    async def run():
        async def request():
            REQUEST_CONTEXT.set("request r1")
            return await chat.complete("r1", _body())

        task = asyncio.create_task(request())
        await asyncio.wait_for(router.charge_started.wait(), 5)
        task.cancel()  # the client hung up while the charge was in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        router.gate.set()
        await asyncio.wait_for(router.charged.wait(), 5)

    asyncio.run(run())
    assert router.charges == [("r1", _cost("c", USAGE), "c")]
    assert router.charge_contexts == ["none"]  # not the request's context


# ---------------------------------------------------------------- judging


class OfferedToJudge:
    """The judge port: records what the chat path hands over."""

    def __init__(self) -> None:
        self.exchanges: list = []

    async def offer(self, exchange) -> None:
        self.exchanges.append(exchange)


def test_answered_auto_routed_requests_go_to_the_judge_plain_and_streamed() -> None:
    from core.service.judge_sampling import JudgeSampler

    judge = OfferedToJudge()
    router, providers = LocalRouter(_core_router()), ScriptedProviders({})
    chat = ChatService(
        FixedEmbedder(), router, providers, _stream_error, judge=(judge, JudgeSampler(1.0))
    )

    async def run() -> None:
        await chat.complete("r1", _body())
        stream = await chat.open_stream("r2", _body(stream=True))
        await _drain(stream)
        await chat.complete("r3", _body(model="a"))  # named by the caller: nothing to judge
        await asyncio.sleep(0)  # the offers run in tasks of their own

    asyncio.run(run())
    assert [(e.request_id, e.answer.strip()) for e in judge.exchanges] == [
        ("r1", "Paris is the capital."),
        ("r2", "Paris is the capital."),
    ]
    assert judge.exchanges[0].request.model_id == "c"  # the model that answered
    assert PROMPT in judge.exchanges[0].request.prompt_text


def test_a_capped_tenants_request_goes_upstream_with_the_output_its_reservation_covers() -> None:
    """The cap's room fits only a shortened answer: the lowered limit is what the provider is
    asked for, on the first model and on the fallback, and the charge lands on the tenant."""
    from core.method.tenants import TenantSpec

    chat, router, providers = _service({"c": [_fail(503)]})
    # $0.003 buys c about 300 output tokens and b about 2,000: both limits get lowered
    router.router.add_tenant(TenantSpec(id="t", budget_usd=3e-3, hard_cap=True), NOW)
    answer = asyncio.run(chat.complete("r1", _body(max_tokens=100_000), tenant="t"))
    assert providers.calls == ["c", "b"]
    assert 200 < providers.max_tokens[0] < 300 and 1500 < providers.max_tokens[1] < 2000
    assert answer.decision.max_tokens == providers.max_tokens[-1]
    report = router.router.tenant_report("t", NOW)
    assert report["spend_usd"] == pytest.approx(answer.cost_usd) and report["in_flight"] == 0
