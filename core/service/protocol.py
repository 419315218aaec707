"""Pydantic bodies of the HTTP API and of the provider clients.

HTTP side: a subset of OpenAI's chat schema (plus our `paretoserve` extension), feedback and
admin bodies, and OpenAI's error shape. OpenAI bodies ignore unknown fields (SDKs send many)
but reject wrong types of the fields we know: known scalars are strict, so `"stream": "yes"`
or `"temperature": "0.5"` is a 422, not a silent coercion. Our own bodies (feedback, admin,
the `paretoserve` extension) forbid unknown fields so a typo is an error, not a no-op.

Provider side: `ProviderRequest` in, `ProviderResponse` / `ProviderChunk` out, shared by the
simulated, OpenAI and Anthropic clients.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from core.method.config import BUDGET_RANGE_DOC, MAX_BUDGET_USD, MIN_BUDGET_USD
from core.method.registry import MAX_PRICE_PER_M, MIN_PRICE_PER_M, ModelSpec, SimBehaviour

# Every number an admin (or a client) sends has a documented range (docs/reliability.md,
# "Admin number ranges"), and finite numbers only: Python's json module accepts NaN/Infinity
# literals (and reads 1e309 as inf), so a JSON body can carry them; they must fail validation
# at the HTTP boundary rather than poison the bandit or the pacer.
Price = Annotated[StrictFloat, Field(ge=MIN_PRICE_PER_M, le=MAX_PRICE_PER_M, allow_inf_nan=False)]
PriceCeiling = Annotated[StrictFloat, Field(gt=0.0, le=MAX_PRICE_PER_M, allow_inf_nan=False)]
Budget = Annotated[StrictFloat, Field(ge=MIN_BUDGET_USD, le=MAX_BUDGET_USD, allow_inf_nan=False)]
Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = str  # "stop" | "length" | "tool_calls" | "content_filter"; providers add more


# ---------------------------------------------------------------- OpenAI chat request


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _OwnBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_OpenAIBody):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_OpenAIBody):
    role: Role
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        """The plain text of the message (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class StreamOptions(_OpenAIBody):
    include_usage: StrictBool = False


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


class ChatCompletionRequest(_OpenAIBody):
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
    user: StrictStr | None = None
    seed: StrictInt | None = None
    paretoserve: RoutingOptions | None = None

    @field_validator("n")
    @classmethod
    def _single_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @property
    def output_token_limit(self) -> int | None:
        """max_completion_tokens (the newer name) wins over max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def prompt_text(self) -> str:
        """The text the router embeds: the last user message, else every message's text."""
        for msg in reversed(self.messages):
            if msg.role == "user":
                text = msg.text()
                if text.strip():
                    return text
                break
        return "\n".join(m.text() for m in self.messages)


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


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None


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
        return cls(
            id=completion_id(info.request_id),
            created=int(time.time()) if created is None else created,
            model=resp.model_id,
            choices=[
                Choice(
                    message=AssistantMessage(content=resp.content),
                    finish_reason=resp.finish_reason,
                )
            ],
            usage=CompletionUsage.of(resp.usage),
            paretoserve=info,
        )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None


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


class ExplainRequest(_OwnBody):
    """POST /admin/explain: how the router would weigh each model for this prompt now."""

    prompt: StrictStr = Field(..., min_length=1)
    paretoserve: RoutingOptions | None = None


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
        return cls(
            request_id=request_id,
            model_id=spec.id,
            upstream_model=spec.upstream_name,
            spec=spec,
            messages=[m.model_dump(exclude_none=True) for m in chat.messages],
            prompt_text=chat.prompt_text(),
            max_tokens=chat.output_token_limit,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop,
        )

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ProviderResponse(BaseModel):
    model_id: str
    content: str
    finish_reason: FinishReason | None
    usage: Usage
    latency_s: float = Field(ge=0.0)
    ttft_s: float | None = Field(None, ge=0.0, description="time to first token, if known")
    recorded_reward: float | None = None


class ProviderChunk(BaseModel):
    """A streamed piece; the last chunk of a stream carries finish_reason and usage."""

    delta: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    recorded_reward: float | None = None


def message_text(message: dict[str, Any]) -> str:
    """Plain text of a provider-side message dict (str content or text parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
    )
