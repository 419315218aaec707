"""The parts of OpenAI's chat-completions schema the router honours, beyond plain text: content
parts (text, images), function tools, tool choice, tool calls and response formats; and the
rules that refuse what it cannot honour.

Every request object here forbids unknown fields. A field the router does not know, or a
value it cannot honour (an audio content part, a custom tool, `n: 2`), is refused with a 400
naming it (`core.service.protocol.chat_refusal`; the Ingress answers it), never dropped: an
application that relies on a feature gets told, instead of an answer that silently ignores it.
A field sent as `null` counts as absent, as in OpenAI's API.

Fields the `openai` SDK echoes when an application sends an answer's message back (the
common `messages.append(completion.choices[0].message)`) are accepted and not forwarded: they
restate the answer and ask for nothing. They are `ECHOED_FIELDS`: a message's `annotations`
and `parsed` (the SDK's parse helpers), a tool call's `index` (its stream accumulator) and its
function's `parsed_arguments`.

Refusals are pydantic errors of two types of our own: `unsupported_parameter` (a field) and
`unsupported_value` (a known field with a value the router cannot honour); an unknown field is
pydantic's `extra_forbidden`. Other errors (wrong types, out-of-range numbers) stay 422s.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

UNSUPPORTED_PARAMETER = "unsupported_parameter"
UNSUPPORTED_VALUE = "unsupported_value"
REFUSAL_TYPES = frozenset({UNSUPPORTED_PARAMETER, UNSUPPORTED_VALUE})

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names
MAX_TOOLS = 128  # OpenAI's limit


def unsupported_value(message: str) -> PydanticCustomError:
    """A refusal of a value the router cannot honour (HTTP 400, `code: unsupported_value`)."""
    return PydanticCustomError(UNSUPPORTED_VALUE, message)


def unsupported_parameter(message: str) -> PydanticCustomError:
    """A refusal of a field the router cannot honour (HTTP 400, `code: unsupported_parameter`)."""
    return PydanticCustomError(UNSUPPORTED_PARAMETER, message)


class OpenAIObject(BaseModel):
    """An object of OpenAI's request schema: unknown fields are refused, `null` is absent."""

    model_config = ConfigDict(extra="forbid")
    _keys: ClassVar[frozenset[str] | None] = None

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        """Field names and their aliases."""
        if cls.__dict__.get("_keys") is None:
            names = set(cls.model_fields)
            names.update(f.alias for f in cls.model_fields.values() if f.alias)
            cls._keys = frozenset(names)
        return cls._keys  # type: ignore[return-value]

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            known = cls.known_keys()
            return {k: v for k, v in data.items() if v is not None or k in known}
        return data


def _only_types(value: Any, allowed: tuple[str, ...], what: str) -> Any:
    """Refuse (400) an object whose `type` is a string the router does not support."""
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in allowed:
        raise unsupported_value(
            f"{what} type {kind!r} is not supported (supported: {', '.join(allowed)})"
        )
    return value


# ---------------------------------------------------------------- content parts


_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]*")


class ImageURL(OpenAIObject):
    url: StrictStr = Field(description="an http(s) URL, or a data:image/<type>;base64,... URL")
    detail: Literal["auto", "low", "high", "original"] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if url.startswith("data:"):
            if _DATA_URL.fullmatch(url):
                return url
            raise ValueError("a data URL must be data:image/<type>;base64,<data>")
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            return url
        raise ValueError("an image URL must be http(s)://... or data:image/<type>;base64,...")


PART_TYPES = ("text", "image_url", "refusal")


class ContentPart(OpenAIObject):
    """One part of a message's content: `text`, `image_url` (user messages) or `refusal`
    (assistant messages). Audio and file parts are refused (400)."""

    type: Literal["text", "image_url", "refusal"]
    text: StrictStr | None = None
    image_url: ImageURL | None = None
    refusal: StrictStr | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _supported(cls, kind: Any) -> Any:
        return _only_types({"type": kind}, PART_TYPES, "content part")["type"]

    @model_validator(mode="after")
    def _one_payload(self) -> ContentPart:
        present = [f for f in PART_TYPES if getattr(self, f) is not None]
        if present != [self.type]:
            raise ValueError(f"a {self.type!r} part carries exactly the field {self.type!r}")
        return self


# ---------------------------------------------------------------- tools and tool calls


class FunctionDefinition(OpenAIObject):
    name: Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="the arguments' JSON Schema (an object schema)"
    )
    strict: StrictBool | None = None


class FunctionTool(OpenAIObject):
    """`{"type": "function", "function": {...}}`; custom tools are refused (400)."""

    type: Literal["function"]
    function: FunctionDefinition

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: Any) -> Any:
        return _only_types(data, ("function",), "tool")


class NamedFunction(OpenAIObject):
    name: StrictStr


class NamedToolChoice(OpenAIObject):
    """`{"type": "function", "function": {"name": ...}}`: call this function."""

    type: Literal["function"]
    function: NamedFunction

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: Any) -> Any:
        return _only_types(data, ("function",), "tool_choice")


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


ECHOED_FIELDS = ("annotations", "parsed", "index", "parsed_arguments")


def echoed(description: str) -> Any:
    """A field an SDK echoes from an answer: accepted, never dumped (so never forwarded)."""
    return Field(None, exclude=True, description=f"{description}; accepted and ignored")


class FunctionCall(OpenAIObject):
    name: StrictStr
    arguments: StrictStr = Field(description="the arguments, a JSON text")
    parsed_arguments: Any = echoed("the openai SDK's parsed arguments")


class ToolCall(OpenAIObject):
    """A function call the model made: in an answer, and in an assistant message sent back."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int | None = echoed("the openai SDK stream accumulator's index")

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data: Any) -> Any:
        return _only_types(data, ("function",), "tool call")


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed piece of a tool call (OpenAI's shape): the first piece of call `index` has
    its `id`, `type` and function `name`; later pieces add to `function.arguments`."""

    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


# ---------------------------------------------------------------- response formats


class JSONSchemaFormat(OpenAIObject):
    name: Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="a JSON Schema")
    strict: StrictBool | None = None


FORMAT_TYPES = ("text", "json_object", "json_schema")


class ResponseFormat(OpenAIObject):
    """`{"type": "text"}`, `{"type": "json_object"}` or
    `{"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _supported(cls, kind: Any) -> Any:
        return _only_types({"type": kind}, FORMAT_TYPES, "response_format")["type"]

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        return self


# ---------------------------------------------------------------- what is refused, and why

# Fields of OpenAI's chat API the router refuses, with the reason given in the 400. Any other
# unknown field is refused too, with a generic reason.
REFUSED_FIELDS: dict[str, str] = {
    "functions": "legacy function calling is not supported; send `tools`",
    "function_call": "legacy function calling is not supported; use `tools` / `tool_choice` "
    "and `tool_calls`",
    "audio": "audio is not supported",
    "web_search_options": "web search is not supported",
    "moderation": "moderation is not supported",
    "prompt_cache_breakpoint": "explicit prompt cache breakpoints are not supported",
}
UNKNOWN_FIELD = (
    "unsupported field: the router cannot honour it, so it refuses it instead of dropping it"
)


def refusal_reason(field: str) -> str:
    return REFUSED_FIELDS.get(field, UNKNOWN_FIELD)
