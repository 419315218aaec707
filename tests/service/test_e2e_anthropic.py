"""Anthropic's Messages API (`POST /v1/messages`) through the real app with the real `anthropic`
SDK (`base_url` = the app): plain and streamed text, a two-turn tool conversation (plain, and
streamed with the SDK assembling the tool input), the feedback key and cost headers, an image
routed to a vision model, and the 400 that names a field the router cannot honour, in
Anthropic's error shape.

The app is graphs.app:build_app with serve_config.yaml's args (simulated models, instant
answers, state in a temp dir) on a fresh local Ray (conftest's `local_app`).
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

pytestmark = pytest.mark.ray

LLAMA = "meta-llama/llama-3.1-8b-instruct"  # serve_config.yaml: no vision
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": WEATHER_SCHEMA,
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
PICTURE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe it."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    }
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, make_app_args, local_app):
    with local_app(make_app_args(tmp_path_factory.mktemp("anthropic-state"))) as url:
        yield url


@pytest.fixture(scope="module")
def claude(base_url: str):
    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def anthropic_error(err: anthropic.APIStatusError) -> dict[str, Any]:
    """The error object of an Anthropic-shaped error body (asserts the shape)."""
    body = err.body
    assert isinstance(body, dict) and body["type"] == "error", body
    error = body["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), error
    return error


def test_a_plain_message_with_headers_and_feedback(claude, http, config_models) -> None:
    raw = claude.messages.with_raw_response.create(
        model="auto", max_tokens=256, messages=QUESTION, metadata={"user_id": "u-1"}
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model in config_models
    [block] = msg.content
    assert block.type == "text" and block.text.startswith(f"[simulated {msg.model}]")
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    info = msg.model_extra["paretoserve"]
    rid = raw.headers["x-request-id"]
    assert rid == info["request_id"] and msg.id == f"msg_{rid}"
    assert float(raw.headers["x-paretoserve-cost-usd"]) == pytest.approx(info["cost_usd"])
    assert info["cost_usd"] > 0
    r = http.post("/v1/feedback", json={"request_id": rid, "reward": 0.8})
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    again = http.post("/v1/feedback", json={"request_id": rid, "reward": 0.8})
    assert again.json()["status"] == "duplicate"


def test_a_streamed_message(claude) -> None:
    with claude.messages.stream(
        model="auto", max_tokens=256, system="Answer briefly.", messages=QUESTION
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith(f"[simulated {final.model}]")
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_a_two_turn_tool_conversation(claude) -> None:
    first = claude.messages.create(model="auto", max_tokens=256, messages=QUESTION, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER_SCHEMA)

    # Second turn: the answer's content as the SDK returned it, then the tool's result.
    messages = [
        *QUESTION,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": '{"temp_c": 18}'}
            ],
        },
    ]
    second = claude.messages.create(
        model="auto", max_tokens=256, messages=messages, tools=[WEATHER]
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text.startswith(f"[simulated {second.model}]")
    assert second.usage.input_tokens > first.usage.input_tokens  # the tool turn grew it


def test_a_streamed_tool_call_assembled_by_the_sdk(claude) -> None:
    with claude.messages.stream(
        model="auto",
        max_tokens=256,
        messages=QUESTION,
        tools=[WEATHER, {"name": "get_time", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_message()
    assert "input_json" in kinds  # the input arrived in pieces
    assert final.stop_reason == "tool_use"
    [use] = final.content
    assert use.type == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER_SCHEMA)
    # the streamed answer goes back as the next turn, marked as a failed call
    messages = [
        *QUESTION,
        {"role": "assistant", "content": final.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "down", "is_error": True}
            ],
        },
    ]
    with claude.messages.stream(
        model="auto", max_tokens=256, messages=messages, tools=[WEATHER]
    ) as stream:
        text = "".join(stream.text_stream)
        answer = stream.get_final_message()
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert text.startswith(f"[simulated {answer.model}]")


def test_an_image_goes_only_to_a_vision_model(claude) -> None:
    answered = {
        claude.messages.create(model="auto", max_tokens=64, messages=PICTURE).model
        for _ in range(8)
    }
    assert answered and LLAMA not in answered
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model=LLAMA, max_tokens=64, messages=PICTURE)
    error = anthropic_error(err.value)
    assert error["type"] == "invalid_request_error" and "lacks vision" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"frobnicate": 1}, "frobnicate", "unsupported field"),
        ({"top_k": 40}, "top_k", "no top-k sampling"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", "thinking"),
    ],
)
def test_an_unsupported_field_is_a_400_naming_it(claude, extra, param, says) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="auto", max_tokens=64, messages=QUESTION, extra_body=extra)
    assert err.value.status_code == 400
    error = anthropic_error(err.value)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"].startswith(f"{param}: ") and says in error["message"]


def test_bad_values_are_422s_in_anthropics_shape(http) -> None:
    r = http.post("/v1/messages", json={"model": "auto", "messages": QUESTION})
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens", r.text
    body = {"model": "auto", "max_tokens": 9, "messages": QUESTION, "temperature": "hot"}
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 422 and r.json()["type"] == "error", r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
