"""Anthropic's Messages API (`POST /v1/messages`) as the router honours it: the request body,
the answer (a `message`), Anthropic's error shape, and the stop-reason maps shared by the
ingress (core/service/anthropic_translate.py) and the Anthropic provider client
(core/service/anthropic_upstream.py).

Honoured: `model` (`"auto"` or a registered id), `max_tokens` (required, as Anthropic requires
it), `system` (a string or text blocks), `messages` (content a string or blocks: `text`,
`image` with a base64 or url source, `tool_use` in assistant messages, `tool_result` in user
messages with string or text/image content and `is_error`), `tools` (custom tools:
`name`, `description`, `input_schema`, `strict`), `tool_choice` (`auto`, `any`, `tool` with a
`name`, `none`; `disable_parallel_tool_use`), `stop_sequences`, `temperature`, `top_p`,
`metadata.user_id`, `stream`, `output_config.format` (a JSON schema the answer follows), and
our `paretoserve` routing object. `cache_control` (on blocks, tools, the system prompt or the
request) is accepted as a caching hint and not forwarded: the model that answers may be any
provider's, and the hint never changes an answer.

Refused with a 400 naming the field (never dropped): any unknown field, and among Anthropic's
own `top_k` (the router may pick an OpenAI-compatible or simulated model, which have no top-k
sampling, and the bandit, not the client, decides which: `top_k` would hold only sometimes),
`thinking`, server tools, `document` and other block types, `citations`, a final assistant
message (prefill: not every upstream can continue a message), and the rest in
`REFUSED_FIELDS`. Wrong types and out-of-range values are 422s, as on the OpenAI endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from core.service.openai_schema import (
    FUNCTION_NAME,
    MAX_TOOLS,
    UNKNOWN_FIELD,
    OpenAIObject,
    unsupported_value,
)
from core.service.protocol import (
    ErrorBody,
    ParetoserveInfo,
    RoutingOptions,
    field_names,
    refusal,
)

_Body = OpenAIObject  # unknown fields refused (400), null = absent

BLOCK_TYPES = ("text", "image", "tool_use", "tool_result")
# OpenAI's tool messages have no error flag: a tool result with `is_error` reaches the chat
# path as a tool message whose text starts with this mark, which the Anthropic client turns
# back into `is_error` (other upstreams read it as text).
TOOL_ERROR_MARK = "[tool error] "
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _supported(kind: Any, allowed: tuple[str, ...], what: str) -> Any:
    if isinstance(kind, str) and kind not in allowed:
        raise unsupported_value(
            f"{what} type {kind!r} is not supported (supported: {', '.join(allowed)})"
        )
    return kind


class CacheControl(_Body):
    """A prompt-caching hint: accepted, not forwarded (see the module's docstring)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


_Hint = Field(None, exclude=True, description="a caching hint; accepted, not forwarded")


class ImageSource(_Body):
    """`{"type": "base64", "media_type", "data"}` or `{"type": "url", "url"}`."""

    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: StrictStr | None = None
    url: StrictStr | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _kind(cls, kind: Any) -> Any:
        return _supported(kind, ("base64", "url"), "image source")

    @model_validator(mode="after")
    def _fits_the_type(self) -> ImageSource:
        if self.type == "base64":
            if self.media_type is None or self.data is None or self.url is not None:
                raise ValueError("a base64 source has media_type and data (and no url)")
            if not re.fullmatch(r"[A-Za-z0-9+/=\s]*", self.data):
                raise ValueError("data is not base64")
        else:
            if self.url is None or self.media_type is not None or self.data is not None:
                raise ValueError("a url source has url only")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("an image url must be http(s)://...")
        return self

    def as_url(self) -> str:
        """The source as an OpenAI image URL: the http(s) URL, or a data URL."""
        if self.type == "url":
            return self.url  # type: ignore[return-value]
        return f"data:{self.media_type};base64,{self.data}"


# Per block type: the fields it carries besides `type` and `cache_control` (required ones first).
_BLOCK_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("text",), ()),
    "image": (("source",), ()),
    "tool_use": (("id", "name", "input"), ()),
    "tool_result": (("tool_use_id",), ("content", "is_error")),
}
_PAYLOAD_FIELDS = ("text", "source", "id", "name", "input", "tool_use_id", "content", "is_error")


class ContentBlock(_Body):
    """One block of a message's content (and of a tool result's content, or of the system
    prompt): `text`, `image`, `tool_use` or `tool_result`. Other types (`document`,
    `thinking`, server tool blocks, ...) are refused with a 400."""

    type: Literal["text", "image", "tool_use", "tool_result"]
    text: StrictStr | None = None
    source: ImageSource | None = None
    id: StrictStr | None = None
    name: StrictStr | None = None
    input: dict[str, Any] | None = None
    tool_use_id: StrictStr | None = None
    content: StrictStr | list[ContentBlock] | None = None
    is_error: StrictBool | None = None
    cache_control: CacheControl | None = _Hint

    @field_validator("type", mode="before")
    @classmethod
    def _kind(cls, kind: Any) -> Any:
        return _supported(kind, BLOCK_TYPES, "content block")

    @model_validator(mode="after")
    def _fits_the_type(self) -> ContentBlock:
        required, optional = _BLOCK_FIELDS[self.type]
        present = {f for f in _PAYLOAD_FIELDS if getattr(self, f) is not None}
        missing = [f for f in required if f not in present]
        extra = sorted(present - set(required) - set(optional))
        if missing or extra:
            fields = ", ".join(required + optional)
            raise ValueError(f"a {self.type!r} block carries {fields} (and cache_control) only")
        for block in self.content if isinstance(self.content, list) else []:
            if block.type not in ("text", "image"):
                raise ValueError(f"a tool result's content cannot hold a {block.type!r} block")
        return self

    def result_blocks(self) -> list[ContentBlock]:
        """A tool result's content as blocks (a string is one text block)."""
        if isinstance(self.content, str):
            return [ContentBlock(type="text", text=self.content)] if self.content else []
        return list(self.content or [])


class Message(_Body):
    """A user or assistant message; content is a string or blocks (`text` and `image` in user
    messages, with `tool_result` blocks first; `text` and `tool_use` in assistant ones)."""

    role: Literal["user", "assistant"]
    content: StrictStr | Annotated[list[ContentBlock], Field(min_length=1)]

    @model_validator(mode="after")
    def _fits_the_role(self) -> Message:
        allowed = ("text", "image", "tool_result") if self.role == "user" else ("text", "tool_use")
        for block in self.blocks():
            if block.type not in allowed:
                raise ValueError(f"a {self.role} message cannot carry a {block.type!r} block")
        return self

    def blocks(self) -> list[ContentBlock]:
        """The content as blocks (a string is one text block)."""
        if isinstance(self.content, str):
            return [ContentBlock(type="text", text=self.content)]
        return list(self.content)


class Tool(_Body):
    """A custom tool: `name`, `description`, `input_schema` (an object schema), `strict`.
    Server tools (`web_search_...`, `bash_...`, ...) are refused with a 400."""

    type: Literal["custom"] | None = None
    name: Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]
    description: StrictStr | None = None
    input_schema: dict[str, Any]
    strict: StrictBool | None = None
    cache_control: CacheControl | None = _Hint

    @field_validator("type", mode="before")
    @classmethod
    def _custom_only(cls, kind: Any) -> Any:
        return _supported(kind, ("custom",), "tool")

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('input_schema must be an object schema ({"type": "object", ...})')
        return schema


class ToolChoice(_Body):
    """`auto` (the model decides), `any` (some tool), `tool` (the one `name`d), `none`."""

    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None

    @model_validator(mode="after")
    def _fits_the_type(self) -> ToolChoice:
        if (self.name is not None) != (self.type == "tool"):
            raise ValueError("a 'tool' choice names the tool, and only a 'tool' choice has name")
        if self.type == "none" and self.disable_parallel_tool_use is not None:
            raise ValueError("a 'none' choice has no disable_parallel_tool_use")
        return self


class Metadata(_Body):
    user_id: Annotated[StrictStr, Field(max_length=256)] | None = None


class OutputFormat(_Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema", description="the answer's JSON Schema")


class OutputConfig(_Body):
    format: OutputFormat | None = None


class MessagesRequest(_Body):
    """POST /v1/messages (see the module's docstring for what is honoured and refused)."""

    model: StrictStr = Field(description='"auto" lets the router choose; or a registered id')
    max_tokens: Annotated[StrictInt, Field(ge=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: StrictStr | list[ContentBlock] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    metadata: Metadata | None = None
    stream: StrictBool = False
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = _Hint
    # -- ours
    paretoserve: RoutingOptions | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_stream(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("system")
    @classmethod
    def _text_system(cls, v: Any) -> Any:
        for block in v if isinstance(v, list) else []:
            if block.type != "text":
                raise ValueError(f"the system prompt holds text blocks only, not {block.type!r}")
        return v

    @field_validator("messages")
    @classmethod
    def _a_conversation(cls, messages: list[Message]) -> list[Message]:
        """Tool results answer a tool_use of the assistant message right before; the last
        message is the user's (a final assistant message, a prefill, is refused)."""
        previous: set[str] | None = None
        for i, msg in enumerate(messages):
            blocks = msg.blocks()
            results = [b for b in blocks if b.type == "tool_result"]
            for b in results:
                if previous is None or b.tool_use_id not in previous:
                    raise ValueError(
                        f"messages.{i}: tool_use_id {b.tool_use_id!r} answers no tool_use of the "
                        "assistant message before it"
                    )
            if results and blocks[: len(results)] != results:
                raise ValueError(f"messages.{i}: tool_result blocks come first in a message")
            uses = {b.id or "" for b in blocks if b.type == "tool_use"}
            previous = uses if msg.role == "assistant" else None
        if messages[-1].role == "assistant":
            raise unsupported_value(
                "a final assistant message (prefill) is not supported: not every model the "
                "router may choose can continue one; end with a user message"
            )
        return messages

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, v: ToolChoice | None, info: Any) -> ToolChoice | None:
        names = {t.name for t in info.data.get("tools") or []}
        if v is not None and v.type in ("any", "tool") and not names:
            raise ValueError(f"tool_choice {v.type!r} needs tools")
        if v is not None and v.type == "tool" and v.name not in names:
            raise ValueError(f"tool_choice names {v.name!r}, which is not in tools")
        return v

    def system_text(self) -> list[str]:
        """The system prompt's texts (one per block)."""
        if self.system is None:
            return []
        if isinstance(self.system, str):
            return [self.system] if self.system else []
        return [b.text or "" for b in self.system]


# ---------------------------------------------------------------- refusals

# Anthropic's own fields the router refuses, with the reason given in the 400; any other
# unknown field is refused with a generic reason.
REFUSED_FIELDS: dict[str, str] = {
    "top_k": "top_k is not supported: the router may answer with an OpenAI-compatible or "
    "simulated model, which have no top-k sampling, so it refuses top_k rather than honour it "
    "only sometimes",
    "thinking": "extended thinking is not supported",
    "citations": "citations are not supported",
    "container": "containers (code execution) are not supported",
    "mcp_servers": "MCP servers are not supported",
    "context_management": "context management is not supported",
    "effort": "output effort is not supported",
    "service_tier": "service tiers are not supported: the router chooses the model",
    "inference_geo": "inference geography is not supported: the router chooses the model",
    "speed": "speed modes are not supported: the router chooses the model",
}

_MESSAGES_FIELDS = field_names(
    MessagesRequest,
    Message,
    ContentBlock,
    ImageSource,
    CacheControl,
    Tool,
    ToolChoice,
    Metadata,
    OutputConfig,
    OutputFormat,
)


def refusal_reason(field: str) -> str:
    return REFUSED_FIELDS.get(field, UNKNOWN_FIELD)


def messages_refusal(errors: Sequence[Mapping[str, Any]]) -> ErrorBody | None:
    """The 400 answer (its message, param and code) to a /v1/messages body that names a field
    or a value the router cannot honour, or None for other errors (422s). `errors` are
    pydantic's, with locs relative to the body."""
    return refusal(errors, _MESSAGES_FIELDS, refusal_reason)


# ---------------------------------------------------------------- the answer

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]

# OpenAI finish reason -> Anthropic stop reason (`stop` with a known stop sequence is
# `stop_sequence`), and back (the provider client's map).
STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_reason(finish_reason: str | None, stop_sequence: str | None = None) -> StopReason:
    """Anthropic's stop reason of an answer with OpenAI's `finish_reason`."""
    if finish_reason == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def finish_reason(stop: str | None) -> str | None:
    """OpenAI's finish reason of an Anthropic answer with `stop` as its stop reason."""
    return None if stop is None else FINISH_REASONS.get(stop, "stop")


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(BaseModel):
    input_tokens: int = Field(ge=0, description="every prompt token, cached ones included")
    output_tokens: int = Field(ge=0)


class MessageResponse(BaseModel):
    """An answer in Anthropic's shape, plus our `paretoserve` object. `model` is the model that
    answered."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage
    paretoserve: ParetoserveInfo | None = None


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


# ---------------------------------------------------------------- errors (Anthropic's shape)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error, 5xx:
    api_error)."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, Anthropic's error body (and stream
    error event), with our `param` (the field at fault) and `code` when known."""
    error: dict[str, Any] = {"type": error_type(status), "message": message}
    if param is not None:
        error["param"] = param
    if code is not None:
        error["code"] = code
    return {"type": "error", "error": error}
