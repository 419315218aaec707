"""The Anthropic Messages ingress without Ray: its schema (what is honoured, what is a 400 naming
the field, what is a 422), the request's translation to our chat request, and the answer's
translation to Anthropic's message and stream events, which the real `anthropic` SDK parses
(served by an in-process transport)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2 as httpx  # the anthropic SDK's HTTP library
import pytest
from pydantic import ValidationError

from core.service.anthropic_protocol import (
    TOOL_ERROR_MARK,
    MessagesRequest,
    anthropic_error,
    messages_refusal,
    stop_reason,
)
from core.service.anthropic_translate import AnthropicStreamFormat, to_chat_request, to_message
from core.service.chat import StreamEnd
from core.service.protocol import (
    FunctionCall,
    FunctionCallDelta,
    ParetoserveInfo,
    ProviderChunk,
    ProviderResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "auto", "max_tokens": 64, "messages": USER} | fields


def parse(**fields: Any) -> MessagesRequest:
    return MessagesRequest.model_validate(body(**fields))


def refusal_of(fields: dict[str, Any]) -> tuple[str | None, str | None, str]:
    with pytest.raises(ValidationError) as exc:
        parse(**fields)
    refused = messages_refusal(exc.value.errors())
    assert refused is not None, exc.value
    err = refused.error
    return err.param, err.code, err.message


# ---------------------------------------------------------------- the request


def test_a_whole_conversation_becomes_the_chat_request() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    url_image = {"type": "image", "source": {"type": "url", "url": "https://x.org/cat.jpg"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "P"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "R"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "no such city"}, url_image],
                },
                {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    req = parse(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}],
        messages=messages,
        tools=[WEATHER | {"strict": True}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
        metadata={"user_id": "u-1"},
        stream=True,
        paretoserve={"max_blended_per_m": 2.0},
    )
    chat = to_chat_request(req)
    dumped = [m.model_dump(exclude_none=True) for m in chat.messages]
    call = {"type": "function", "function": {"name": "get_weather"}}
    assert dumped == [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Use French."},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                call
                | {"id": "toolu_1", "function": call["function"] | {"arguments": '{"city": "P"}'}},
                call
                | {"id": "toolu_2", "function": call["function"] | {"arguments": '{"city": "R"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": TOOL_ERROR_MARK + "no such city"},
        {
            "role": "user",  # the tool result's image, then the user's words
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x.org/cat.jpg"}},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert [t.model_dump(exclude_none=True) for t in chat.tools or []] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER["description"],
                "parameters": WEATHER["input_schema"],
                "strict": True,
            },
        }
    ]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    assert (chat.max_tokens, chat.temperature, chat.top_p) == (64, 0.5, 0.9)
    assert chat.stop == ["END"] and chat.user == "u-1" and chat.stream is True
    assert chat.paretoserve is not None and chat.paretoserve.max_blended_per_m == 2.0
    assert chat.prompt_text() == "And tomorrow?"  # routed on the user's words


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"function": {"name": "get_weather"}}),
    ],
)
def test_tool_choices(choice: dict, expected: Any) -> None:
    chat = to_chat_request(parse(tools=[WEATHER], tool_choice=choice))
    got = chat.tool_choice
    if isinstance(expected, dict):
        assert got is not None and not isinstance(got, str)
        assert got.function.name == expected["function"]["name"]
    else:
        assert got == expected
    assert chat.parallel_tool_calls is None


def test_plain_strings_output_config_and_defaults() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = to_chat_request(
        parse(
            system="Be brief.", output_config={"format": {"type": "json_schema", "schema": schema}}
        )
    )
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        *USER,
    ]
    fmt = chat.response_format
    assert fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None
    assert fmt.json_schema.schema_ == schema and fmt.json_schema.strict is True
    bare = to_chat_request(parse(model="google/gemini-2.5-pro"))
    assert bare.model == "google/gemini-2.5-pro" and bare.stream is False
    assert (bare.tools, bare.tool_choice, bare.stop, bare.user, bare.temperature) == (None,) * 5
    # an image-only message answering a tool: images are parts of a user message
    req = parse(
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ]
    )
    assert [m.model_dump(exclude_none=True) for m in to_chat_request(req).messages][1:] == [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t", "content": ""},
    ]


@pytest.mark.parametrize(
    ("fields", "param", "code", "says"),
    [
        ({"top_k": 5}, "top_k", "unsupported_parameter", "no top-k sampling"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", None, "thinking"),
        ({"frobnicate": 1}, "frobnicate", "unsupported_parameter", "unsupported field"),
        ({"metadata": {"user_id": "u", "team": "x"}}, "metadata.team", None, "unsupported"),
        ({"output_config": {"effort": "high"}}, "output_config.effort", None, "effort"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.type",
            "unsupported_value",
            "'document' is not supported",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "citations": []}]}
                ]
            },
            "messages.0.content.0.citations",
            "unsupported_parameter",
            "citations",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
            "unsupported_value",
            "'file'",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools.0.type",
            "unsupported_value",
            "tool type",
        ),
        (
            {"messages": [*USER, {"role": "assistant", "content": "It is"}]},
            "messages",
            "unsupported_value",
            "prefill",
        ),
    ],
)
def test_what_the_router_cannot_honour_is_a_400_naming_it(
    fields: dict, param: str, code: str | None, says: str
) -> None:
    got_param, got_code, message = refusal_of(fields)
    assert got_param == param and message.startswith(f"{param}: ")
    assert code is None or got_code == code
    assert says in message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"tools": [WEATHER | {"input_schema": {"type": "string"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": []}]}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ]
            },
            "messages",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}],
                    }
                ]
            },
            "messages",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}],
                    }
                ]
            },
            "messages",
        ),
        ({"paretoserve": {"allowed": ["x"]}}, "paretoserve"),
    ],
)
def test_bad_values_stay_422s(fields: dict, field: str) -> None:
    data = body(**fields)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValidationError) as exc:
        MessagesRequest.model_validate(data)
    assert messages_refusal(exc.value.errors()) is None, exc.value
    assert exc.value.errors()[0]["loc"][0] == field


def test_null_is_absent_and_cache_control_is_accepted() -> None:
    req = parse(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        tools=[WEATHER | {"cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        cache_control={"type": "ephemeral"},
        temperature=None,
        stream=None,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "citations": None}]}],
    )
    assert req.stream is False and req.temperature is None
    chat = to_chat_request(req)
    assert "cache_control" not in json.dumps(chat.model_dump(mode="json"))


# ---------------------------------------------------------------- the answer


def info(request_id: str = "req-1") -> ParetoserveInfo:
    return ParetoserveInfo(
        request_id=request_id, cost_usd=0.001, routed=True, forced=False, dual=0.0
    )


def response(**fields: Any) -> ProviderResponse:
    base = {
        "model_id": "mistralai/mistral-large-2512",
        "content": "Sunny.",
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=12, completion_tokens=3),
        "latency_s": 0.1,
    }
    return ProviderResponse(**(base | fields))


@pytest.mark.parametrize(
    ("finish", "sequence", "expected"),
    [
        ("stop", None, "end_turn"),
        ("stop", "END", "stop_sequence"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
        ("content_filter", None, "refusal"),
        (None, None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, sequence: str | None, expected: str) -> None:
    assert stop_reason(finish, sequence) == expected


def test_a_plain_answer_in_anthropics_shape() -> None:
    calls = [
        ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "P"}')),
        ToolCall(id="call_2", function=FunctionCall(name="get_weather", arguments='{"city": ')),
    ]
    msg = to_message(response(tool_calls=calls, finish_reason="tool_calls"), info())
    assert msg.model_dump(mode="json") == {
        "id": "msg_req-1",
        "type": "message",
        "role": "assistant",
        "model": "mistralai/mistral-large-2512",
        "content": [
            {"type": "text", "text": "Sunny."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "P"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},  # cut
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
        "paretoserve": info().model_dump(mode="json"),
    }
    only_calls = to_message(response(content="", tool_calls=calls[:1]), info())
    assert [b.type for b in only_calls.content] == ["tool_use"]
    stopped = to_message(response(stop_sequence="END"), info())
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "END")


# ---------------------------------------------------------------- through the real SDK


def sdk_serving(answer: httpx.Response) -> anthropic.Anthropic:
    """An `anthropic` client whose every request gets `answer` (no network: a mock transport)."""
    transport = httpx.MockTransport(lambda request: answer)
    return anthropic.Anthropic(
        api_key="unused",
        base_url="http://paretoserve.test",
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )


def stream_text(chunks: list[ProviderChunk], end: StreamEnd, prompt_tokens: int = 9) -> str:
    fmt = AnthropicStreamFormat("req-1", "google/gemini-2.5-pro", prompt_tokens, lambda e: {})
    events = [*fmt.start()]
    for chunk in chunks:
        events += fmt.piece(chunk)
    return "".join([*events, *fmt.end(end)])


def head(index: int, call_id: str, name: str) -> ProviderChunk:
    fn = FunctionCallDelta(name=name, arguments="")
    return ProviderChunk(
        tool_calls=[ToolCallDelta(index=index, id=call_id, type="function", function=fn)]
    )


def args(index: int, piece: str) -> ProviderChunk:
    return ProviderChunk(
        tool_calls=[ToolCallDelta(index=index, function=FunctionCallDelta(arguments=piece))]
    )


def test_a_streamed_answer_is_parsed_by_the_sdk() -> None:
    chunks = [
        ProviderChunk(delta="Let me "),
        ProviderChunk(delta="check."),
        head(0, "call_a", "get_weather"),
        args(0, '{"city":'),
        args(0, ' "Paris"}'),
        head(1, "call_b", "get_time"),
        args(1, "{}"),
    ]
    end = StreamEnd("tool_calls", None, Usage(prompt_tokens=30, completion_tokens=12), info())
    text = stream_text(chunks, end)
    names = [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    sse = httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
    with sdk_serving(sse).messages.stream(model="auto", max_tokens=64, messages=USER) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "text" in kinds and "input_json" in kinds
    assert final.id == "msg_req-1" and final.model == "google/gemini-2.5-pro"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Let me check."
    first, second = final.content[1], final.content[2]
    assert (first.id, first.name, first.input) == ("call_a", "get_weather", {"city": "Paris"})
    assert (second.id, second.name, second.input) == ("call_b", "get_time", {})
    assert final.stop_reason == "tool_use" and final.stop_sequence is None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)
    delta = next(
        json.loads(b.split("data: ", 1)[1]) for b in text.split("\n\n") if "message_delta" in b
    )
    assert delta["paretoserve"]["request_id"] == "req-1"


def test_a_streamed_text_answer_with_a_stop_sequence() -> None:
    end = StreamEnd("stop", "END", Usage(prompt_tokens=5, completion_tokens=2), info())
    text = stream_text([ProviderChunk(delta="Hi"), ProviderChunk(delta=" there")], end, 4)
    sse = httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
    with sdk_serving(sse).messages.stream(model="auto", max_tokens=64, messages=USER) as stream:
        assert "".join(stream.text_stream) == "Hi there"
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 2)
    start = json.loads(text.split("\n\n")[0].split("data: ", 1)[1])
    assert start["message"]["usage"] == {"input_tokens": 4, "output_tokens": 0}  # the estimate


def test_an_interleaved_tool_call_cannot_be_written() -> None:
    fmt = AnthropicStreamFormat("r", "m", 1, lambda e: {})
    list(fmt.start())
    list(fmt.piece(head(0, "a", "f")))
    list(fmt.piece(ProviderChunk(delta="words")))
    with pytest.raises(ValueError, match="tool call 0"):
        list(fmt.piece(args(0, "{}")))


def test_a_failure_is_an_error_event_the_sdk_raises() -> None:
    fmt = AnthropicStreamFormat(
        "r", "m", 1, lambda exc: anthropic_error(503, f"provider error: {exc}")
    )
    text = "".join(
        [*fmt.start(), *fmt.piece(ProviderChunk(delta="Hi")), *fmt.failure(RuntimeError("gone"))]
    )
    sse = httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
    with pytest.raises(anthropic.APIStatusError) as exc:
        with sdk_serving(sse).messages.stream(model="auto", max_tokens=8, messages=USER) as s:
            list(s)
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "provider error: gone"},
    }


def test_a_plain_answer_and_an_error_are_parsed_by_the_sdk() -> None:
    calls = [
        ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "P"}'))
    ]
    msg = to_message(response(content="", tool_calls=calls, finish_reason="tool_calls"), info())
    answer = httpx.Response(200, json=msg.model_dump(mode="json"))
    got = sdk_serving(answer).messages.create(model="auto", max_tokens=64, messages=USER)
    assert got.model == "mistralai/mistral-large-2512" and got.stop_reason == "tool_use"
    [use] = got.content
    assert use.type == "tool_use" and use.input == {"city": "P"}
    assert got.model_extra is not None and got.model_extra["paretoserve"]["request_id"] == "req-1"
    refused = httpx.Response(400, json=anthropic_error(400, "top_k: unsupported", "top_k", "x"))
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk_serving(refused).messages.create(model="auto", max_tokens=64, messages=USER)
    assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert exc.value.body["error"]["param"] == "top_k"  # type: ignore[index]
