"""The Anthropic Messages ingress's translations: an Anthropic request -> our OpenAI-shaped
`ChatCompletionRequest` (so routing, capabilities, budgets, fallback, charges and feedback are
the chat path's, core/service/chat.py), and our answer -> Anthropic's `message`, plain or as
Anthropic's SSE events.

Request (core/service/anthropic_protocol.py says what is accepted):
- `system` -> a system message (a string, or text parts for text blocks);
- user blocks: `text` -> text parts, `image` -> `image_url` parts (a base64 source becomes a
  `data:` URL, a url source its URL); `tool_result` blocks -> `tool` messages (answering
  `tool_use_id`; their text joined by newlines), placed before the rest of the user message;
  an image inside a tool result goes as an image part of the user message after the tool
  messages (OpenAI's tool messages hold text only); `is_error` marks the result's text with
  `TOOL_ERROR_MARK` (OpenAI has no such flag; the Anthropic client turns the mark back into
  `is_error`);
- assistant blocks: `text` -> content, `tool_use` -> `tool_calls` (`input` as a JSON text);
- `tools` -> function tools (`input_schema` -> `parameters`); `tool_choice` `auto` -> "auto",
  `any` -> "required", `tool` -> the named function, `none` -> "none";
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`;
- `stop_sequences` -> `stop`; `metadata.user_id` -> `user`; `output_config.format` ->
  `response_format` `json_schema` (strict); `max_tokens`, `temperature`, `top_p`, `stream`,
  `paretoserve` as they are.

Answer: text -> a text block; tool calls -> `tool_use` blocks (`arguments` parsed; arguments
that are not a JSON object, e.g. a call cut by max_tokens, give `input: {}`); finish reasons
-> stop reasons (stop -> end_turn, or stop_sequence when the upstream named the sequence;
length -> max_tokens; tool_calls -> tool_use; content_filter -> refusal); usage -> input and
output tokens. A stream is Anthropic's events with their `event:` lines: message_start,
content_block_start / content_block_delta (text_delta, input_json_delta) / content_block_stop
per block, message_delta (stop reason, usage and our `paretoserve` object), message_stop; a
failure after the first chunk is an `error` event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from core.service.anthropic_protocol import (
    TOOL_ERROR_MARK,
    ContentBlock,
    Message,
    MessageResponse,
    MessagesRequest,
    MessageUsage,
    TextOut,
    ToolUseOut,
    message_id,
    stop_reason,
)
from core.service.chat import StreamEnd
from core.service.protocol import (
    ChatCompletionRequest,
    ParetoserveInfo,
    ProviderChunk,
    ProviderResponse,
)

ErrorPayload = Callable[[BaseException], dict[str, Any]]

# ---------------------------------------------------------------- request


def _part(block: ContentBlock) -> dict[str, Any]:
    """A user text or image block as an OpenAI content part."""
    if block.type == "image":
        return {"type": "image_url", "image_url": {"url": block.source.as_url()}}  # type: ignore[union-attr]
    return {"type": "text", "text": block.text or ""}


def _user(msg: Message) -> list[dict[str, Any]]:
    """A user message as OpenAI messages: its tool results as `tool` messages, then the rest."""
    if isinstance(msg.content, str):
        return [{"role": "user", "content": msg.content}]
    out: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # OpenAI's tool messages hold text only
    rest: list[dict[str, Any]] = []
    for block in msg.content:
        if block.type != "tool_result":
            rest.append(_part(block))
            continue
        inner = block.result_blocks()
        text = "\n".join(b.text or "" for b in inner if b.type == "text")
        if block.is_error:
            text = TOOL_ERROR_MARK + text
        out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        images += [_part(b) for b in inner if b.type == "image"]
    if images or rest:
        out.append({"role": "user", "content": images + rest})
    return out


def _assistant(msg: Message) -> dict[str, Any]:
    if isinstance(msg.content, str):
        return {"role": "assistant", "content": msg.content}
    texts = [b.text or "" for b in msg.content if b.type == "text"]
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": json.dumps(b.input)},
        }
        for b in msg.content
        if b.type == "tool_use"
    ]
    out: dict[str, Any] = {"role": "assistant"}
    if len(texts) == 1:
        out["content"] = texts[0]
    elif texts:
        out["content"] = [{"type": "text", "text": t} for t in texts]
    if calls:
        out["tool_calls"] = calls
    return out


def to_chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    """The chat request that asks what `body` asks (the module's docstring gives the map)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.system, str) and body.system:
        messages.append({"role": "system", "content": body.system})
    elif isinstance(body.system, list) and body.system:
        parts = [{"type": "text", "text": b.text or ""} for b in body.system]
        messages.append({"role": "system", "content": parts})
    for msg in body.messages:
        if msg.role == "user":
            messages += _user(msg)
        else:
            messages.append(_assistant(msg))
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_tokens,
        "stream": body.stream,
    }
    if body.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                        "strict": t.strict,
                    }.items()
                    if v is not None
                },
            }
            for t in body.tools
        ]
        choice = body.tool_choice
        if choice is not None:
            chat["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if choice.type == "tool"
                else {"auto": "auto", "any": "required", "none": "none"}[choice.type]
            )
            if choice.disable_parallel_tool_use:
                chat["parallel_tool_calls"] = False
    fmt = body.output_config.format if body.output_config else None
    if fmt is not None:
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt.schema_, "strict": True},
        }
    optional = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop_sequences,
        "user": body.metadata.user_id if body.metadata else None,
        "paretoserve": body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else None,
    }
    chat.update({k: v for k, v in optional.items() if v is not None})
    return ChatCompletionRequest.model_validate(chat)


# ---------------------------------------------------------------- answer


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as Anthropic's `input` object ({} when they are not one)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def to_message(resp: ProviderResponse, info: ParetoserveInfo) -> MessageResponse:
    """A plain answer in Anthropic's shape."""
    content: list[TextOut | ToolUseOut] = []
    if resp.content:
        content.append(TextOut(text=resp.content))
    for call in resp.tool_calls or []:
        name, args = call.function.name, call.function.arguments
        content.append(ToolUseOut(id=call.id, name=name, input=tool_input(args)))
    return MessageResponse(
        id=message_id(info.request_id),
        model=resp.model_id,
        content=content,
        stop_reason=stop_reason(resp.finish_reason, resp.stop_sequence),
        stop_sequence=resp.stop_sequence,
        usage=MessageUsage(
            input_tokens=resp.usage.prompt_tokens, output_tokens=resp.usage.completion_tokens
        ),
        paretoserve=info,
    )


def sse_event(payload: dict[str, Any]) -> str:
    """One Anthropic SSE event: `event: <type>` and its JSON `data:`."""
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n"


class AnthropicStreamFormat:
    """Writes a chat stream as Anthropic's message events (a core.service.chat.StreamFormat).

    Text opens a text block; a tool call's first piece (with its id) opens a `tool_use` block
    whose argument pieces are `input_json_delta`s. Blocks are sequential, as Anthropic's are:
    a new kind of piece closes the open block. A piece of a tool call whose block was closed
    already (calls interleaved with each other or with text) cannot be written, and ends the
    stream with an error event."""

    def __init__(
        self, request_id: str, model_id: str, prompt_tokens: int, stream_error: ErrorPayload
    ) -> None:
        self.id, self.model_id, self.prompt_tokens = message_id(request_id), model_id, prompt_tokens
        self.stream_error = stream_error
        self._open: tuple[str, int] | None = None  # ("text", 0) or ("tool", the call's index)
        self._next = 0  # the next block's index
        self._calls: set[int] = set()

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        self._next += 1
        return [sse_event({"type": "content_block_stop", "index": self._next - 1})]

    def _begin(self, kind: tuple[str, int], block: dict[str, Any]) -> list[str]:
        events = self._close()
        self._open = kind
        start = {"type": "content_block_start", "index": self._next, "content_block": block}
        return [*events, sse_event(start)]

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse_event({"type": "content_block_delta", "index": self._next, "delta": delta})

    def start(self) -> Iterable[str]:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model_id,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
        }
        return [sse_event({"type": "message_start", "message": message})]

    def piece(self, chunk: ProviderChunk) -> Iterable[str]:
        events: list[str] = []
        if chunk.delta:
            if self._open != ("text", 0):
                events += self._begin(("text", 0), {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": chunk.delta}))
        for call in chunk.tool_calls or []:
            fn = call.function
            if call.index not in self._calls:
                self._calls.add(call.index)
                block = {
                    "type": "tool_use",
                    "id": call.id or f"toolu_{self.id}_{call.index}",
                    "name": (fn.name if fn else None) or "",
                    "input": {},
                }
                events += self._begin(("tool", call.index), block)
            elif self._open != ("tool", call.index):
                raise ValueError(
                    f"tool call {call.index} goes on after another block began; Anthropic's "
                    "stream cannot carry interleaved blocks"
                )
            if fn is not None and fn.arguments:
                piece = {"type": "input_json_delta", "partial_json": fn.arguments}
                events.append(self._delta(piece))
        return events

    def end(self, end: StreamEnd) -> Iterable[str]:
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(end.finish_reason, end.stop_sequence),
                "stop_sequence": end.stop_sequence,
            },
            "usage": {
                "input_tokens": end.usage.prompt_tokens,
                "output_tokens": end.usage.completion_tokens,
            },
            "paretoserve": end.info.model_dump(mode="json"),
        }
        return [*self._close(), sse_event(delta), sse_event({"type": "message_stop"})]

    def failure(self, exc: Exception) -> Iterable[str]:
        return [sse_event(self.stream_error(exc))]
