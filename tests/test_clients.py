"""Provider clients through the real `openai` and `anthropic` SDKs over real HTTP.

The only double is a small local server speaking the providers' wire formats (JSON and SSE,
error bodies, Retry-After), started on a free port in a background thread. The simulated
client needs no server: it runs with time_scale=0.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from thread_server import ThreadServer

from core.method.registry import ModelSpec, SpeedClass
from core.replay.simulator import SimulatorConfig
from core.service.protocol import (
    ChatCompletionRequest,
    ProviderChunk,
    ProviderRequest,
    message_text,
)
from deployments.clients import ProviderClient, ProviderError
from deployments.clients.anthropic_client import AnthropicClient, finish_reason, to_anthropic
from deployments.clients.errors import retry_after_s
from deployments.clients.openai_client import OpenAIClient
from deployments.clients.simulated import SimulatedClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------ the fake provider server


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


FAKE_CALL = {"name": "?", "arguments": '{"city": "Paris", "unit": "c"}'}
FAKE_INPUT = {"city": "Paris", "unit": "c"}  # the fake Anthropic's tool input
FAKE_ANSWER = {"a": 7}  # and its answer tool's (a JSON response format)


def _said(block: dict[str, Any]) -> str:
    """What an Anthropic content block says, for the fake's echo."""
    if block["type"] == "tool_result":
        content = block.get("content", "")
        return content if isinstance(content, str) else "|".join(_said(b) for b in content)
    return block["text"] if block["type"] == "text" else f"<{block['type']}>"


FAKE_LOGPROB = {"token": "echo", "logprob": -0.25, "bytes": [101, 99, 104, 111], "top_logprobs": []}


class BrokenOff(Exception):
    """The fake's stream ends after an error event."""


def build_fake() -> tuple[FastAPI, list[dict[str, Any]]]:
    app = FastAPI()
    seen: list[dict[str, Any]] = []  # every request: path, headers, body

    def failure(model: str, anthropic_shape: bool) -> Response | None:
        kinds = {
            "rate-limited": (429, "rate_limit_error", {"retry-after": "7"}),
            "broken": (500, "api_error", {}),
            "overloaded": (529, "overloaded_error", {}),
            "bad": (400, "invalid_request_error", {}),
        }
        if model not in kinds:
            return None
        status, kind, headers = kinds[model]
        err = {"message": f"fake {kind}", "type": kind, "param": None, "code": None}
        body = {"type": "error", "error": err} if anthropic_shape else {"error": err}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        body = await request.json()
        seen.append({"path": "openai", "headers": dict(request.headers), "body": body})
        model = body["model"]
        if (fail := failure(model, anthropic_shape=False)) is not None:
            return fail
        if model == "slow":
            await asyncio.sleep(1.5)
        text = "echo: " + message_text(body["messages"][-1])
        usage = {
            "prompt_tokens": sum(len(message_text(m)) for m in body["messages"]),
            "completion_tokens": len(_pieces(text)),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "chatcmpl-fake", "created": 1, "model": model}
        # With tools (and a user turn last), OpenAI's shape of a call of the first tool.
        calls_tool = (
            body.get("tools")
            and body.get("tool_choice") != "none"
            and body["messages"][-1]["role"] == "user"
        )
        call = None
        if calls_tool:
            name = body["tools"][0]["function"]["name"]
            call = {"id": "call_fake1", "type": "function", "function": FAKE_CALL | {"name": name}}
        logprobs = {"content": [FAKE_LOGPROB], "refusal": None} if body.get("logprobs") else None
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if call else text, "refusal": None}
            if call:
                message["tool_calls"] = [call]
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )

        def chunk(delta: dict, finish: str | None = None, lp: dict | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return _sse({**base, "object": "chat.completion.chunk", "choices": [choice]})

        def events() -> Iterator[str]:
            if call:  # OpenAI's stream of a tool call: id, type, name; then argument pieces
                head = {**call, "index": 0, "function": {"name": call["function"]["name"]}}
                head["function"]["arguments"] = ""
                yield chunk({"role": "assistant", "content": None, "tool_calls": [head]})
                args = call["function"]["arguments"]
                for i in range(0, len(args), 5):
                    piece = {"index": 0, "function": {"arguments": args[i : i + 5]}}
                    yield chunk({"tool_calls": [piece]})
            else:
                yield chunk({"role": "assistant", "content": ""})
                for piece in _pieces(text):
                    yield chunk({"content": piece}, lp=logprobs)
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage") and model != "no-usage":
                yield _sse(
                    {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/messages")
    async def anthropic_messages(request: Request) -> Response:
        body = await request.json()
        seen.append({"path": "anthropic", "headers": dict(request.headers), "body": body})
        model = body["model"]
        if (fail := failure(model, anthropic_shape=True)) is not None:
            return fail
        last = body["messages"][-1]["content"]
        said = [_said(b) for b in last] if isinstance(last, list) else [last]
        text = "echo: " + "|".join(said)
        pieces = _pieces(text)
        stop = "stop_sequence" if body.get("stop_sequences") else "end_turn"
        if body["max_tokens"] < len(pieces):
            pieces, stop = pieces[: body["max_tokens"]], "max_tokens"
            text = "".join(pieces)
        # With tools (and a user's words last, not only tool results), Anthropic's shape of a
        # call: of the named tool, else the first; under "auto" a few words come first.
        choice = body.get("tool_choice") or {"type": "auto"}
        answers_results = isinstance(last, list) and last[0].get("type") == "tool_result"
        use = None
        if body.get("tools") and choice["type"] != "none" and not answers_results:
            name = choice.get("name") or body["tools"][0]["name"]
            tool_input = FAKE_ANSWER if name.startswith("json_answer") else FAKE_INPUT
            use = {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": tool_input}
        blocks = [{"type": "text", "text": text}]
        if use is not None:
            blocks = [{"type": "text", "text": "Let me check."}] if choice["type"] == "auto" else []
            blocks.append(use)
            pieces, stop = ["Let me check.", json.dumps(use["input"])], "tool_use"
        usage = {"input_tokens": 21, "output_tokens": len(pieces), "cache_read_input_tokens": 4}
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": body["stop_sequences"][0] if stop == "stop_sequence" else None,
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(message)

        def block_events(index: int, block: dict) -> Iterator[str]:
            if block["type"] == "text":
                head = {"type": "text", "text": ""}
                parts = _pieces(block["text"])
                deltas = [{"type": "text_delta", "text": p} for p in parts]
            else:  # a tool call: its input streamed as JSON pieces
                head = block | {"input": {}}
                args = json.dumps(block["input"])
                deltas = [
                    {"type": "input_json_delta", "partial_json": args[i : i + 5]}
                    for i in range(0, len(args), 5)
                ]
            start = {"type": "content_block_start", "index": index, "content_block": head}
            yield _sse(start, "content_block_start")
            for i, delta in enumerate(deltas):
                if model == "stream-error" and i == 2:
                    err = {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    }
                    yield _sse(err, "error")
                    raise BrokenOff
                event = {"type": "content_block_delta", "index": index, "delta": delta}
                yield _sse(event, "content_block_delta")
            yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")

        def events() -> Iterator[str]:
            start = {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }
            yield _sse({"type": "message_start", "message": start}, "message_start")
            yield _sse({"type": "ping"}, "ping")
            try:
                for index, block in enumerate(blocks):
                    yield from block_events(index, block)
            except BrokenOff:
                return
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": len(pieces)},
            }
            yield _sse(end, "message_delta")
            yield _sse({"type": "message_stop"}, "message_stop")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app, seen


class FakeServer(ThreadServer):
    def __init__(self) -> None:
        app, self.seen = build_fake()
        super().__init__(app)

    def last(self, path: str) -> dict[str, Any]:
        return [r for r in self.seen if r["path"] == path][-1]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


# ------------------------------------------------------------------ helpers


def spec(model_id: str, provider: str, base_url: str | None, upstream: str | None = None):
    return ModelSpec(
        id=model_id,
        provider=provider,
        provider_model=upstream,
        input_per_m=1.0,
        output_per_m=2.0,
        base_url=base_url,
    )


def request(model: ModelSpec, messages: list[dict] | None = None, **kw: Any) -> ProviderRequest:
    messages = messages or [{"role": "user", "content": "hello there world"}]
    return ProviderRequest(
        request_id="req-1",
        model_id=model.id,
        upstream_model=model.upstream_name,
        spec=model,
        messages=messages,
        prompt_text=message_text(messages[-1]),
        **kw,
    )


async def collect(stream: AsyncIterator[ProviderChunk]) -> list[ProviderChunk]:
    return [c async for c in stream]


def assert_stream_shape(chunks: list[ProviderChunk], text: str) -> None:
    assert "".join(c.delta for c in chunks) == text
    assert len([c for c in chunks if c.delta]) > 1  # really streamed, not one blob
    *body, last = chunks
    assert last.usage is not None and last.finish_reason is not None
    assert all(c.usage is None and c.finish_reason is None for c in body)


# ------------------------------------------------------------------ OpenAI


@pytest.fixture(params=["aiohttp", "httpx"])  # the SDK's two HTTP transports
async def openai_client(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[OpenAIClient]:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-123")
    client = OpenAIClient(
        api_key_env="TEST_OPENAI_KEY",
        default_base_url=fake.url + "/v1",
        http_transport=request.param,
    )
    yield client
    await client.aclose()  # SDK connections belong to this test's event loop


async def test_openai_complete(openai_client: OpenAIClient, fake: FakeServer) -> None:
    assert isinstance(openai_client, ProviderClient)
    gpt = spec("gpt-x", "openai", None)
    resp = await openai_client.complete(request(gpt, max_tokens=9, temperature=0.2, stop=["\n"]))
    assert resp.model_id == "gpt-x" and resp.content == "echo: hello there world"
    assert resp.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (17, 4)
    assert resp.latency_s > 0
    seen = fake.last("openai")
    assert seen["headers"]["authorization"] == "Bearer sk-test-123"
    assert seen["body"]["max_tokens"] == 9 and seen["body"]["temperature"] == 0.2
    assert seen["body"]["stop"] == ["\n"] and "stream" not in seen["body"]


async def test_openai_upstream_name_and_per_model_base_url(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default base URL answers nothing: the request's spec alone must lead to the server,
    # for a model this client was never told about (clients keep no model table).
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-123")
    client = OpenAIClient(api_key_env="TEST_OPENAI_KEY", default_base_url="http://127.0.0.1:9/v1")
    try:
        routed = spec("routed", "openai", fake.url + "/v1", upstream="vendor/model-7b")
        resp = await client.complete(request(routed))
        assert resp.model_id == "routed"
        assert fake.last("openai")["body"]["model"] == "vendor/model-7b"
        with pytest.raises(ProviderError) as exc:  # no base_url: the default, unreachable
            await client.complete(request(spec("elsewhere", "openai", None)))
        assert (exc.value.status, exc.value.retryable) == (None, True)
    finally:
        await client.aclose()


async def test_openai_stream(openai_client: OpenAIClient, fake: FakeServer) -> None:
    chunks = await collect(openai_client.stream(request(spec("gpt-x", "openai", None))))
    assert_stream_shape(chunks, "echo: hello there world")
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (17, 4)
    assert chunks[-1].finish_reason == "stop"
    body = fake.last("openai")["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_openai_stream_without_usage_is_estimated(openai_client: OpenAIClient) -> None:
    chunks = await collect(openai_client.stream(request(spec("no-usage", "openai", None))))
    last = chunks[-1]
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 6)  # chars / 4


async def test_openai_429_is_retryable_with_retry_after(openai_client: OpenAIClient) -> None:
    with pytest.raises(ProviderError) as exc:
        await openai_client.complete(request(spec("rate-limited", "openai", None)))
    err = exc.value
    assert (err.status, err.retryable, err.retry_after_s) == (429, True, 7.0)
    with pytest.raises(ProviderError) as exc:
        await collect(openai_client.stream(request(spec("rate-limited", "openai", None))))
    assert (exc.value.status, exc.value.retryable) == (429, True)


async def test_openai_500_and_400(openai_client: OpenAIClient) -> None:
    with pytest.raises(ProviderError) as exc:
        await openai_client.complete(request(spec("broken", "openai", None)))
    assert (exc.value.status, exc.value.retryable, exc.value.retry_after_s) == (500, True, None)
    assert "fake api_error" in exc.value.message
    with pytest.raises(ProviderError) as exc:
        await openai_client.complete(request(spec("bad", "openai", None)))
    assert (exc.value.status, exc.value.retryable) == (400, False)


async def test_openai_timeout_and_connection_errors(fake: FakeServer) -> None:
    slow = OpenAIClient(default_base_url=fake.url + "/v1", timeout_s=0.3)
    with pytest.raises(ProviderError) as exc:
        await slow.complete(request(spec("slow", "openai", None)))
    assert (exc.value.status, exc.value.retryable) == (None, True)
    await slow.aclose()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    unreachable = OpenAIClient(default_base_url=dead)
    with pytest.raises(ProviderError) as exc:
        await unreachable.complete(request(spec("m", "openai", None)))
    assert (exc.value.status, exc.value.retryable) == (None, True)
    await unreachable.aclose()


async def test_openai_key_rules(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    # A local server needs no key: a placeholder is sent.
    local = OpenAIClient(api_key_env="NO_SUCH_KEY_VAR", default_base_url=fake.url + "/v1")
    await local.complete(request(spec("gpt-x", "openai", None)))
    assert fake.last("openai")["headers"]["authorization"] == "Bearer no-key"
    # The official endpoint does: a clear error, nothing sent.
    count = len(fake.seen)
    with pytest.raises(ProviderError, match="NO_SUCH_KEY_VAR is not set"):
        await OpenAIClient(api_key_env="NO_SUCH_KEY_VAR").complete(
            request(spec("gpt-x", "openai", None))
        )
    assert len(fake.seen) == count
    await local.aclose()


# ------------------------------------------------------------------ OpenAI: tools and formats

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        "strict": True,
    },
}


def chat_request(model: ModelSpec, body: dict[str, Any]) -> ProviderRequest:
    """The provider request the Ingress makes of an HTTP chat body."""
    return ProviderRequest.from_chat("req-1", ChatCompletionRequest.model_validate(body), model)


async def test_openai_sends_tools_formats_and_passthrough_fields(
    openai_client: OpenAIClient, fake: FakeServer
) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": named,
        "parallel_tool_calls": False,
        "response_format": ANSWER,
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 11,
        "user": "u-1",
        "metadata": {"team": "search"},
        "frequency_penalty": 0.25,
        "service_tier": "flex",
        "verbosity": "low",
        "reasoning_effort": "minimal",
    }
    resp = await openai_client.complete(chat_request(spec("gpt-x", "openai", None), body))
    sent = fake.last("openai")["body"]
    for field in (
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "metadata",
        "frequency_penalty",
        "service_tier",
        "verbosity",
        "reasoning_effort",
    ):
        assert sent[field] == body[field], field
    assert resp.finish_reason == "tool_calls" and resp.content == ""
    assert resp.tool_calls is not None and len(resp.tool_calls) == 1
    call = resp.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_fake1", "function", "get_weather")
    assert call.function.arguments == FAKE_CALL["arguments"]
    assert resp.logprobs == {"content": [FAKE_LOGPROB], "refusal": None}


async def test_openai_sends_the_tool_turn_and_images_verbatim(
    openai_client: OpenAIClient, fake: FakeServer
) -> None:
    call = {"id": "call_1", "type": "function", "function": FAKE_CALL | {"name": "get_weather"}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    body = {"messages": messages, "tools": [WEATHER], "tool_choice": "auto"}
    resp = await openai_client.complete(chat_request(spec("gpt-x", "openai", None), body))
    sent = fake.last("openai")["body"]
    assert sent["messages"] == [
        messages[0],
        {"role": "assistant", "tool_calls": [call]},  # a null content is not sent
        messages[2],
    ]
    assert resp.tool_calls is None and resp.content == "echo: 22 C"  # the tool's turn answered
    assert resp.finish_reason == "stop" and resp.logprobs is None


async def test_openai_streams_tool_call_deltas(
    openai_client: OpenAIClient, fake: FakeServer
) -> None:
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER]}
    chunks = await collect(openai_client.stream(chat_request(spec("gpt-x", "openai", None), body)))
    *pieces, last = chunks
    assert all(c.tool_calls and not c.delta for c in pieces) and len(pieces) > 2
    head = pieces[0].tool_calls[0]
    assert (head.index, head.id, head.type) == (0, "call_fake1", "function")
    assert head.function is not None and head.function.name == "get_weather"
    args = "".join(c.tool_calls[0].function.arguments or "" for c in pieces)
    assert args == FAKE_CALL["arguments"]
    assert last.finish_reason == "tool_calls" and last.usage is not None
    assert fake.last("openai")["body"]["tools"] == [WEATHER]


async def test_openai_streams_logprobs(openai_client: OpenAIClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi there"}], "logprobs": True}
    chunks = await collect(openai_client.stream(chat_request(spec("gpt-x", "openai", None), body)))
    assert "".join(c.delta for c in chunks) == "echo: hi there"
    assert all(c.logprobs == {"content": [FAKE_LOGPROB], "refusal": None} for c in chunks[:-1])


# ------------------------------------------------------------------ Anthropic


@pytest.fixture(params=["aiohttp", "httpx"])
async def anthropic_client(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[AnthropicClient]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    client = AnthropicClient(
        api_key_env="TEST_ANTHROPIC_KEY", default_base_url=fake.url, http_transport=request.param
    )
    yield client
    await client.aclose()


def sent_key(headers: dict[str, str]) -> str:
    """The key the Anthropic SDK sent (older versions: x-api-key; newer: a bearer token)."""
    return headers.get("x-api-key") or headers["authorization"].removeprefix("Bearer ")


def test_message_translation() -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    system, messages = to_anthropic(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "one"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "two"},
                    {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x.org/a.jpg"}},
                ],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "tool", "content": "42"},  # no tool_call_id: its text, as a user turn
            {"role": "user", "content": "three"},
        ]
    )
    assert system == "Be brief.\n\nUse French."
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "image", "source": image},
                {"type": "image", "source": {"type": "url", "url": "https://x.org/a.jpg"}},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "42"}, {"type": "text", "text": "three"}],
        },
    ]
    assert to_anthropic([{"role": "system", "content": "only"}]) == (
        None,
        [{"role": "user", "content": [{"type": "text", "text": "only"}]}],
    )
    with pytest.raises(ProviderError) as exc:
        to_anthropic([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert (exc.value.status, exc.value.retryable) == (400, False)


def test_finish_reasons() -> None:
    assert [finish_reason(r) for r in ("end_turn", "max_tokens", "stop_sequence", "tool_use")] == [
        "stop",
        "length",
        "stop",
        "tool_calls",
    ]
    assert finish_reason(None) is None


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hi"},
    {"role": "user", "content": "say hello back"},
]


async def test_anthropic_complete(anthropic_client: AnthropicClient, fake: FakeServer) -> None:
    claude = spec("claude", "anthropic", None, upstream="claude-x-1")
    resp = await anthropic_client.complete(
        request(claude, CONVERSATION, temperature=1.5, top_p=0.9)
    )
    assert resp.model_id == "claude" and resp.content == "echo: hi|say hello back"
    assert resp.finish_reason == "stop"
    # input 21 + cache read 4; output = the 4 pieces of the echo
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (25, 4)
    seen = fake.last("anthropic")
    assert sent_key(seen["headers"]) == "sk-ant-test"
    body = seen["body"]
    assert body["model"] == "claude-x-1" and body["system"] == "You are terse."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "say hello back"}],
        }
    ]
    assert body["max_tokens"] == 1024  # the default: Anthropic requires one
    assert "temperature" not in body and "top_p" not in body  # dropped by default


async def test_anthropic_sampling_params_on_request(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    client = AnthropicClient(default_base_url=fake.url, send_sampling_params=True)
    claude = spec("claude", "anthropic", None)
    await client.complete(request(claude, temperature=1.5, top_p=0.9))
    body = fake.last("anthropic")["body"]
    assert body["temperature"] == 1.0 and body["top_p"] == 0.9  # OpenAI's 0..2 clamped
    assert sent_key(fake.last("anthropic")["headers"]) == "no-key"  # local: placeholder
    await client.aclose()


async def test_anthropic_length_and_stop_sequence(anthropic_client: AnthropicClient) -> None:
    claude = spec("claude", "anthropic", None)
    short = await anthropic_client.complete(request(claude, max_tokens=2))
    assert (short.finish_reason, short.content, short.usage.completion_tokens) == (
        "length",
        "echo: hello",
        2,
    )
    stopped = await anthropic_client.complete(request(claude, stop="\n\n"))
    assert stopped.finish_reason == "stop"


async def test_anthropic_stream(anthropic_client: AnthropicClient, fake: FakeServer) -> None:
    claude = spec("claude", "anthropic", None)
    chunks = await collect(anthropic_client.stream(request(claude, CONVERSATION)))
    assert_stream_shape(chunks, "echo: hi|say hello back")
    last = chunks[-1]
    assert last.usage is not None and last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (25, 4)
    assert fake.last("anthropic")["body"]["stream"] is True


async def test_anthropic_errors(anthropic_client: AnthropicClient) -> None:
    cases = {
        "rate-limited": (429, True, 7.0),
        "broken": (500, True, None),
        "overloaded": (529, True, None),
        "bad": (400, False, None),
    }
    for model, expected in cases.items():
        with pytest.raises(ProviderError) as exc:
            await anthropic_client.complete(request(spec(model, "anthropic", None)))
        assert (exc.value.status, exc.value.retryable, exc.value.retry_after_s) == expected
    with pytest.raises(ProviderError) as exc:
        await collect(anthropic_client.stream(request(spec("rate-limited", "anthropic", None))))
    assert (exc.value.status, exc.value.retry_after_s) == (429, 7.0)


async def test_anthropic_error_event_mid_stream(anthropic_client: AnthropicClient) -> None:
    got: list[ProviderChunk] = []
    with pytest.raises(ProviderError) as exc:
        async for chunk in anthropic_client.stream(
            request(spec("stream-error", "anthropic", None))
        ):
            got.append(chunk)
    assert "".join(c.delta for c in got) == "echo: hello"
    assert (exc.value.status, exc.value.retryable) == (529, True)


# ------------------------------------------------------------------ Anthropic: tools and formats


async def test_anthropic_sends_tools_images_and_maps_the_tool_call(
    anthropic_client: AnthropicClient, fake: FakeServer
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image]},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "user": "u-1",
        "stop": ["END"],
    }
    claude = spec("claude", "anthropic", None, upstream="claude-x-1")
    resp = await anthropic_client.complete(chat_request(claude, body))
    sent = fake.last("anthropic")["body"]
    fn = WEATHER["function"]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": fn["parameters"],
            "description": fn["description"],
            "strict": True,
        }
    ]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert sent["system"] == "You are terse." and sent["metadata"] == {"user_id": "u-1"}
    assert sent["stop_sequences"] == ["END"]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        }
    ]
    assert resp.finish_reason == "tool_calls" and resp.content == ""  # forced: no words first
    [call] = resp.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("toolu_fake1", "function", "get_weather")
    assert json.loads(call.function.arguments) == FAKE_INPUT


async def test_anthropic_sends_the_tool_turn_and_gets_text(
    anthropic_client: AnthropicClient, fake: FakeServer
) -> None:
    call = {"id": "call.1", "type": "function", "function": FAKE_CALL | {"name": "get_weather"}}
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call, call | {"id": "c2"}]},
        {"role": "tool", "tool_call_id": "call.1", "content": "22 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "[tool error] no such city"},
    ]
    body = {"messages": messages, "tools": [WEATHER], "tool_choice": "auto"}
    resp = await anthropic_client.complete(chat_request(spec("claude", "anthropic", None), body))
    sent = fake.last("anthropic")["body"]
    use = {"type": "tool_use", "name": "get_weather", "input": FAKE_INPUT}
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                use | {"id": "call_1"},  # ids keep to Anthropic's characters
                use | {"id": "c2"},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "22 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": "no such city",
                    "is_error": True,
                },
            ],
        },
    ]
    assert sent["tool_choice"] == {"type": "auto"}
    assert resp.tool_calls is None and resp.finish_reason == "stop"
    assert resp.content == "echo: 22 C|no such city"


async def test_anthropic_streams_text_then_a_tool_call(
    anthropic_client: AnthropicClient, fake: FakeServer
) -> None:
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER]}
    req = chat_request(spec("claude", "anthropic", None), body)
    chunks = await collect(anthropic_client.stream(req))
    *pieces, last = chunks
    assert "".join(c.delta for c in pieces) == "Let me check."
    calls = [c.tool_calls[0] for c in pieces if c.tool_calls]
    head = calls[0]
    assert (head.index, head.id, head.type) == (0, "toolu_fake1", "function")
    assert head.function is not None and head.function.name == "get_weather"
    assert len(calls) > 2  # the arguments arrived in pieces
    args = "".join(c.function.arguments or "" for c in calls if c.function)
    assert json.loads(args) == FAKE_INPUT
    assert last.finish_reason == "tool_calls" and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (25, 2)


@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
async def test_anthropic_json_formats_go_as_a_forced_answer_tool(
    anthropic_client: AnthropicClient, fake: FakeServer, fmt: str
) -> None:
    response_format = ANSWER if fmt == "json_schema" else {"type": "json_object"}
    body = {"messages": [{"role": "user", "content": "a?"}], "response_format": response_format}
    req = chat_request(spec("claude", "anthropic", None), body)
    resp = await anthropic_client.complete(req)
    sent = fake.last("anthropic")["body"]
    [tool] = sent["tools"]
    schema = ANSWER["json_schema"]["schema"] if fmt == "json_schema" else {"type": "object"}
    assert tool["name"] == "json_answer" and tool["input_schema"] == schema
    assert tool.get("strict", False) is (fmt == "json_schema")
    assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
    assert resp.tool_calls is None and resp.finish_reason == "stop"
    assert json.loads(resp.content) == FAKE_ANSWER
    chunks = await collect(anthropic_client.stream(req))
    assert all(not c.tool_calls for c in chunks)
    assert json.loads("".join(c.delta for c in chunks)) == FAKE_ANSWER
    assert chunks[-1].finish_reason == "stop"


async def test_anthropic_stop_sequence_and_tool_choice_none(
    anthropic_client: AnthropicClient, fake: FakeServer
) -> None:
    claude = spec("claude", "anthropic", None)
    resp = await anthropic_client.complete(request(claude, stop=["\n\n", "END"]))
    assert (resp.finish_reason, resp.stop_sequence) == ("stop", "\n\n")
    chunks = await collect(anthropic_client.stream(request(claude, stop="END")))
    assert (chunks[-1].finish_reason, chunks[-1].stop_sequence) == ("stop", "END")
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER]}
    resp = await anthropic_client.complete(chat_request(claude, body | {"tool_choice": "none"}))
    assert resp.content == "echo: x" and resp.tool_calls is None
    assert fake.last("anthropic")["body"]["tool_choice"] == {"type": "none"}


async def test_anthropic_refuses_logprobs_before_sending(
    anthropic_client: AnthropicClient, fake: FakeServer
) -> None:
    claude = spec("claude", "anthropic", None)
    before = len(fake.seen)
    body = {"messages": [{"role": "user", "content": "x"}], "logprobs": True}
    with pytest.raises(ProviderError, match="logprobs") as exc:
        await anthropic_client.complete(chat_request(claude, body))
    assert (exc.value.status, exc.value.retryable) == (400, False)
    with pytest.raises(ProviderError, match="logprobs"):
        await collect(anthropic_client.stream(chat_request(claude, body)))
    assert len(fake.seen) == before  # nothing was sent


# ------------------------------------------------------------------ simulated


async def test_simulated_complete_and_stream() -> None:
    client = SimulatedClient(SimulatorConfig(time_scale=0, seed=1))
    assert isinstance(client, ProviderClient)
    fast = ModelSpec(id="sim-fast", input_per_m=0.1, output_per_m=0.1, speed=SpeedClass.FAST)
    req = request(fast, [{"role": "user", "content": "What is the capital of France?"}])
    resp = await client.complete(req)
    assert resp.content.startswith("[simulated sim-fast] ") and resp.finish_reason == "stop"
    assert resp.usage.prompt_tokens == 8  # 30 characters / 4, rounded
    assert resp.latency_s == 0.0 and resp.recorded_reward is not None
    chunks = await collect(client.stream(req))
    assert_stream_shape(chunks, resp.content)
    assert chunks[-1].usage == resp.usage and chunks[-1].recorded_reward == resp.recorded_reward
    capped = await client.complete(request(fast, max_tokens=2))
    assert capped.finish_reason == "length" and capped.usage.completion_tokens == 2


async def test_simulated_paces_by_time_scale() -> None:
    client = SimulatedClient(SimulatorConfig(time_scale=0.05))
    slow = ModelSpec(id="sim-slow", input_per_m=1.0, output_per_m=1.0, speed=SpeedClass.SLOW)
    req = request(slow, max_tokens=20)
    plan = client.simulator.plan(req, slow)
    start = time.monotonic()
    chunks = await collect(client.stream(req))
    assert time.monotonic() - start >= plan.latency_s * 0.9
    assert chunks[-1].usage == plan.usage


async def test_simulated_is_stateless_about_models() -> None:
    """Two clients (two replicas) answer a model neither was told about, and alike: the spec
    travels in the request."""
    new = spec("added-at-runtime", "simulated", None)
    a = await SimulatedClient(SimulatorConfig(time_scale=0)).complete(request(new))
    b = await SimulatedClient(SimulatorConfig(time_scale=0)).complete(request(new))
    assert a == b and a.model_id == "added-at-runtime"


def test_retry_after_parsing() -> None:
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_provider_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ProviderError(429, "slow down", 2.0, True)))
    assert (err.status, err.message, err.retry_after_s, err.retryable) == (
        429,
        "slow down",
        2.0,
        True,
    )


# ------------------------------------------------------------------ injected faults and retries


def _sim(model_id: str, **behaviour: Any) -> ModelSpec:
    from core.method.registry import SimBehaviour

    return ModelSpec(
        id=model_id, input_per_m=1.0, output_per_m=1.0, simulation=SimBehaviour(**behaviour)
    )


async def test_simulated_faults_raise_provider_errors() -> None:
    client = SimulatedClient(SimulatorConfig(time_scale=0))
    cases = [
        (_sim("e", error_rate=1.0), (503, True, None, False)),
        (_sim("t", timeout_rate=1.0), (None, True, None, True)),
        (_sim("r", rate_limit_rate=1.0, retry_after_s=4.0), (429, True, 4.0, False)),
    ]
    for model, expected in cases:
        for call in (client.complete(request(model)), collect(client.stream(request(model)))):
            with pytest.raises(ProviderError) as exc:
                await call
            e = exc.value
            assert (e.status, e.retryable, e.retry_after_s, e.timeout) == expected


async def test_retry_tries_each_attempt_then_gives_up() -> None:
    from core.method.faults import RetryPolicy
    from deployments.clients import retry

    client = SimulatedClient(SimulatorConfig(time_scale=0))
    seen: list[tuple[int, int | None, float]] = []
    policy = RetryPolicy(max_attempts=3, backoff_s=0.0)
    model = _sim("e", error_rate=1.0)

    def on_retry(req: ProviderRequest, exc: ProviderError, delay: float) -> None:
        seen.append((req.attempt, exc.status, delay))

    with pytest.raises(ProviderError):
        await retry.complete(client, request(model), policy, on_retry)
    assert seen == [(0, 503, 0.0), (1, 503, 0.0)]
    seen.clear()
    with pytest.raises(ProviderError):
        await collect(retry.stream(client, request(model), policy, on_retry))
    assert seen == [(0, 503, 0.0), (1, 503, 0.0)]


async def test_retry_succeeds_on_a_later_attempt_and_streams_whole() -> None:
    from core.method.faults import RetryPolicy
    from deployments.clients import retry

    client = SimulatedClient(SimulatorConfig(time_scale=0))
    flaky = _sim("flaky", error_rate=0.5)
    # a request whose first attempt fails and whose second succeeds (the draws are seeded)
    rid = next(
        f"r{i}"
        for i in range(100)
        if client.simulator.fault(
            request(flaky).model_copy(update={"request_id": f"r{i}"}), flaky
        ).kind
        == "error"
        and client.simulator.fault(
            request(flaky).model_copy(update={"request_id": f"r{i}", "attempt": 1}), flaky
        ).kind
        is None
    )
    req = request(flaky).model_copy(update={"request_id": rid})
    retries: list[int] = []
    policy = RetryPolicy(max_attempts=2, backoff_s=0.0)
    resp = await retry.complete(client, req, policy, lambda r, e, d: retries.append(r.attempt))
    assert retries == [0] and resp.content.startswith("[simulated flaky]")
    chunks = await collect(retry.stream(client, req, policy))
    assert_stream_shape(chunks, resp.content)


async def test_retry_waits_a_short_retry_after_and_not_a_long_one() -> None:
    from core.method.faults import RetryPolicy
    from deployments.clients import retry

    client = SimulatedClient(SimulatorConfig(time_scale=0))
    policy = RetryPolicy(max_attempts=3, max_retry_after_s=1.0)
    delays: list[float] = []
    short = _sim("short", rate_limit_rate=1.0, retry_after_s=0.0)
    with pytest.raises(ProviderError):
        await retry.complete(client, request(short), policy, lambda r, e, d: delays.append(d))
    assert delays == [0.0, 0.0]
    delays.clear()
    long = _sim("long", rate_limit_rate=1.0, retry_after_s=30.0)
    with pytest.raises(ProviderError) as exc:
        await retry.complete(client, request(long), policy, lambda r, e, d: delays.append(d))
    assert delays == [] and exc.value.retry_after_s == 30.0


async def test_retry_against_a_real_http_server(openai_client: OpenAIClient, fake: FakeServer):
    from core.method.faults import RetryPolicy
    from deployments.clients import retry

    policy = RetryPolicy(max_attempts=3, backoff_s=0.0)
    for model, calls in (("broken", 3), ("bad", 1), ("rate-limited", 1)):  # 429 waits 7 s > 2
        before = len(fake.seen)
        with pytest.raises(ProviderError):
            await retry.complete(openai_client, request(spec(model, "openai", None)), policy)
        assert len(fake.seen) - before == calls, model
