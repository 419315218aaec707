"""OpenAI's chat contract beyond text, through the real app with the real `openai` SDK: a
two-turn tool conversation (plain, and streamed with the SDK assembling the tool call), a
strict json_schema answer (the SDK's own `parse`), image parts, passthrough fields, and the
400 that names a field the router cannot honour.

The app is graphs.app:build_app with serve_config.yaml's args (simulated models, instant
answers, state in a temp dir) on a fresh local Ray (conftest's `local_app`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.ray

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": WEATHER_PARAMS,
        "strict": True,
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"


class Source(BaseModel):
    title: str
    year: int


class Verdict(BaseModel):
    answer: str
    confidence: float
    tags: list[Literal["science", "history", "other"]]
    source: Source | None


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, make_app_args, local_app):
    with local_app(make_app_args(tmp_path_factory.mktemp("tools-state"))) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(base_url: str):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def _tool_result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 18, "sky": "cloudy"}'}


def test_a_two_turn_tool_conversation(sdk, config_models) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=QUESTION, tools=[WEATHER]
    )
    first = raw.parse()
    choice = first.choices[0]
    assert first.model in config_models
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    info = first.model_extra["paretoserve"]
    assert first.usage.completion_tokens > 0 and info["cost_usd"] > 0
    assert float(raw.headers["x-paretoserve-cost-usd"]) == pytest.approx(info["cost_usd"])

    # Second turn: the assistant message as the SDK returned it, then the tool's result.
    messages = [*QUESTION, choice.message, _tool_result(call.id)]
    second = sdk.chat.completions.create(model="auto", messages=messages, tools=[WEATHER])
    answer = second.choices[0]
    assert answer.finish_reason == "stop" and answer.message.tool_calls is None
    assert answer.message.content.startswith(f"[simulated {second.model}]")
    # the prompt grew by the tool call and its result
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_streamed_tool_conversation_assembled_by_the_sdk(sdk) -> None:
    with sdk.chat.completions.stream(
        model="auto",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        stream_options={"include_usage": True},
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in events
    assert "tool_calls.function.arguments.done" in events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER_PARAMS)
    assert call.function.parsed_arguments == args  # strict tools: the SDK parsed them
    assert final.usage is not None and final.usage.completion_tokens > 0

    # Second turn, streamed: the assembled message goes back as is (with the SDK's own
    # `parsed_arguments` and `index`), and the answer is text.
    messages = [*QUESTION, choice.message, _tool_result(call.id)]
    with sdk.chat.completions.stream(model="auto", messages=messages, tools=[WEATHER]) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls in (None, [])
    assert (
        text.startswith(f"[simulated {final.model}]") and text == final.choices[0].message.content
    )


def test_a_named_tool_choice_calls_that_function(sdk) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    c = sdk.chat.completions.create(
        model="auto",
        messages=QUESTION,
        tools=[WEATHER, other],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert c.choices[0].message.tool_calls[0].function.name == "get_time"


def test_a_strict_json_schema_answer_validates(sdk) -> None:
    completion = sdk.chat.completions.parse(
        model="auto",
        messages=[{"role": "user", "content": "Who discovered penicillin, and when?"}],
        response_format=Verdict,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Verdict)  # the SDK validated it with the model
    jsonschema.validate(json.loads(message.content), Verdict.model_json_schema())
    # and a hand-written strict schema, plain JSON
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 3}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    c = sdk.chat.completions.create(model="auto", messages=QUESTION, response_format=fmt)
    jsonschema.validate(json.loads(c.choices[0].message.content), schema)
    obj = sdk.chat.completions.create(
        model="auto", messages=QUESTION, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


@pytest.mark.parametrize("url", [PNG, "https://example.com/cat.png"])
def test_image_parts_are_accepted(sdk, url: str) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    c = sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": content}])
    assert c.choices[0].message.content.startswith(f"[simulated {c.model}]")
    assert c.usage.prompt_tokens > 85  # an image is billed (85 tokens) besides the text


def test_passthrough_fields_are_accepted(sdk) -> None:
    c = sdk.chat.completions.create(
        model="auto",
        messages=QUESTION,
        frequency_penalty=0.5,
        presence_penalty=0.1,
        store=False,
        seed=7,
        user="u-1",
        metadata={"team": "search"},
        logprobs=True,
        top_logprobs=2,
        extra_body={"verbosity": "low"},
    )
    assert c.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"extra_body": {"top_k": 40}}, "top_k", "unsupported_parameter"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_value"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "unsupported_parameter"),
    ],
)
def test_an_unsupported_field_is_a_400_naming_it(sdk, extra, param, code) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="auto", messages=QUESTION, **extra)
    err = exc.value
    assert err.status_code == 400 and err.param == param and err.code == code
    assert param in err.message


def test_the_400_has_openais_error_shape(http, openai_error) -> None:
    body = {"model": "auto", "messages": QUESTION, "logit_bias": {"1": 1}, "top_k": 5}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = openai_error(r)
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error",
        "top_k",
        "unsupported_parameter",
    )
    assert err["message"].startswith("top_k: unsupported field")
    # a wrong type stays a 422, and our own extension's typo too
    r = http.post("/v1/chat/completions", json={"messages": QUESTION, "temperature": "hot"})
    assert r.status_code == 422 and openai_error(r)["param"] == "temperature"
    r = http.post("/v1/chat/completions", json={"messages": QUESTION, "paretoserve": {"x": 1}})
    assert r.status_code == 422 and openai_error(r)["param"] == "paretoserve.x"


# ---- capability-aware routing (serve_config.yaml: llama declares no vision) -----------------

LLAMA = "meta-llama/llama-3.1-8b-instruct"
PICTURE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe it."},
            {"type": "image_url", "image_url": {"url": PNG}},
        ],
    }
]


def test_image_requests_go_only_to_vision_models(sdk, http, admin_headers) -> None:
    answered = {
        sdk.chat.completions.create(model="auto", messages=PICTURE).model for _ in range(12)
    }
    assert answered and LLAMA not in answered
    why = http.post(
        "/admin/explain",
        json={"prompt": "Describe it.", "requires": ["vision"]},
        headers=admin_headers,
    ).json()
    assert why[LLAMA]["eligible"] is False
    assert why[LLAMA]["reason"] == "lacks vision (capabilities: json_schema, tools)"
    text = http.post("/admin/explain", json={"prompt": "Describe it."}, headers=admin_headers)
    assert text.json()[LLAMA]["eligible"] is True  # text alone: llama may serve it


def test_a_request_no_allowed_model_can_serve_is_a_400_naming_each(sdk, openai_error) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(
            model="auto", messages=PICTURE, extra_body={"paretoserve": {"allowed_models": [LLAMA]}}
        )
    body = openai_error(err.value.response)
    assert body["code"] == "no_eligible_model"
    assert f"{LLAMA}: lacks vision" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=LLAMA, messages=PICTURE)
    assert "lacks vision" in openai_error(err.value.response)["message"]


def test_a_tool_request_for_a_model_without_tools_is_a_400(sdk, http, admin_headers) -> None:
    spec = {"id": "text-only", "input_per_m": 0.05, "output_per_m": 0.05, "capabilities": []}
    assert http.post("/admin/models", json=spec, headers=admin_headers).status_code == 201
    try:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(
                model="auto",
                messages=QUESTION,
                tools=[WEATHER],
                extra_body={"paretoserve": {"allowed_models": ["text-only"]}},
            )
        message = err.value.response.json()["error"]["message"]
        assert "text-only: lacks tools (capabilities: none)" in message
    finally:
        http.delete("/admin/models/text-only", headers=admin_headers)
