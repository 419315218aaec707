"""The simulated provider plays OpenAI's tool calling and structured output, without Ray.

Tool-call arguments and JSON answers are checked with `jsonschema` (a locked dependency, used
here only to validate); answers and streams go through the chat path (core.service.chat over
the simulated client) and are read back with the real `openai` SDK's types and its stream
accumulator, as an application would read them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion
from openai.types.chat import ChatCompletionChunk as SDKChunk

from core.method.registry import ModelSpec, SpeedClass
from core.replay.schema_instance import minimal_instance
from core.replay.simulator import (
    IMAGE_TOKENS,
    Simulator,
    SimulatorConfig,
    estimate_tokens,
    prompt_tokens_of,
)
from core.service.chat import ChatService
from core.service.decision import RouteDecision
from core.service.protocol import ChatCompletionRequest, ProviderChunk, ProviderRequest
from deployments.clients.simulated import SimulatedClient

SPEC = ModelSpec(id="sim-m", input_per_m=0.5, output_per_m=1.5, speed=SpeedClass.FAST)
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": WEATHER_PARAMS, "strict": True},
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "format": "uuid"}},
            "required": ["tz"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 3, "maxLength": 5},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 2},
        "verdict": {"anyOf": [{"$ref": "#/$defs/verdict"}, {"type": "null"}]},
        "when": {"type": "string", "format": "date-time"},
    },
    "required": ["title", "score", "tags", "verdict", "when"],
    "additionalProperties": False,
    "$defs": {
        "tag": {"type": "string", "enum": ["a", "b", "c"]},
        "verdict": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "multipleOf": 5}},
            "required": ["ok", "n"],
            "additionalProperties": False,
        },
    },
}
USER_TURN = [{"role": "user", "content": "What's the weather in Paris this week?"}]


def request(
    messages: list[dict[str, Any]] | None = None, spec: ModelSpec = SPEC, **fields: Any
) -> ProviderRequest:
    chat = ChatCompletionRequest.model_validate({"messages": messages or USER_TURN, **fields})
    return ProviderRequest.from_chat("r1", chat, spec)


def plan(**kw: Any):
    return Simulator(SimulatorConfig(seed=1)).plan(request(**kw), SPEC)


def after_a_call(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *USER_TURN,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C, cloudy"},
    ]


# ---------------------------------------------------------------- minimal instances


@pytest.mark.parametrize(
    "schema",
    [
        WEATHER_PARAMS,
        ANSWER_SCHEMA,
        TIME["function"]["parameters"],
        {"type": "object", "properties": {}, "additionalProperties": False},
        {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 2},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"k": {"enum": ["x", "y"]}},
                "required": ["k"],
            },
            "minItems": 2,
            "uniqueItems": True,
        },
        {"type": ["null", "string"], "pattern": "^[0-9]+$"},
        {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 3},
        {"type": "number", "minimum": -5.5, "maximum": -2},
        {"allOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]}, {"required": ["b"]}]},
        {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]},
        {"type": "object", "minProperties": 2},
        {"type": "string", "format": "email"},
        {"$ref": "#/definitions/x", "definitions": {"x": {"type": "boolean"}}},
    ],
)
def test_minimal_instance_validates(schema: dict[str, Any]) -> None:
    value = minimal_instance(schema)
    jsonschema.Draft202012Validator(schema).validate(value)
    assert minimal_instance(schema) == value  # deterministic


def test_minimal_instance_never_raises() -> None:
    for junk in (None, "x", 3, [], {"type": 5}, {"$ref": 7}, {"properties": []}, {"minItems": "2"}):
        json.dumps(minimal_instance(junk))
    recursive = {"type": "object", "properties": {"next": {"$ref": "#"}}}
    assert minimal_instance(recursive) == {}  # optional recursion is not followed


def test_no_schema_makes_an_answer_huge() -> None:
    node = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": "#/$defs/n"}},
        "required": ["a", "b"],
    }
    tree = {"$defs": {"n": node}, "$ref": "#/$defs/n"}  # a full binary tree, 2^32 nodes deep
    assert len(json.dumps(minimal_instance(tree))) < 200_000
    huge = {"type": "array", "minItems": 10**9, "items": {"type": "string", "minLength": 10**9}}
    assert len(json.dumps(minimal_instance(huge))) < 300_000
    evil = {"type": "string", "pattern": "^(a+)+$", "minLength": 60}  # catastrophic backtracking
    assert minimal_instance(evil).startswith("simulated")


# ---------------------------------------------------------------- tool calls


def _args(p) -> dict[str, Any]:
    assert len(p.tool_calls) == 1
    return json.loads(p.tool_calls[0].function.arguments)


def test_required_calls_the_first_tool_with_schema_valid_arguments() -> None:
    p = plan(tools=[WEATHER, TIME], tool_choice="required")
    assert (p.kind, p.content, p.finish_reason) == ("tool_calls", "", "tool_calls")
    call = p.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_") and len(call.id) == 29
    jsonschema.validate(_args(p), WEATHER_PARAMS)
    assert _args(p) == {"city": "simulated", "unit": "celsius", "days": 1}
    # billed as the JSON the model generated: the call's name and arguments
    generated = json.dumps({"name": "get_weather", "arguments": call.function.arguments})
    assert p.completion_tokens == estimate_tokens(len(generated))
    assert plan(tools=[WEATHER, TIME], tool_choice="required") == p  # deterministic


def test_a_named_function_is_the_one_called() -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    p = plan(tools=[WEATHER, TIME], tool_choice=named)
    assert p.tool_calls[0].function.name == "get_time"
    jsonschema.validate(_args(p), TIME["function"]["parameters"])


def test_auto_calls_after_a_user_turn_and_answers_text_after_a_tool_result() -> None:
    first = plan(tools=[WEATHER])  # tool_choice absent = auto
    assert first.kind == "tool_calls" and first.tool_calls[0].function.name == "get_weather"
    assert plan(tools=[WEATHER], tool_choice="auto") == first
    call = first.tool_calls[0].model_dump()
    second = plan(messages=after_a_call(call), tools=[WEATHER], tool_choice="auto")
    assert (second.kind, second.finish_reason, second.tool_calls) == ("text", "stop", ())
    assert second.content.startswith("[simulated sim-m] ")
    # "required" calls again, with a new id (a new turn)
    again = plan(messages=after_a_call(call), tools=[WEATHER], tool_choice="required")
    assert again.kind == "tool_calls" and again.tool_calls[0].id != call["id"]


def test_none_never_calls_and_no_tools_is_plain_text() -> None:
    assert plan(tools=[WEATHER], tool_choice="none").kind == "text"
    plain = Simulator(SimulatorConfig(seed=1)).plan(request(), SPEC)
    assert plain.kind == "text" and plain.tool_calls == ()


def test_tools_and_earlier_calls_count_as_prompt_tokens() -> None:
    plain = request()
    with_tools = request(tools=[WEATHER])
    extra = estimate_tokens(len(plain.messages[0]["content"]) + len(json.dumps(with_tools.tools)))
    assert prompt_tokens_of(with_tools) == extra > prompt_tokens_of(plain)
    call = plan(tools=[WEATHER]).tool_calls[0].model_dump()
    history = request(messages=after_a_call(call), tools=[WEATHER])
    assert prompt_tokens_of(history) > prompt_tokens_of(with_tools)


def test_an_image_costs_image_tokens_and_changes_no_text() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    text = {"type": "text", "text": "What's the weather in Paris this week?"}
    with_image = request(messages=[{"role": "user", "content": [text, image]}])
    assert prompt_tokens_of(with_image) == prompt_tokens_of(request()) + IMAGE_TOKENS
    assert with_image.prompt_text == USER_TURN[0]["content"]


def test_max_tokens_cuts_a_tool_call() -> None:
    p = plan(tools=[WEATHER], tool_choice="required", max_tokens=3)
    assert (p.finish_reason, p.completion_tokens) == ("length", 3)
    assert len(p.tool_calls[0].function.arguments) == 12


# ---------------------------------------------------------------- structured output


def test_json_schema_answers_validate() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}}
    p = plan(response_format={**fmt, "json_schema": {**fmt["json_schema"], "strict": True}})
    assert (p.kind, p.finish_reason) == ("json", "stop")
    value = json.loads(p.content)
    jsonschema.Draft202012Validator(ANSWER_SCHEMA).validate(value)
    assert p.completion_tokens == estimate_tokens(len(p.content))


def test_json_object_answers_are_objects_billed_like_text() -> None:
    text = plan()
    p = plan(response_format={"type": "json_object"})
    answer = json.loads(p.content)
    assert p.kind == "json" and answer["model"] == "sim-m" and isinstance(answer["answer"], str)
    assert p.completion_tokens == text.completion_tokens  # the drawn length, as for text
    assert plan(response_format={"type": "text"}) == text


def test_a_tool_call_wins_over_a_response_format() -> None:
    fmt = {"type": "json_object"}
    assert plan(tools=[WEATHER], tool_choice="required", response_format=fmt).kind == "tool_calls"
    assert plan(tools=[WEATHER], tool_choice="none", response_format=fmt).kind == "json"


# ---------------------------------------------------------------- the client and the chat path


def collect(client: SimulatedClient, req: ProviderRequest) -> list[ProviderChunk]:
    async def run() -> list[ProviderChunk]:
        return [c async for c in client.stream(req)]

    return asyncio.run(run())


def test_the_client_streams_a_tool_call_as_openai_deltas() -> None:
    client = SimulatedClient(SimulatorConfig(seed=1, time_scale=0), tokens_per_chunk=2)
    req = request(tools=[WEATHER], tool_choice="required")
    whole = asyncio.run(client.complete(req))
    assert whole.content == "" and whole.finish_reason == "tool_calls"
    assert whole.tool_calls is not None and len(whole.tool_calls) == 1
    chunks = collect(client, req)
    *pieces, last = chunks
    head = pieces[0].tool_calls[0]
    assert (head.index, head.id, head.type) == (0, whole.tool_calls[0].id, "function")
    assert head.function.name == "get_weather" and head.function.arguments == ""
    assert len(pieces) > 2 and all(c.delta == "" for c in pieces)
    args = "".join(c.tool_calls[0].function.arguments for c in pieces)
    assert args == whole.tool_calls[0].function.arguments
    assert all(c.tool_calls[0].id is None for c in pieces[1:])
    assert (last.finish_reason, last.usage) == ("tool_calls", whole.usage)


def test_the_client_streams_json_in_slices() -> None:
    client = SimulatedClient(SimulatorConfig(seed=1, time_scale=0))
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}}
    req = request(response_format=fmt)
    chunks = collect(client, req)
    assert len(chunks) > 3
    assert "".join(c.delta for c in chunks) == asyncio.run(client.complete(req)).content


class _OneModel:
    """The router port for one model: every request goes to SPEC; charges are recorded."""

    def __init__(self) -> None:
        self.charges: list[float] = []

    async def route(self, x, limits, model, request_id, tenant=None) -> RouteDecision:
        return RouteDecision(
            request_id=request_id,
            model=SPEC.id,
            t=0,
            dual=0.0,
            forced=False,
            routed=True,
            spec=SPEC,
        )

    async def fallback(self, *args: Any) -> None:
        return None

    async def fail(self, *args: Any) -> None:
        return None

    async def charge(self, request_id, cost_usd, model, x, forced, tenant=None) -> str:
        self.charges.append(cost_usd)
        return "charged"


class _Embedder:
    async def embed(self, text: str) -> list[float]:
        return [1.0]


def _service() -> tuple[ChatService, _OneModel]:
    router = _OneModel()
    client = SimulatedClient(SimulatorConfig(seed=1, time_scale=0))
    return ChatService(_Embedder(), router, client, lambda exc: {"error": str(exc)}), router


def test_a_two_turn_tool_conversation_read_with_the_sdks_types() -> None:
    service, router = _service()
    first = ChatCompletionRequest.model_validate({"messages": USER_TURN, "tools": [WEATHER]})
    body = asyncio.run(service.complete("r1", first)).response.model_dump(mode="json")
    completion = ChatCompletion.model_validate(body)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    assert completion.usage is not None and router.charges[-1] > 0
    # the second turn sends the call back (as the SDK serialises it) and the tool's result
    echoed = choice.message.model_dump(exclude_unset=True, mode="json")
    second = ChatCompletionRequest.model_validate(
        {
            "messages": [
                *USER_TURN,
                echoed,
                {"role": "tool", "tool_call_id": call.id, "content": "18 C"},
            ],
            "tools": [WEATHER],
        }
    )
    assert second.prompt_text() == USER_TURN[0]["content"]
    answer = ChatCompletion.model_validate(
        asyncio.run(service.complete("r2", second)).response.model_dump(mode="json")
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content.startswith("[simulated sim-m]")


def test_a_streamed_tool_call_is_assembled_by_the_sdk() -> None:
    service, router = _service()
    body = ChatCompletionRequest.model_validate(
        {
            "messages": USER_TURN,
            "tools": [WEATHER],
            "tool_choice": "required",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    async def events() -> list[str]:
        stream = await service.open_stream("r1", body)
        return [e async for e in stream.events()]

    raw = asyncio.run(events())
    assert raw[-1] == "data: [DONE]\n\n"
    state = ChatCompletionStreamState(input_tools=[WEATHER])
    for event in raw[:-1]:
        state.handle_chunk(SDKChunk.model_validate(json.loads(event[len("data: ") :])))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.parsed_arguments == {"city": "simulated", "unit": "celsius", "days": 1}
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert len(router.charges) == 1
    # Sent back as the SDK serialises its assembled message (with its own `index`,
    # `parsed_arguments`, `parsed`, ...), the tool turn is accepted and answered in text.
    echoed = choice.message.model_dump(exclude_unset=True, mode="json")
    assert echoed["tool_calls"][0]["function"]["parsed_arguments"] is not None
    second = ChatCompletionRequest.model_validate(
        {
            "messages": [
                *USER_TURN,
                echoed,
                {"role": "tool", "tool_call_id": call.id, "content": "9"},
            ],
            "tools": [WEATHER],
        }
    )
    sent = ProviderRequest.from_chat("r2", second, SPEC).messages[1]
    assert sent == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.function.arguments},
            }
        ],
    }
    answer = asyncio.run(service.complete("r2", second)).response
    assert (
        answer.choices[0].finish_reason == "stop" and answer.choices[0].message.tool_calls is None
    )
