"""HTTP and provider bodies: what is accepted, what is a 422, and the shapes we emit."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.method.registry import ModelSpec
from core.service.protocol import (
    AddModelRequest,
    BudgetRequest,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    Delta,
    ErrorBody,
    ExplainRequest,
    FeedbackRequest,
    FunctionCall,
    FunctionCallDelta,
    ParetoserveInfo,
    ProviderRequest,
    ProviderResponse,
    RepriceRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
    chat_refusal,
    error_body,
)

USER = {"role": "user", "content": "hi"}
IMG = "https://example.com/cat.png"


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [USER], **fields})


def bad_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {".".join(map(str, e["loc"])) for e in exc.value.errors()}


def test_minimal_request_defaults() -> None:
    req = chat()
    assert req.model == "auto" and req.stream is False and req.paretoserve is None
    assert req.output_token_limit is None and req.include_usage is False


def test_known_fields_are_typed_and_their_errors_stay_422() -> None:
    with pytest.raises(ValidationError) as exc:
        chat(stream="yes")
    assert bad_fields(exc) == {"stream"}
    assert chat_refusal(exc.value.errors()) is None  # a wrong type is a 422, not a refusal
    with pytest.raises(ValidationError) as exc:
        chat(temperature="0.5")
    assert "temperature" in bad_fields(exc)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"n": 2}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"paretoserve": {"max_blended_per_m": 0}}, "paretoserve.max_blended_per_m"),
        ({"paretoserve": {"allowed_models": []}}, "paretoserve.allowed_models"),
        ({"paretoserve": {"alowed_models": ["x"]}}, "paretoserve.alowed_models"),
    ],
)
def test_bad_requests_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"messages": [USER], **fields})
    assert field in bad_fields(exc)


def test_n_one_is_fine_and_n_two_says_why() -> None:
    assert chat(n=1).n == 1
    with pytest.raises(ValidationError, match="only n=1 is supported") as exc:
        chat(n=2)
    refused = chat_refusal(exc.value.errors())
    assert refused is not None and refused.error.param == "n"
    assert refused.error.code == "unsupported_value"


def test_bad_messages() -> None:
    for msg in (
        {"role": "robot", "content": "x"},
        {"role": "user"},
        {"role": "user", "content": 3},
        {"role": "user", "content": None},
        {"role": "assistant"},
        {"role": "system", "content": [{"type": "text"}]},
        {"role": "user", "content": [{"type": "text", "text": "a", "image_url": {"url": IMG}}]},
    ):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"messages": [msg]})


def test_prompt_text_is_the_last_user_message() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ]
        }
    )
    assert req.prompt_text() == "a\nb"
    assert req.messages[0].text() == "be brief"


def test_prompt_text_falls_back_to_all_messages() -> None:
    req = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "system", "content": "sys"}, {"role": "assistant", "content": "x"}]}
    )
    assert req.prompt_text() == "sys\nx"
    blank_user = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "  "}]}
    )
    assert blank_user.prompt_text() == "d\n  "


def test_max_completion_tokens_wins_and_stream_options() -> None:
    req = chat(
        max_tokens=10, max_completion_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    assert req.output_token_limit == 20 and req.include_usage


def test_routing_options() -> None:
    opts = chat(paretoserve={"max_blended_per_m": 1.5, "allowed_models": ["a", "b"]}).paretoserve
    assert opts is not None and opts.max_blended_per_m == 1.5 and opts.allowed_models == ["a", "b"]


def test_feedback_validation() -> None:
    ok = FeedbackRequest.model_validate({"request_id": "r1", "reward": 1})
    assert ok.reward == 1.0
    for body in (
        {"request_id": "r1", "reward": float("nan")},
        {"request_id": "r1", "reward": float("inf")},
        {"request_id": "r1", "reward": 1.01},
        {"request_id": "r1", "reward": -0.01},
        {"request_id": "r1", "reward": "0.5"},
        {"request_id": "r1", "reward": True},
        {"request_id": "", "reward": 0.5},
        {"request_id": "x" * 201, "reward": 0.5},
        {"request_id": "r1"},
        {"request_id": "r1", "reward": 0.5, "rewrad": 0.5},
    ):
        with pytest.raises(ValidationError):
            FeedbackRequest.model_validate(body)


def test_feedback_nan_from_json_text() -> None:
    # Python's json module (what web frameworks use) turns the NaN literal into a float.
    body = json.loads('{"request_id": "r1", "reward": NaN}')
    with pytest.raises(ValidationError, match="finite"):
        FeedbackRequest.model_validate(body)
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate_json('{"request_id": "r1", "reward": NaN}')


def test_admin_bodies() -> None:
    spec = AddModelRequest.model_validate(
        {"id": "m", "input_per_m": 1.0, "output_per_m": 2.0, "speed": "fast"}
    ).to_spec()
    assert type(spec) is ModelSpec and spec.speed.value == "fast"
    with pytest.raises(ValidationError):
        AddModelRequest.model_validate({"id": "m", "input_per_m": 0, "output_per_m": 2.0})
    assert RepriceRequest(output_per_m=3.0).input_per_m is None
    for body in ({}, {"input_per_m": 0.0}, {"input_per_m": float("inf")}):
        with pytest.raises(ValidationError):
            RepriceRequest.model_validate(body)
    assert BudgetRequest(usd_per_request=0.001).usd_per_request == 0.001
    for value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            BudgetRequest(usd_per_request=value)


# ---- admin number ranges (docs/reliability.md, "Admin number ranges") --------------------

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def _refused(model: type, body: dict) -> ErrorBody:
    """Validate `body` as JSON text (as the Ingress receives it) and return the 422 body."""
    with pytest.raises(ValidationError) as exc:
        model.model_validate_json(json.dumps(body))  # json.dumps writes NaN / Infinity
    return ErrorBody.from_validation(exc.value)


@pytest.mark.parametrize("value", [1e-9, 2.35e-4, 6.64e-4, 0.05, 1, 4.0, 100.0])
def test_budget_in_range_is_accepted(value: float) -> None:
    assert BudgetRequest.model_validate_json(json.dumps({"usd_per_request": value})) == (
        BudgetRequest(usd_per_request=value)
    )


@pytest.mark.parametrize("value", [1e308, 100.000001, 1e3, -1.0, 0.0, 1e-10, *NON_FINITE])
def test_budget_out_of_range_is_refused_naming_the_field(value: float) -> None:
    err = _refused(BudgetRequest, {"usd_per_request": value}).error
    assert err.param == "usd_per_request" and err.code == "invalid_value"
    assert err.message.startswith("usd_per_request: ")


def test_budget_overflowing_json_number_is_refused() -> None:
    """json reads 1e309 as inf: refused as non-finite, not accepted as a huge budget."""
    with pytest.raises(ValidationError, match="finite"):
        BudgetRequest.model_validate(json.loads('{"usd_per_request": 1e309}'))


@pytest.mark.parametrize("field", ["input_per_m", "output_per_m"])
@pytest.mark.parametrize("value", [1e-6, 0.1, 10.0, 600.0, 10_000.0])
def test_prices_in_range_are_accepted(field: str, value: float) -> None:
    body = {"id": "m", "input_per_m": 1.0, "output_per_m": 1.0, field: value}
    assert getattr(AddModelRequest.model_validate_json(json.dumps(body)), field) == value
    assert getattr(RepriceRequest.model_validate_json(json.dumps({field: value})), field) == value


@pytest.mark.parametrize("field", ["input_per_m", "output_per_m"])
@pytest.mark.parametrize("value", [1e308, 10_000.5, 1e5, 1e6, -1.0, 0.0, 1e-7, *NON_FINITE])
def test_prices_out_of_range_are_refused_naming_the_field(field: str, value: float) -> None:
    add = {"id": "m", "input_per_m": 1.0, "output_per_m": 1.0, field: value}
    assert _refused(AddModelRequest, add).error.param == field
    assert _refused(RepriceRequest, {field: value}).error.param == field
    with pytest.raises(ValidationError):  # the registry's own spec refuses it too
        ModelSpec.model_validate({"id": "m", "input_per_m": 1.0, "output_per_m": 1.0, field: value})


def test_context_length_range() -> None:
    spec = {"id": "m", "input_per_m": 1.0, "output_per_m": 1.0}
    for ok in (1, 128_000, 1_048_576, 10_000_000, 100_000_000):
        assert AddModelRequest.model_validate({**spec, "context_length": ok}).context_length == ok
    for bad in (0, -1, 100_000_001, 10**308):
        err = _refused(AddModelRequest, {**spec, "context_length": bad}).error
        assert err.param == "context_length", bad


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("reward_scale", [0, 0.25, 1], [-0.1, 1.01, 1e308]),
        ("quality", [0, 0.5, 1], [-0.1, 1.01, 1e308]),
        ("reward_value", [0, 0.75, 1], [-0.1, 1.01, 1e308]),
        ("error_rate", [0, 0.2, 1], [-0.1, 1.01, 1e308]),
        ("timeout_rate", [0, 0.2, 1], [-0.1, 1.01, 1e308]),
        ("rate_limit_rate", [0, 0.05, 1], [-0.1, 1.01, 1e308]),
        ("latency_spike_rate", [0, 0.5, 1], [-0.1, 1.01, 1e308]),
        ("error_status", [500, 503, 599], [499, 600, 10**308]),
        ("timeout_s", [0, 0.05, 10, 600], [-1, 600.5, 1e308]),
        ("retry_after_s", [0, 1, 30, 600], [-1, 601, 1e308]),
        ("latency_spike_s", [0, 3, 600], [-1, 601, 1e308]),
    ],
)
def test_simulation_numbers_have_ranges(field: str, good: list, bad: list) -> None:
    for value in good:
        body = RepriceRequest.model_validate_json(json.dumps({"simulation": {field: value}}))
        assert getattr(body.simulation, field) == value
    floats = [] if field == "error_status" else NON_FINITE
    for value in [*bad, *floats]:
        err = _refused(RepriceRequest, {"simulation": {field: value}}).error
        assert err.param == f"simulation.{field}", value
        add = {"id": "m", "input_per_m": 1.0, "output_per_m": 1.0, "simulation": {field: value}}
        assert _refused(AddModelRequest, add).error.param == f"simulation.{field}", value


def test_max_blended_price_ceiling_range() -> None:
    explain = {"prompt": "hi", "paretoserve": {"max_blended_per_m": 10_000.0}}
    assert ExplainRequest.model_validate_json(json.dumps(explain)).paretoserve is not None
    for bad in (0.0, -1.0, 10_000.5, 1e308, *NON_FINITE):
        body = {"prompt": "hi", "paretoserve": {"max_blended_per_m": bad}}
        assert _refused(ExplainRequest, body).error.param == "paretoserve.max_blended_per_m"


def test_admin_ranges_are_documented_in_the_schema() -> None:
    """The ranges show in /openapi.json: as bounds and in each field's description."""
    budget = BudgetRequest.model_json_schema()["properties"]["usd_per_request"]
    assert (budget["minimum"], budget["maximum"]) == (1e-9, 100.0)
    assert "[1e-9, 100]" in budget["description"]
    spec = AddModelRequest.model_json_schema()
    for field in ("input_per_m", "output_per_m"):
        prop = spec["properties"][field]
        assert (prop["minimum"], prop["maximum"]) == (1e-6, 10_000.0)
        assert "[1e-6, 10000]" in prop["description"]
    sim = spec["$defs"]["SimBehaviour"]["properties"]
    for field, prop in sim.items():
        assert "maximum" in prop or "anyOf" in prop, field
        assert "in [" in prop["description"], field


def test_error_body_shape() -> None:
    assert error_body("nope") == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}
    }
    with pytest.raises(ValidationError) as exc:
        chat(temperature=3)
    body = ErrorBody.from_validation(exc.value).model_dump()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "temperature"
    assert "temperature" in body["error"]["message"]


def _response() -> ProviderResponse:
    return ProviderResponse(
        model_id="m",
        content="hello",
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        latency_s=0.1,
    )


def test_completion_response_build() -> None:
    info = ParetoserveInfo(request_id="abc", cost_usd=1e-5, routed=True, forced=False, dual=0.2)
    body = ChatCompletionResponse.build(_response(), info, created=7).model_dump()
    assert body["id"] == "chatcmpl-abc" and body["object"] == "chat.completion"
    assert body["created"] == 7 and body["model"] == "m"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["paretoserve"]["request_id"] == "abc"
    assert body["paretoserve"]["recorded_reward"] is None


def test_chunk_sse_omits_unset_delta_fields() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-abc", created=1, model="m", choices=[ChunkChoice(delta=Delta(content="he"))]
    )
    text = chunk.sse()
    assert text.startswith("data: ") and text.endswith("\n\n")
    data = json.loads(text[len("data: ") :])
    assert data["object"] == "chat.completion.chunk"
    assert data["choices"] == [{"index": 0, "delta": {"content": "he"}, "finish_reason": None}]
    assert "usage" not in data


def test_provider_request_from_chat() -> None:
    spec = ModelSpec(id="m", provider_model="up/m", input_per_m=1.0, output_per_m=1.0)
    req = ProviderRequest.from_chat("r1", chat(max_tokens=5, stop="x", temperature=0.3), spec)
    assert req.model_id == "m" and req.upstream_model == "up/m"
    assert req.messages == [USER] and req.prompt_text == "hi"
    assert req.max_tokens == 5 and req.stop_list() == ["x"] and req.temperature == 0.3
    assert Usage(prompt_tokens=1, completion_tokens=2).total_tokens == 3
    with pytest.raises(ValidationError):
        Usage(prompt_tokens=-1, completion_tokens=0)


def test_patch_body_takes_prices_and_or_simulation() -> None:
    both = RepriceRequest.model_validate({"input_per_m": 2.0, "simulation": {"error_rate": 1}})
    assert both.reprices and both.sets_simulation and both.simulation.error_rate == 1.0
    only_sim = RepriceRequest.model_validate({"simulation": {"reward_scale": 0.25}})
    assert not only_sim.reprices and only_sim.simulation.reward_scale == 0.25
    clear = RepriceRequest.model_validate({"simulation": None})  # null clears it
    assert clear.sets_simulation and clear.simulation is None
    assert not RepriceRequest(input_per_m=1.0).sets_simulation
    for body, loc in (
        ({"simulation": {"error_rate": 1.5}}, ("simulation", "error_rate")),
        ({"simulation": {"error_rate": "1"}}, ("simulation", "error_rate")),
        ({"simulation": {"nope": 1}}, ("simulation", "nope")),
        ({"simulation": {"error_rate": 0.7, "rate_limit_rate": 0.7}}, ("simulation",)),
        ({"price": 1.0}, ("price",)),
    ):
        with pytest.raises(ValidationError) as exc:
            RepriceRequest.model_validate(body)
        assert exc.value.errors()[0]["loc"] == loc, body


def test_provider_request_carries_the_spec() -> None:
    from core.method.registry import SimBehaviour

    spec = ModelSpec(
        id="m",
        provider_model="up/m",
        input_per_m=1.0,
        output_per_m=1.0,
        base_url="http://h/v1",
        simulation=SimBehaviour(error_rate=0.5),
    )
    req = ProviderRequest.from_chat("r1", chat(), spec)
    assert req.spec == spec and req.attempt == 0
    # it survives the trip between processes as JSON
    assert ProviderRequest.model_validate_json(req.model_dump_json()) == req
    other = ModelSpec(id="n", input_per_m=2.0, output_per_m=2.0)
    moved = ProviderRequest.for_model(req.model_copy(update={"attempt": 2}), other)
    assert (moved.model_id, moved.upstream_model, moved.spec, moved.attempt) == ("n", "n", other, 0)
    assert moved.messages == req.messages
    with pytest.raises(ValidationError, match="is not spec.id"):
        ProviderRequest.model_validate({**req.model_dump(), "model_id": "other"})


def test_paretoserve_info_names_the_failed_models() -> None:
    info = ParetoserveInfo(
        request_id="r", cost_usd=0.0, routed=True, forced=False, dual=0.0, fallback_from=["a"]
    )
    assert info.model_dump()["fallback_from"] == ["a"]
    plain = ParetoserveInfo(request_id="r", cost_usd=0.0, routed=True, forced=False, dual=0.0)
    assert plain.fallback_from is None


# ---- the OpenAI contract: tools, tool messages, images, response formats, refusals ----------

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
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
}
TOOL_TURN = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
]


def refusal_of(body: dict) -> tuple[str | None, str | None, str]:
    """(param, code, message) of the 400 a chat body gets; fails if it is not refused."""
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"messages": [USER], **body})
    refused = chat_refusal(exc.value.errors())
    assert refused is not None, exc.value.errors()
    return refused.error.param, refused.error.code, refused.error.message


@pytest.mark.parametrize(
    ("body", "param", "code", "says"),
    [
        ({"foo": 1}, "foo", "unsupported_parameter", "unsupported field"),
        ({"top_k": 40}, "top_k", "unsupported_parameter", "refuses it instead of dropping"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter", "send `tools`"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter", "legacy"),
        ({"audio": {"voice": "alloy"}}, "audio", "unsupported_parameter", "audio"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter", "web"),
        ({"n": 3}, "n", "unsupported_value", "only n=1"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value", "audio"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0", None, "custom"),
        ({"response_format": {"type": "grammar"}}, "response_format.type", None, "grammar"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x", None, ""),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}},
            "tool_choice",
            "unsupported_value",
            "allowed_tools",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "x": {}}]}]},
            "messages.0.content.0.type",
            "unsupported_value",
            "input_audio",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a", "cache_control": {}}],
                    }
                ]
            },
            "messages.0.content.0.cache_control",
            "unsupported_parameter",
            "unsupported field",
        ),
        (
            {"messages": [{"role": "function", "name": "f", "content": "x"}]},
            "messages.0.role",
            "unsupported_value",
            "tool",
        ),
        (
            {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": ""}}]},
            "messages.0.function_call",
            "unsupported_parameter",
            "legacy",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]},
            "messages.0.audio",
            "unsupported_parameter",
            "audio",
        ),
    ],
)
def test_fields_the_router_cannot_honour_are_refused_naming_them(
    body: dict, param: str, code: str | None, says: str
) -> None:
    got_param, got_code, message = refusal_of(body)
    assert got_param == param
    if code is not None:
        assert got_code == code
    assert message.startswith(f"{param}: ") and says in message


def test_our_own_extension_keeps_its_422_and_null_fields_are_absent() -> None:
    with pytest.raises(ValidationError) as exc:
        chat(paretoserve={"alowed_models": ["x"]})
    assert chat_refusal(exc.value.errors()) is None
    # null means absent, as in OpenAI's API (SDKs and frameworks send explicit nulls)
    req = chat(audio=None, functions=None, tools=None, response_format=None, stream=None)
    assert req.tools is None and req.passthrough() == {} and req.stream is False
    msg = {"role": "user", "content": "x", "audio": None, "function_call": None}
    assert ChatCompletionRequest.model_validate({"messages": [msg]}).messages[0].text() == "x"


def test_passthrough_allow_list_is_kept_verbatim() -> None:
    fields = {
        "frequency_penalty": -0.5,
        "presence_penalty": 1,
        "logit_bias": {"50256": -100},
        "service_tier": "flex",
        "store": False,
        "reasoning_effort": "low",
        "verbosity": "low",
        "prediction": {"type": "content", "content": "draft"},
        "modalities": ["text"],
        "prompt_cache_key": "k",
        "safety_identifier": "u-1",
    }
    req = chat(**fields)
    assert req.passthrough() == fields
    assert set(fields) <= set(ChatCompletionRequest.PASSTHROUGH_FIELDS)
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    assert ProviderRequest.from_chat("r", req, spec).passthrough == fields
    with pytest.raises(ValidationError) as exc:
        chat(frequency_penalty=3.0)  # typed: a bad value is a 422
    assert chat_refusal(exc.value.errors()) is None


def test_tools_and_tool_choice() -> None:
    req = chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert req.tools is not None and req.tools[0].type == "function"
    assert req.tools[0].function.name == "get_weather" and req.tools[0].function.strict is True
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat(tools=[WEATHER], tool_choice=named).tool_choice.function.name == "get_weather"
    for choice in ("none", "auto"):
        assert chat(tool_choice=choice).tool_choice == choice
    for body, field in (
        ({"tools": [WEATHER], "tool_choice": {**named, "function": {"name": "nope"}}}, "nope"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
    ):
        with pytest.raises(ValidationError, match=field) as exc:
            chat(**body)
        assert chat_refusal(exc.value.errors()) is None, body  # invalid, not unsupported: 422


def test_a_tool_conversation_and_its_rules() -> None:
    req = ChatCompletionRequest.model_validate({"messages": TOOL_TURN, "tools": [WEATHER]})
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.content is None and assistant.tool_calls == [
        ToolCall(
            id="call_1",
            function=FunctionCall(name="get_weather", arguments='{"city": "Paris", "unit": "c"}'),
        )
    ]
    assert tool.tool_call_id == "call_1" and tool.text() == "22 C, sunny"
    # a tool message is not a user turn: the last user message's text is embedded
    assert req.prompt_text() == "Weather in Paris?"
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    sent = ProviderRequest.from_chat("r", req, spec)
    assert sent.messages == [
        TOOL_TURN[0],
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
    ]
    assert sent.tools == [WEATHER] and sent.tool_choice is None
    for messages in (
        [TOOL_TURN[0], {"role": "tool", "content": "x"}],  # no tool_call_id
        [TOOL_TURN[0], TOOL_TURN[1], {**TOOL_TURN[2], "tool_call_id": "call_9"}],  # no such call
        [TOOL_TURN[0], TOOL_TURN[2]],  # answers no assistant tool call
        [{"role": "user", "content": "x", "tool_calls": [CALL]}],
        [{"role": "user", "content": "x", "tool_call_id": "call_1"}],
        [{"role": "assistant", "content": None, "tool_calls": []}],
        [{"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]}],
    ):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"messages": messages})


def test_tool_choice_goes_upstream_only_with_tools() -> None:
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    bare = ProviderRequest.from_chat("r", chat(tool_choice="auto", parallel_tool_calls=True), spec)
    assert (bare.tools, bare.tool_choice, bare.parallel_tool_calls) == (None, None, None)
    named = {"type": "function", "function": {"name": "get_weather"}}
    full = ProviderRequest.from_chat(
        "r", chat(tools=[WEATHER], tool_choice=named, parallel_tool_calls=False), spec
    )
    assert (full.tool_choice, full.parallel_tool_calls) == (named, False)
    assert full.function("get_weather") == WEATHER["function"] and full.function("x") is None


@pytest.mark.parametrize(
    "url",
    [IMG, "http://10.0.0.1/x.jpg", "data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,"],
)
def test_image_parts_are_accepted_and_not_embedded(url: str) -> None:
    content = [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
        {"type": "text", "text": "this picture?"},
    ]
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": content}]})
    parts = req.messages[0].parts()
    assert [p.type for p in parts] == ["text", "image_url", "text"]
    assert parts[1].image_url is not None and parts[1].image_url.url == url
    assert req.prompt_text() == "What is in\nthis picture?"  # images are not embedded
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    assert ProviderRequest.from_chat("r", req, spec).messages[0]["content"] == content


@pytest.mark.parametrize(
    "url", ["ftp://x/y.png", "javascript:alert(1)", "data:text/html;base64,AA==", "cat.png"]
)
def test_bad_image_urls_are_422(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": content}]})
    assert chat_refusal(exc.value.errors()) is None


def test_images_only_in_user_messages() -> None:
    image = {"type": "image_url", "image_url": {"url": IMG}}
    for role in ("system", "assistant", "developer"):
        with pytest.raises(ValidationError, match="cannot carry"):
            ChatCompletionRequest.model_validate({"messages": [{"role": role, "content": [image]}]})


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    req = chat(response_format=fmt)
    assert req.response_format is not None and req.response_format.type == "json_schema"
    assert req.response_format.json_schema is not None
    assert req.response_format.json_schema.schema_ == schema
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    assert ProviderRequest.from_chat("r", req, spec).response_format == fmt
    assert chat(response_format={"type": "json_object"}).response_format.type == "json_object"
    assert chat(response_format={"type": "text"}).response_format.type == "text"
    for bad in (
        {"type": "json_schema"},
        {"type": "json_object", "json_schema": {"name": "a", "schema": {}}},
        {"type": "json_schema", "json_schema": {"schema": {}}},
    ):
        with pytest.raises(ValidationError):
            chat(response_format=bad)


def test_logprobs_seed_user_metadata() -> None:
    req = chat(logprobs=True, top_logprobs=3, seed=7, user="u", metadata={"team": "a"})
    spec = ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0)
    sent = ProviderRequest.from_chat("r", req, spec)
    assert (sent.logprobs, sent.top_logprobs, sent.seed, sent.user, sent.metadata) == (
        True,
        3,
        7,
        "u",
        {"team": "a"},
    )
    for bad in (
        {"top_logprobs": 2},  # needs logprobs
        {"logprobs": True, "top_logprobs": 21},
        {"metadata": {"k": 1}},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"seed": "1"},
    ):
        with pytest.raises(ValidationError):
            chat(**bad)


def test_tool_call_answers_and_chunks_have_openais_shape() -> None:
    info = ParetoserveInfo(request_id="abc", cost_usd=1e-5, routed=True, forced=False, dual=0.2)
    call = ToolCall.model_validate(CALL)
    resp = ProviderResponse(
        model_id="m",
        content="",
        tool_calls=[call],
        logprobs={"content": [], "refusal": None},
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=3, completion_tokens=9),
        latency_s=0.1,
    )
    body = ChatCompletionResponse.build(resp, info, created=7).model_dump(mode="json")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
            "finish_reason": "tool_calls",
            "logprobs": {"content": [], "refusal": None},
        }
    ]
    head = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="f", arguments="")
    )
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChunkChoice(delta=Delta(tool_calls=[head]))]
    )
    data = json.loads(chunk.sse()[len("data: ") :])
    assert data["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
        ]
    }
