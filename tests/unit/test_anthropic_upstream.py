"""A provider request for an Anthropic model without Ray or network: our OpenAI-shaped request ->
the Messages API's parameters (tools, tool choice, tool turns, images, system, JSON formats,
stop sequences), Anthropic's message and stream events -> our answer, and an Anthropic-format
request that goes through our chat request to an Anthropic upstream and arrives as it left."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.method.registry import ModelSpec
from core.service.anthropic_protocol import TOOL_ERROR_MARK, MessagesRequest
from core.service.anthropic_translate import to_chat_request
from core.service.anthropic_upstream import (
    AnthropicCall,
    StreamDecoder,
    anthropic_call,
    anthropic_usage,
    provider_response,
    to_anthropic,
)
from core.service.ports import ProviderError
from core.service.protocol import ChatCompletionRequest, ProviderChunk, ProviderRequest

CLAUDE = ModelSpec(
    id="claude",
    provider="anthropic",
    provider_model="claude-x-1",
    input_per_m=1.0,
    output_per_m=5.0,
)
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": PARAMS,
        "strict": True,
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters, no description
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
ANSWER = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def call_of(**chat: Any) -> AnthropicCall:
    body = ChatCompletionRequest.model_validate({"messages": USER} | chat)
    return anthropic_call(ProviderRequest.from_chat("r1", body, CLAUDE))


# ---------------------------------------------------------------- the request


def test_tools_and_the_plain_request() -> None:
    call = call_of(tools=[WEATHER, CLOCK], stop="END", user="u-1", max_tokens=50, seed=3)
    assert call.format_tool is None
    assert call.params == {
        "model": "claude-x-1",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "max_tokens": 50,
        "tools": [
            {
                "name": "get_weather",
                "input_schema": PARAMS,
                "description": "Weather",
                "strict": True,
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }  # no tool_choice: Anthropic's default is auto; seed has no equivalent
    assert call_of().params["max_tokens"] == 1024  # Anthropic requires one


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            None,
            {"type": "tool", "name": "get_time"},
        ),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),  # nothing to run in parallel
    ],
)
def test_tool_choices(choice: Any, parallel: bool | None, expected: dict) -> None:
    chat: dict[str, Any] = {"tools": [WEATHER, CLOCK], "tool_choice": choice}
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    params = call_of(**chat).params
    assert params["tool_choice"] == expected


def test_a_tool_turn_with_images_and_errors() -> None:
    call = {
        "id": "call:1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "P"}'},
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/webp;base64,UklG\nRg==", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": "http://x.org/a.gif"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call,
                call | {"id": "c2", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call:1", "content": [{"type": "text", "text": "18 C"}]},
        {"role": "tool", "tool_call_id": "c2", "content": TOOL_ERROR_MARK + "clock broken"},
        {"role": "user", "content": "Thanks; and tomorrow?"},
    ]
    system, out = to_anthropic(messages)
    assert system == "Be brief."
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="},
                },
                {"type": "image", "source": {"type": "url", "url": "http://x.org/a.gif"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "P"}},
                {"type": "tool_use", "id": "c2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": "clock broken",
                    "is_error": True,
                },
                {"type": "text", "text": "Thanks; and tomorrow?"},
            ],
        },
    ]


def test_what_cannot_be_sent_is_a_400() -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(
        ProviderError, match=r"messages\.1\.tool_calls\.0\.function\.arguments"
    ) as exc:
        to_anthropic([*USER, {"role": "assistant", "tool_calls": [bad]}])
    assert (exc.value.status, exc.value.retryable) == (400, False)
    with pytest.raises(ProviderError, match="logprobs"):
        call_of(logprobs=True)
    rooted = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}
    with pytest.raises(ProviderError, match="root is not an object"):
        call_of(response_format=rooted)


def test_sampling_params_only_when_asked() -> None:
    body = ChatCompletionRequest.model_validate(
        {"messages": USER, "temperature": 1.5, "top_p": 0.5}
    )
    req = ProviderRequest.from_chat("r1", body, CLAUDE)
    assert "extra_body" not in anthropic_call(req).params
    sent = anthropic_call(req, send_sampling_params=True).params["extra_body"]
    assert sent == {"temperature": 1.0, "top_p": 0.5}  # OpenAI's 0..2 clamped to 0..1


# ---------------------------------------------------------------- JSON response formats


def test_a_json_schema_is_a_forced_answer_tool() -> None:
    call = call_of(response_format=ANSWER)
    assert call.format_tool == "json_answer"
    assert call.params["tools"] == [
        {
            "name": "json_answer",
            "description": "Give your answer as this tool's input: "
            "the JSON object of the schema 'answer'.",
            "input_schema": SCHEMA,
            "strict": True,
        }
    ]
    assert call.params["tool_choice"] == {"type": "tool", "name": "json_answer"}
    obj = call_of(response_format={"type": "json_object"})
    assert obj.params["tools"][0]["input_schema"] == {"type": "object"}
    assert "strict" not in obj.params["tools"][0]
    assert "tools" not in call_of(response_format={"type": "text"}).params


def test_a_json_format_beside_tools() -> None:
    # auto: a tool or the answer, but something
    both = call_of(tools=[WEATHER], response_format=ANSWER, parallel_tool_calls=False)
    assert [t["name"] for t in both.params["tools"]] == ["get_weather", "json_answer"]
    assert both.params["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # none: only the answer tool
    alone = call_of(tools=[WEATHER], tool_choice="none", response_format=ANSWER)
    assert [t["name"] for t in alone.params["tools"]] == ["json_answer"]
    assert alone.params["tool_choice"] == {"type": "tool", "name": "json_answer"}
    # required: the tool call comes first, the format is not asked
    first = call_of(tools=[WEATHER], tool_choice="required", response_format=ANSWER)
    assert first.format_tool is None and first.params["tool_choice"] == {"type": "any"}
    # a user tool with the answer tool's name
    taken = {"type": "function", "function": {"name": "json_answer", "parameters": PARAMS}}
    renamed = call_of(tools=[taken], response_format=ANSWER)
    assert renamed.format_tool == "json_answer_"


# ---------------------------------------------------------------- the answer


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x-1",
    "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 4,
        "output_tokens": 7,
    },
}


def test_a_message_becomes_our_answer() -> None:
    resp = provider_response(MESSAGE, AnthropicCall({}), "claude", 0.5)
    assert resp.content == "Checking." and resp.finish_reason == "tool_calls"
    [call] = resp.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (17, 7)  # cache counted
    assert (resp.model_id, resp.latency_s, resp.stop_sequence) == ("claude", 0.5, None)
    # the answer tool's input is the text
    answer = MESSAGE | {
        "content": [{"type": "tool_use", "id": "t", "name": "json_answer", "input": {"a": 7}}]
    }
    resp = provider_response(answer, AnthropicCall({}, "json_answer"), "claude", 0.1)
    assert json.loads(resp.content) == {"a": 7} and resp.tool_calls is None
    assert resp.finish_reason == "stop"
    stopped = MESSAGE | {"content": [], "stop_reason": "stop_sequence", "stop_sequence": "END"}
    resp = provider_response(stopped, AnthropicCall({}), "claude", 0.1)
    assert (resp.finish_reason, resp.stop_sequence, resp.content) == ("stop", "END", "")
    for stop, finish in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ]:
        assert (
            provider_response(
                MESSAGE | {"stop_reason": stop}, AnthropicCall({}), "c", 0
            ).finish_reason
            == finish
        )
    assert (
        anthropic_usage(
            {"input_tokens": 2, "output_tokens": 1, "cache_read_input_tokens": None}
        ).prompt_tokens
        == 2
    )


def events(*blocks: tuple[dict, list[dict]], stop: str = "tool_use") -> list[dict]:
    """Anthropic's stream of these (block, deltas)."""
    out: list[dict] = [
        {
            "type": "message_start",
            "message": MESSAGE
            | {
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1},
            },
        },
        {"type": "ping"},
    ]
    for i, (block, deltas) in enumerate(blocks):
        out.append({"type": "content_block_start", "index": i, "content_block": block})
        out += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        out.append({"type": "content_block_stop", "index": i})
    out.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 9},
        }
    )
    out.append({"type": "message_stop"})
    return out


def decode(stream: list[dict], format_tool: str | None = None) -> list[ProviderChunk]:
    decoder = StreamDecoder(format_tool)
    chunks = [c for c in map(decoder.feed, stream) if c is not None]
    return [*chunks, decoder.end()]


def piece(text: str) -> dict:
    return {"type": "input_json_delta", "partial_json": text}


def test_stream_events_become_our_chunks() -> None:
    chunks = decode(
        events(
            (
                {"type": "text", "text": ""},
                [
                    {"type": "text_delta", "text": "Let me"},
                    {"type": "text_delta", "text": " check."},
                ],
            ),
            (
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                [piece('{"city"'), piece(': "P"}')],
            ),
            ({"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}, []),
        )
    )
    *body, last = chunks
    assert "".join(c.delta for c in body) == "Let me check."
    deltas = [c.tool_calls[0] for c in body if c.tool_calls]
    assert [(d.index, d.id, d.function.name if d.function else None) for d in deltas] == [
        (0, "toolu_1", "get_weather"),
        (0, None, None),
        (0, None, None),
        (1, "toolu_2", "get_time"),
        (1, None, None),
    ]
    args = [
        "".join(d.function.arguments or "" for d in deltas if d.index == i and d.function)
        for i in (0, 1)
    ]
    assert [json.loads(a) for a in args] == [{"city": "P"}, {}]  # no input pieces: {}
    assert last.finish_reason == "tool_calls"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        14,
        9,
    )


def test_the_answer_tools_stream_is_text() -> None:
    chunks = decode(
        events(
            (
                {"type": "tool_use", "id": "t", "name": "json_answer", "input": {}},
                [piece('{"a"'), piece(": 7}")],
            )
        ),
        format_tool="json_answer",
    )
    assert all(c.tool_calls is None for c in chunks)
    assert json.loads("".join(c.delta for c in chunks)) == {"a": 7}
    assert chunks[-1].finish_reason == "stop"


# ---------------------------------------------------------------- there and back


def test_an_anthropic_request_reaches_an_anthropic_upstream_as_it_left() -> None:
    """/v1/messages -> our chat request -> the provider request -> Anthropic's parameters."""
    sent = {
        "model": "auto",
        "max_tokens": 300,
        "system": "Be brief.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": "no data",
                        "is_error": True,
                    },
                    {"type": "text", "text": "Try again."},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather",
                "input_schema": PARAMS,
                "strict": True,
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    chat = to_chat_request(MessagesRequest.model_validate(sent))
    params = anthropic_call(ProviderRequest.from_chat("r1", chat, CLAUDE)).params
    expected = {k: v for k, v in sent.items() if k != "model"} | {"model": "claude-x-1"}
    assert params == expected
