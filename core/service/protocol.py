"""Pydantic bodies of the HTTP API and of the provider clients.

HTTP side: OpenAI's chat-completions schema as far as the router honours it (text and image
content parts, function tools and tool calls, tool messages, response formats, logprobs; the
building blocks are in core/service/openai_schema.py), plus our `paretoserve` extension,
feedback and admin bodies, and OpenAI's error shape. A chat field the router cannot honour is
refused with a 400 naming it (`chat_refusal`), never dropped; a documented allow-list of
harmless OpenAI fields (`PASSTHROUGH_FIELDS`) is passed verbatim to OpenAI-compatible
upstreams. Known scalars are strict, so `"stream": "yes"` or `"temperature": "0.5"` is a 422,
not a silent coercion. Our own bodies (feedback, admin, the `paretoserve` extension) forbid
unknown fields too, with a 422, so a typo is an error, not a no-op.

Provider side: `ProviderRequest` in, `ProviderResponse` / `ProviderChunk` out, shared by the
simulated, OpenAI and Anthropic clients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from core.method.config import BUDGET_RANGE_DOC, MAX_BUDGET_USD, MIN_BUDGET_USD
from core.method.registry import (
    MAX_PRICE_PER_M,
    MIN_PRICE_PER_M,
    Capability,
    ModelSpec,
    SimBehaviour,
)
from core.method.tenants import MAX_PERIOD_BUDGET_USD, MAX_USD_PER_REQUEST, Period
from core.service.openai_schema import (
    MAX_TOOLS,
    REFUSAL_TYPES,
    UNSUPPORTED_PARAMETER,
    ContentPart,
    FunctionCall,
    FunctionCallDelta,
    FunctionDefinition,
    FunctionTool,
    ImageURL,
    JSONSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    OpenAIObject,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    echoed,
    refusal_reason,
    unsupported_value,
)

__all__ = [  # the schema's building blocks, re-exported for the service and its tests
    "ContentPart",
    "FunctionCall",
    "FunctionCallDelta",
    "FunctionDefinition",
    "FunctionTool",
    "ImageURL",
    "JSONSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCall",
    "ToolCallDelta",
]

# Every number an admin (or a client) sends has a documented range (docs/reliability.md,
# "Admin number ranges"), and finite numbers only: Python's json module accepts NaN/Infinity
# literals (and reads 1e309 as inf), so a JSON body can carry them; they must fail validation
# at the HTTP boundary rather than poison the bandit or the pacer.
Price = Annotated[StrictFloat, Field(ge=MIN_PRICE_PER_M, le=MAX_PRICE_PER_M, allow_inf_nan=False)]
PriceCeiling = Annotated[StrictFloat, Field(gt=0.0, le=MAX_PRICE_PER_M, allow_inf_nan=False)]
Budget = Annotated[StrictFloat, Field(ge=MIN_BUDGET_USD, le=MAX_BUDGET_USD, allow_inf_nan=False)]
Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = str  # "stop" | "length" | "tool_calls" | "content_filter"; providers add more
Penalty = Annotated[StrictFloat, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
Bias = Annotated[StrictFloat, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]


# ---------------------------------------------------------------- OpenAI chat request


_OpenAIBody = OpenAIObject  # unknown fields refused (400), null = absent


class _OwnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_OpenAIBody):
    """One message. `content` is a string or a list of parts (`text`; `image_url` in user
    messages; `refusal` in assistant messages) and may be null in an assistant message that
    carries `tool_calls`; a `tool` message answers one of the previous assistant message's
    tool calls by its `tool_call_id`."""

    role: Role
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    tool_call_id: StrictStr | None = None
    refusal: StrictStr | None = None
    annotations: list[Any] | None = echoed("an answer's annotations")
    parsed: Any = echoed("the openai SDK's parsed content")

    @field_validator("role", mode="before")
    @classmethod
    def _no_function_role(cls, role: Any) -> Any:
        if role == "function":
            raise unsupported_value(
                "legacy function messages are not supported; send `tool` messages"
            )
        return role

    @model_validator(mode="after")
    def _fits_the_role(self) -> ChatMessage:
        role = self.role
        if self.content is None and not (role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError(
                "content is required (an assistant message may omit it when it has tool_calls)"
            )
        if self.tool_calls is not None and role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.refusal is not None and role != "assistant":
            raise ValueError("only assistant messages carry a refusal")
        if (self.tool_call_id is not None) != (role == "tool"):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        allowed = {"user": ("text", "image_url"), "assistant": ("text", "refusal")}.get(
            role, ("text",)
        )
        for part in self.parts():
            if part.type not in allowed:
                raise ValueError(f"a {role} message cannot carry a {part.type!r} part")
        return self

    def parts(self) -> list[ContentPart]:
        """The content as parts (none for string or null content)."""
        return self.content if isinstance(self.content, list) else []

    def text(self) -> str:
        """The plain text of the message: text parts joined by newlines; images, refusals and
        tool calls are not text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text is not None)


class StreamOptions(_OpenAIBody):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = Field(
        None, description="accepted; the router's stream never carries obfuscation padding"
    )


class RoutingOptions(_OwnBody):
    """Our extension: per-request routing constraints."""

    max_blended_per_m: PriceCeiling | None = Field(
        None,
        description="only models whose blended list price (US$/M tokens) is at most this; "
        "in (0, 10000] (no model may be priced above 10000)",
    )
    allowed_models: list[StrictStr] | None = Field(
        None, min_length=1, description="only these model ids"
    )


Metadata = Annotated[
    dict[Annotated[StrictStr, Field(max_length=64)], Annotated[StrictStr, Field(max_length=512)]],
    Field(max_length=16),
]


class ChatCompletionRequest(_OpenAIBody):
    """POST /v1/chat/completions.

    Honoured by the router (and carried to the provider in `ProviderRequest`): `model`,
    `messages`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `stop`,
    `stream`, `stream_options`, `n` (1 only), `tools`, `tool_choice`, `parallel_tool_calls`,
    `response_format`, `logprobs`, `top_logprobs`, `seed`, `user`, `metadata`, and our
    `paretoserve`. Passed through verbatim to OpenAI-compatible upstreams (the simulated and
    Anthropic providers do not use them): `PASSTHROUGH_FIELDS`. Anything else is a 400 naming
    the field (`chat_refusal`)."""

    # Harmless OpenAI fields: sampling and effort hints, caching, billing tier and storage
    # flags. None changes the shape of the answer a client relies on, so a provider that
    # cannot use one still answers the request faithfully.
    PASSTHROUGH_FIELDS: ClassVar[tuple[str, ...]] = (
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "verbosity",
    )

    model: StrictStr = "auto"
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    metadata: Metadata | None = None
    # -- passed through (PASSTHROUGH_FIELDS)
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[StrictStr, Bias] | None = None
    modalities: list[Literal["text", "audio"]] | None = Field(None, description='only ["text"]')
    prediction: dict[str, Any] | None = None
    prompt_cache_key: StrictStr | None = None
    prompt_cache_retention: StrictStr | None = None
    prompt_cache_options: dict[str, Any] | None = None
    reasoning_effort: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    service_tier: StrictStr | None = None
    store: StrictBool | None = None
    verbosity: StrictStr | None = None
    # -- ours
    paretoserve: RoutingOptions | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_stream(cls, v: Any) -> Any:
        return False if v is None else v  # null = absent = not streamed

    @field_validator("n")
    @classmethod
    def _single_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise unsupported_value("only n=1 is supported")
        return v

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and "audio" in v:
            raise unsupported_value("audio output is not supported; modalities: only ['text']")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, v: Any, info: ValidationInfo) -> Any:
        names = {t.function.name for t in info.data.get("tools") or []}
        if isinstance(v, NamedToolChoice) and v.function.name not in names:
            raise ValueError(f"tool_choice names {v.function.name!r}, which is not in tools")
        if v == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @model_validator(mode="after")
    def _tool_results_answer_calls(self) -> ChatCompletionRequest:
        calls: set[str] = set()
        for i, msg in enumerate(self.messages):
            if msg.role == "tool" and msg.tool_call_id not in calls:
                raise ValueError(
                    f"messages.{i}: tool_call_id {msg.tool_call_id!r} answers no tool call of "
                    "the assistant message before it"
                )
            if msg.role == "assistant":
                calls = {c.id for c in msg.tool_calls or []}
            elif msg.role != "tool":
                calls = set()
        return self

    @property
    def output_token_limit(self) -> int | None:
        """max_completion_tokens (the newer name) wins over max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def passthrough(self) -> dict[str, Any]:
        """The allow-listed fields the client set, as JSON values, for OpenAI-compatible
        upstreams."""
        return {
            name: value
            for name, value in self.model_dump(
                mode="json", include=set(self.PASSTHROUGH_FIELDS), exclude_none=True
            ).items()
        }

    @cached_property
    def wire_messages(self) -> list[dict[str, Any]]:
        """The messages as an upstream receives them (aliases, no nulls). Made once per request:
        routing (core.service.capabilities) and the provider request both read them."""
        return [m.model_dump(by_alias=True, exclude_none=True) for m in self.messages]

    @cached_property
    def wire_tools(self) -> list[dict[str, Any]]:
        """The tools as an upstream receives them; made once per request, as wire_messages."""
        return [t.model_dump(by_alias=True, exclude_none=True) for t in self.tools or []]

    def prompt_text(self) -> str:
        """The text the router embeds to choose a model: the last user message's text, else
        (no user message, or a blank one) every message's text.

        Only text parts count: an image part is ignored for the routing context (it still goes
        to the model). A `tool` message is not a user turn: in a tool conversation (user ->
        assistant tool_calls -> tool results) the text embedded is the last user message's,
        so the follow-up turn is routed on what the user asked, not on the tool's output."""
        for msg in reversed(self.messages):
            if msg.role == "user":
                text = msg.text()
                if text.strip():
                    return text
                break
        return "\n".join(m.text() for m in self.messages)


def field_names(*models: type[BaseModel]) -> frozenset[str]:
    names: set[str] = set()
    for model in models:
        for name, info in model.model_fields.items():
            names.add(name)
            if info.alias:
                names.add(info.alias)
    return frozenset(names)


_CHAT_FIELDS = field_names(
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    ImageURL,
    ToolCall,
    FunctionCall,
    FunctionTool,
    FunctionDefinition,
    NamedToolChoice,
    NamedFunction,
    ResponseFormat,
    JSONSchemaFormat,
    StreamOptions,
)


def _is_refusal(error: Mapping[str, Any]) -> bool:
    if error["type"] in REFUSAL_TYPES:
        return True
    loc = error["loc"]
    return error["type"] == "extra_forbidden" and bool(loc) and loc[0] != "paretoserve"


def _param(loc: Sequence[Any], named: bool, fields: frozenset[str]) -> str:
    """The dotted path of a field from a pydantic loc, without union labels (e.g.
    `messages.0.content.list[ContentPart].0.x` -> `messages.0.content.0.x`); `named`: the last
    component is a field name even though the schema does not know it."""
    keep = [
        str(p)
        for i, p in enumerate(loc)
        if isinstance(p, int) or p in fields or (named and i == len(loc) - 1)
    ]
    return ".".join(keep)


def refusal(
    errors: Sequence[Mapping[str, Any]],
    fields: frozenset[str],
    reason: Callable[[str], str],
) -> ErrorBody | None:
    """The 400 answer to a request body that names a field, or a value, the router cannot
    honour, or None when the errors are of other kinds (those are 422s). `errors` are
    pydantic's, with locs relative to the body; `fields` are the schema's field names (to
    drop pydantic's union labels from a loc); `reason(name)` says why an unknown field is
    refused. Typos in our own `paretoserve` extension stay 422s like every own body's."""
    refused = [e for e in errors if _is_refusal(e)]
    if not refused:
        return None
    items: list[tuple[str, str]] = []
    for e in refused:
        unknown = e["type"] == "extra_forbidden"
        param = _param(e["loc"], unknown, fields)
        items.append((param, reason(str(e["loc"][-1])) if unknown else e["msg"]))
    code = refused[0]["type"] if refused[0]["type"] in REFUSAL_TYPES else UNSUPPORTED_PARAMETER
    message = "; ".join(f"{param or 'body'}: {why}" for param, why in items)
    return ErrorBody.of(message, param=items[0][0] or None, code=code)


def chat_refusal(errors: Sequence[Mapping[str, Any]]) -> ErrorBody | None:
    """The 400 answer to a chat request that names a field, or a value, the router cannot
    honour (unknown fields anywhere in the body, refused ones like `functions` or `audio`,
    `n` > 1, audio or file content parts, custom tools), or None when the errors are of other
    kinds (those are 422s). `errors` are pydantic's, with locs relative to the body. Typos in
    our own `paretoserve` extension stay 422s like every own body's."""
    return refusal(errors, _CHAT_FIELDS, refusal_reason)


# ---------------------------------------------------------------- OpenAI chat response


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    @classmethod
    def of(cls, usage: Usage) -> CompletionUsage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class ParetoserveInfo(BaseModel):
    """Our extension on responses: what the router did and what it cost."""

    request_id: str
    cost_usd: float
    routed: bool = Field(
        description="the bandit chose the model (model='auto'); false when the "
        "client named a model, bypassing the bandit"
    )
    forced: bool = Field(description="a forced-exploration pull of a newly added model")
    dual: float = Field(description="the pacer's dual variable at decision time")
    recorded_reward: float | None = Field(
        None, description="simulated/replayed quality, when the provider knows one"
    )
    fallback_from: list[str] | None = Field(
        None,
        description="models that failed this request, in order, before `model` answered "
        "(absent when the first choice answered)",
    )


class _OmitsNone(BaseModel):
    """Leaves the fields named in `_omit_none` out of its dumps while they are None, the way
    OpenAI omits `tool_calls` and `logprobs` from answers that have none."""

    _omit_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_nones(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self._omit_none:
                if data.get(name, 0) is None:
                    del data[name]
        return data


class AssistantMessage(_OmitsNone):
    _omit_none = ("tool_calls",)

    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="null when the answer is only tool calls")
    tool_calls: list[ToolCall] | None = None


class Choice(_OmitsNone):
    _omit_none = ("logprobs",)

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: dict[str, Any] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    paretoserve: ParetoserveInfo | None = None

    @classmethod
    def build(
        cls, resp: ProviderResponse, info: ParetoserveInfo, created: int | None = None
    ) -> ChatCompletionResponse:
        content = None if resp.tool_calls and not resp.content else resp.content
        return cls(
            id=completion_id(info.request_id),
            created=int(time.time()) if created is None else created,
            model=resp.model_id,
            choices=[
                Choice(
                    message=AssistantMessage(content=content, tool_calls=resp.tool_calls),
                    finish_reason=resp.finish_reason,
                    logprobs=resp.logprobs,
                )
            ],
            usage=CompletionUsage.of(resp.usage),
            paretoserve=info,
        )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    paretoserve: ParetoserveInfo | None = None

    def sse(self) -> str:
        """One SSE event. Like OpenAI: unset delta fields are omitted, finish_reason is always
        present (null until the last content chunk)."""
        body = self.model_dump(exclude_none=True)
        for choice in body["choices"]:
            choice.setdefault("finish_reason", None)
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


# ---------------------------------------------------------------- feedback and admin


class FeedbackRequest(_OwnBody):
    request_id: StrictStr = Field(..., min_length=1, max_length=200)
    reward: Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class FeedbackResponse(BaseModel):
    status: Literal["applied", "duplicate"]
    request_id: str


class AddModelRequest(ModelSpec):
    """POST /admin/models: exactly the ModelSpec fields."""

    def to_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump())


class RepriceRequest(_OwnBody):
    """PATCH /admin/models/{id}: new prices, and/or the simulated provider's behaviour
    (`"simulation": null` clears it). All of it is applied as one registry version, or none."""

    input_per_m: Price | None = Field(
        None, description="new US$ per million input tokens, in [1e-6, 10000]"
    )
    output_per_m: Price | None = Field(
        None, description="new US$ per million output tokens, in [1e-6, 10000]"
    )
    simulation: SimBehaviour | None = Field(
        None, description="simulated provider only: reward scale, quality, injected faults"
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> RepriceRequest:
        if (
            self.input_per_m is None
            and self.output_per_m is None
            and "simulation" not in self.model_fields_set
        ):
            raise ValueError("give input_per_m, output_per_m, simulation, or several")
        return self

    @property
    def reprices(self) -> bool:
        return self.input_per_m is not None or self.output_per_m is not None

    @property
    def sets_simulation(self) -> bool:
        """True when the body names `simulation` (null included: that clears it)."""
        return "simulation" in self.model_fields_set


PatchModelRequest = RepriceRequest  # the body's fuller name


class BudgetRequest(_OwnBody):
    """PUT /admin/budget: the pacer's new spend target."""

    usd_per_request: Budget = Field(..., description=BUDGET_RANGE_DOC)


class TenantPatch(_OwnBody):
    """PATCH /admin/tenants/{id}: the settings to change (the others stay; null clears an
    optional one). The result must still be a valid tenant (core.method.tenants.TenantSpec)."""

    usd_per_request: float | None = Field(
        None, gt=0.0, le=MAX_USD_PER_REQUEST, description="target spend per request, US$"
    )
    budget_usd: float | None = Field(
        None, gt=0.0, le=MAX_PERIOD_BUDGET_USD, description="budget per period, US$"
    )
    period: Period | None = None
    hard_cap: bool | None = None
    pace_period: bool | None = None


class ExplainRequest(_OwnBody):
    """POST /admin/explain: how the router would weigh each model for this prompt now."""

    prompt: StrictStr = Field(..., min_length=1)
    paretoserve: RoutingOptions | None = None
    requires: list[Capability] | None = Field(
        None, description="capabilities the request would need (tools, vision, json_schema)"
    )
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="the output the request would allow, in tokens"
    )


# ---------------------------------------------------------------- errors (OpenAI's shape)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail

    @classmethod
    def of(
        cls,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> ErrorBody:
        return cls(error=ErrorDetail(message=message, type=type, param=param, code=code))

    @classmethod
    def from_validation(cls, exc: ValidationError) -> ErrorBody:
        """A 422 body naming the first bad field (all problems are listed in the message)."""
        errors = exc.errors(include_url=False)
        locs = [".".join(str(p) for p in e["loc"]) for e in errors]
        pairs = zip(locs, errors, strict=True)
        message = "; ".join(f"{loc or 'body'}: {e['msg']}" for loc, e in pairs)
        return cls.of(message, param=locs[0] if locs else None, code="invalid_value")


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, ready for a JSONResponse."""
    return ErrorBody.of(message, type, param, code).model_dump()


# ---------------------------------------------------------------- provider clients


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProviderRequest(BaseModel):
    """One call to a provider client. It carries the model's whole registry entry (`spec`:
    prices, upstream name, base URL, speed class, simulation knobs), so a client keeps no model
    table of its own and every replica of a provider deployment answers the same way."""

    request_id: str
    model_id: str = Field(description="the registry id (= spec.id)")
    upstream_model: str = Field(description="the provider-side model name")
    spec: ModelSpec = Field(description="the model's registry entry when the request was routed")
    attempt: int = Field(0, ge=0, description="0 for the first try, then 1, 2, ... per retry")
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    prompt_text: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    # OpenAI's wire shapes, as the client sent them (JSON values: they cross processes)
    tools: list[dict[str, Any]] | None = Field(None, description="function tools")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description='"none" | "auto" | "required" | {"type": "function", ...}'
    )
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    passthrough: dict[str, Any] = Field(
        default_factory=dict,
        description="allow-listed OpenAI fields (ChatCompletionRequest.PASSTHROUGH_FIELDS), "
        "sent verbatim to OpenAI-compatible upstreams",
    )
    judged: ProviderRequest | None = Field(
        None,
        description="a judge's rubric request: the request whose answer is judged (the "
        "simulated provider scores from it; real providers send only the messages)",
    )

    @model_validator(mode="after")
    def _spec_matches(self) -> ProviderRequest:
        if self.spec.id != self.model_id:
            raise ValueError(f"model_id {self.model_id!r} is not spec.id {self.spec.id!r}")
        return self

    @classmethod
    def for_model(cls, req: ProviderRequest, spec: ModelSpec) -> ProviderRequest:
        """The same request for another model (a fallback), from its first attempt."""
        return req.model_copy(
            update={
                "model_id": spec.id,
                "upstream_model": spec.upstream_name,
                "spec": spec,
                "attempt": 0,
            }
        )

    @classmethod
    def from_chat(
        cls, request_id: str, chat: ChatCompletionRequest, spec: ModelSpec
    ) -> ProviderRequest:
        """Messages keep everything the client sent (image parts, tool calls, tool call ids);
        `tool_choice` and `parallel_tool_calls` go along only with tools (alone they mean
        nothing, and OpenAI refuses them)."""
        tools = chat.tools or None

        def dump(value: BaseModel | None) -> dict[str, Any] | None:
            return None if value is None else value.model_dump(by_alias=True, exclude_none=True)

        choice = chat.tool_choice
        return cls(
            request_id=request_id,
            model_id=spec.id,
            upstream_model=spec.upstream_name,
            spec=spec,
            messages=chat.wire_messages,
            prompt_text=chat.prompt_text(),
            max_tokens=chat.output_token_limit,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop,
            tools=chat.wire_tools or None,
            tool_choice=(choice if isinstance(choice, str) else dump(choice)) if tools else None,
            parallel_tool_calls=chat.parallel_tool_calls if tools else None,
            response_format=dump(chat.response_format),
            logprobs=chat.logprobs,
            top_logprobs=chat.top_logprobs,
            seed=chat.seed,
            user=chat.user,
            metadata=chat.metadata,
            passthrough=chat.passthrough(),
        )

    def function(self, name: str) -> dict[str, Any] | None:
        """The definition of the function tool `name` (its `function` object), if sent."""
        for tool in self.tools or []:
            if tool.get("function", {}).get("name") == name:
                return tool["function"]
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ProviderResponse(BaseModel):
    model_id: str
    content: str = Field(description='the text answer ("" when the answer is only tool calls)')
    tool_calls: list[ToolCall] | None = None
    logprobs: dict[str, Any] | None = Field(None, description="OpenAI's choice.logprobs")
    finish_reason: FinishReason | None
    stop_sequence: str | None = Field(
        None, description="the stop sequence that ended the answer, when the upstream says"
    )
    usage: Usage
    latency_s: float = Field(ge=0.0)
    ttft_s: float | None = Field(None, ge=0.0, description="time to first token, if known")
    recorded_reward: float | None = None


class ProviderChunk(BaseModel):
    """A streamed piece: text, tool-call pieces (OpenAI's deltas), logprobs; the last chunk of a
    stream carries finish_reason and usage (and the stop sequence that ended it, if known)."""

    delta: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    recorded_reward: float | None = None


def message_text(message: dict[str, Any]) -> str:
    """Plain text of a provider-side message dict (str content or text parts; images and tool
    calls are not text)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
    )


def tool_calls_text(message: dict[str, Any]) -> str:
    """The tool calls of a provider-side assistant message as the JSON a model generated (for
    token estimates): each call's name and arguments."""
    return "".join(
        json.dumps({"name": c["function"].get("name"), "arguments": c["function"].get("arguments")})
        for c in message.get("tool_calls") or []
        if isinstance(c, dict) and isinstance(c.get("function"), dict)
    )
