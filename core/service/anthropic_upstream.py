"""A provider request for an Anthropic model: our `ProviderRequest` (OpenAI's shapes) -> the
Messages API's parameters, and Anthropic's answer (a message, or its stream events, as JSON
dicts) -> `ProviderResponse` / `ProviderChunk`s. Pure functions and one small decoder; the
client (deployments/clients/anthropic_client.py) wraps the `anthropic` SDK around them.

Request:
- system and developer messages -> `system` (their texts joined by blank lines);
- user text and image parts -> text and image blocks (a `data:` URL -> a base64 source, an
  http(s) URL -> a url source; `detail` has no equivalent and is not sent);
- assistant text (and refusal text) -> text blocks, `tool_calls` -> `tool_use` blocks (the
  arguments parsed: they must be a JSON object; "" is {});
- `tool` messages -> `tool_result` blocks of a user message (a text starting with
  core.service.anthropic_protocol.TOOL_ERROR_MARK -> `is_error: true`, the mark removed);
  consecutive same-role messages merge, as Anthropic wants turns to alternate, so a tool
  turn's results and the user's next words share one user message, results first;
- tool call ids keep to Anthropic's `[A-Za-z0-9_-]` (any other character becomes `_`, the
  same in a call and its result);
- function tools -> custom tools (`parameters` -> `input_schema`, `strict` kept);
  `tool_choice` "auto" / "required" / "none" / a named function -> `auto` / `any` / `none` /
  `tool`; `parallel_tool_calls: false` -> `disable_parallel_tool_use`;
- `response_format` `json_object` / `json_schema` -> a forced tool (`FORMAT_TOOL`, whose
  `input_schema` is the format's schema, or any object for json_object; `strict` kept): its
  input is the answer, returned as the text content (streamed as text deltas), with finish
  reason `stop`. Every Claude model that calls tools can answer this way, and so can
  Anthropic-compatible servers without native structured outputs. With tools under "auto"
  the model must call either one of them or the answer tool (`any`); under "required" or a
  named tool the tool call comes first and the format is not asked; under "none" only the
  answer tool is sent. A json_schema whose root is not an object cannot be a tool's input:
  that request is refused (400);
- `stop` -> `stop_sequences`; `user` -> `metadata.user_id`; `max_tokens` (a default when
  unset: Anthropic requires it); `temperature` (clamped to Anthropic's 0..1) and `top_p` only
  when the client is told to send them (current models reject them);
- not sent: `seed`, `metadata`, the passthrough fields (OpenAI-only hints); `logprobs` is
  refused (400): Anthropic has none.

Answer: text blocks -> content; `tool_use` blocks -> `tool_calls` (input as a JSON text), the
answer tool's -> content; stop reasons -> finish reasons (end_turn and stop_sequence -> stop,
max_tokens -> length, tool_use -> tool_calls, refusal -> content_filter), the stop sequence
kept; usage -> prompt tokens (input + cache creation + cache read: cached input is charged at
list price, conservatively) and completion tokens. A stream's `input_json_delta`s become
OpenAI's tool-call argument deltas.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from core.service.anthropic_protocol import TOOL_ERROR_MARK, finish_reason
from core.service.ports import ProviderError
from core.service.protocol import (
    FunctionCall,
    FunctionCallDelta,
    ProviderChunk,
    ProviderRequest,
    ProviderResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
)

FORMAT_TOOL = "json_answer"
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.S)
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def _refused(what: str) -> ProviderError:
    return ProviderError(400, f"{what}: not supported by the anthropic client")


def tool_id(call_id: str) -> str:
    """A tool call id as Anthropic accepts it."""
    return _NOT_ID.sub("_", call_id) or "call"


def image_block(url: str) -> dict[str, Any]:
    m = _DATA_URL.fullmatch(url)
    if m:
        data = re.sub(r"\s", "", m[2])
        return {"type": "image", "source": {"type": "base64", "media_type": m[1], "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _text(text: str | None) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []  # Anthropic refuses empty text


def _input(arguments: str, where: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProviderError(400, f"{where}: the arguments are not a JSON object")
    return value


def _blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """The content of one OpenAI message as Anthropic blocks."""
    content = msg.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks += _text(content)
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += _text(part.get("text"))
        elif kind == "refusal":
            blocks += _text(part.get("refusal"))
        elif kind == "image_url":
            blocks.append(image_block(part["image_url"]["url"]))
        else:
            raise ProviderError(400, f"unsupported content part for anthropic: {part!r:.80}")
    blocks += _text(msg.get("refusal"))
    for j, call in enumerate(msg.get("tool_calls") or []):
        fn = call["function"]
        where = f"messages.{i}.tool_calls.{j}.function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_id(call["id"]),
                "name": fn["name"],
                "input": _input(fn.get("arguments") or "", where),
            }
        )
    return blocks


def _tool_result(msg: dict[str, Any]) -> dict[str, Any]:
    text = msg.get("content")
    if isinstance(text, list):
        text = "\n".join(p.get("text", "") for p in text if p.get("type") == "text")
    text = text or ""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id(msg["tool_call_id"])}
    if text.startswith(TOOL_ERROR_MARK):
        text, block["is_error"] = text[len(TOOL_ERROR_MARK) :], True
    if text:
        block["content"] = text
    return block


def to_anthropic(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> (system prompt, alternating user/assistant messages)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _blocks(msg, i) if b["type"] == "text")
            continue
        if role == "tool" and msg.get("tool_call_id"):
            blocks = [_tool_result(msg)]
        else:  # a tool message without an id has no tool_use to answer: its text goes as is
            blocks = _blocks(msg, i)
        role = "assistant" if role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    out = [m for m in out if m["content"]]
    if not out:  # only a system prompt: Anthropic needs one message, so ask it as the user
        text = "\n\n".join(system)
        out, system = [{"role": "user", "content": [{"type": "text", "text": text}]}], []
    return ("\n\n".join(system) or None), out


def _tools(req: ProviderRequest) -> list[dict[str, Any]]:
    out = []
    for tool in req.tools or []:
        fn = tool["function"]
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        if "type" not in schema:
            schema = {"type": "object", **schema}
        entry: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
        if fn.get("description"):
            entry["description"] = fn["description"]
        if fn.get("strict"):
            entry["strict"] = True
        out.append(entry)
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        return {"type": "tool", "name": choice["function"]["name"]}
    return {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}


def _format_tool(req: ProviderRequest, taken: set[str]) -> dict[str, Any] | None:
    """The answer tool of a JSON response format, or None (no format, or a tool call first)."""
    fmt = req.response_format or {}
    if fmt.get("type") not in ("json_object", "json_schema"):
        return None
    if req.tools and req.tool_choice not in (None, "auto", "none"):
        return None  # a tool call is required first; the format is for a later text answer
    name = FORMAT_TOOL
    while name in taken:
        name += "_"
    js = fmt.get("json_schema") or {}
    schema = js.get("schema") or {"type": "object"}
    if schema.get("type") != "object":
        raise _refused("a json_schema response format whose root is not an object")
    what = f"the JSON object of the schema {js['name']!r}" if js else "a JSON object"
    tool: dict[str, Any] = {
        "name": name,
        "description": js.get("description") or f"Give your answer as this tool's input: {what}.",
        "input_schema": schema,
    }
    if js.get("strict"):
        tool["strict"] = True
    return tool


@dataclass(frozen=True)
class AnthropicCall:
    """The Messages API's parameters of a request, and the name of its answer tool (a JSON
    response format), if any."""

    params: dict[str, Any]
    format_tool: str | None = None


def anthropic_call(
    req: ProviderRequest, default_max_tokens: int = 1024, send_sampling_params: bool = False
) -> AnthropicCall:
    """The Anthropic request that asks what `req` asks (the module's docstring gives the map).
    Raises a 400 ProviderError for what cannot be asked of Anthropic."""
    if req.logprobs:
        raise _refused("logprobs")
    system, messages = to_anthropic(req.messages)
    params: dict[str, Any] = {
        "model": req.spec.upstream_name,
        "messages": messages,
        "max_tokens": req.max_tokens or default_max_tokens,
    }
    if system:
        params["system"] = system
    tools = _tools(req)
    choice = _tool_choice(req.tool_choice if tools else None)
    answer = _format_tool(req, {t["name"] for t in tools})
    if answer is not None:
        tools = [] if req.tool_choice == "none" else tools
        choice = {"type": "any"} if tools else {"type": "tool", "name": answer["name"]}
        tools = [*tools, answer]
    if tools:
        params["tools"] = tools
        if req.parallel_tool_calls is False and (choice or {}).get("type") != "none":
            choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
        if choice is not None:
            params["tool_choice"] = choice
    sampling: dict[str, float] = {}
    if req.temperature is not None:
        sampling["temperature"] = min(req.temperature, 1.0)  # OpenAI: 0..2, Anthropic: 0..1
    if req.top_p is not None:
        sampling["top_p"] = req.top_p
    if sampling and send_sampling_params:
        params["extra_body"] = sampling
    if req.stop_list():
        params["stop_sequences"] = req.stop_list()
    if req.user:
        params["metadata"] = {"user_id": req.user}
    return AnthropicCall(params, answer["name"] if answer else None)


# ---------------------------------------------------------------- answers


def anthropic_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic's usage as ours: cached input is billed too (charged at list price here:
    conservative)."""
    prompt = sum(
        usage.get(k) or 0
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(prompt_tokens=prompt, completion_tokens=usage.get("output_tokens") or 0)


def provider_response(
    message: dict[str, Any], call: AnthropicCall, model_id: str, latency_s: float
) -> ProviderResponse:
    """An Anthropic message (JSON) as our provider response."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.get("content") or []:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use" and block["name"] == call.format_tool:
            texts.append(json.dumps(block.get("input") or {}))
        elif block["type"] == "tool_use":
            fn = FunctionCall(name=block["name"], arguments=json.dumps(block.get("input") or {}))
            calls.append(ToolCall(id=block["id"], function=fn))
    finish = finish_reason(message.get("stop_reason"))
    if finish == "tool_calls" and not calls:  # only the answer tool: a JSON answer
        finish = "stop"
    return ProviderResponse(
        model_id=model_id,
        content="".join(texts),
        tool_calls=calls or None,
        finish_reason=finish,
        stop_sequence=message.get("stop_sequence"),
        usage=anthropic_usage(message.get("usage") or {}),
        latency_s=latency_s,
    )


@dataclass
class StreamDecoder:
    """Anthropic's stream events (JSON) -> our chunks: `feed` each event, then `end()` gives
    the last chunk (finish reason, stop sequence, usage)."""

    format_tool: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    # a tool_use block's index -> its call's index (None: the answer tool's block)
    _blocks: dict[int, int | None] = field(default_factory=dict)
    _streamed: set[int] = field(default_factory=set)  # tool blocks that had input pieces
    _calls: int = 0

    def _input(self, index: int, piece: str) -> ProviderChunk:
        call = self._blocks[index]
        if call is None:  # the answer tool's input is the answer's text
            return ProviderChunk(delta=piece)
        delta = ToolCallDelta(index=call, function=FunctionCallDelta(arguments=piece))
        return ProviderChunk(tool_calls=[delta])

    def feed(self, event: dict[str, Any]) -> ProviderChunk | None:
        kind = event.get("type")
        if kind == "message_start":
            usage = event["message"].get("usage") or {}
            self.usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "content_block_start":
            block, index = event["content_block"], event["index"]
            if block["type"] == "text" and block.get("text"):
                return ProviderChunk(delta=block["text"])
            if block["type"] == "tool_use":
                given = json.dumps(block["input"]) if block.get("input") else ""
                if given:
                    self._streamed.add(index)
                if block["name"] == self.format_tool:
                    self._blocks[index] = None
                    return ProviderChunk(delta=given) if given else None
                self._blocks[index], self._calls = self._calls, self._calls + 1
                head = FunctionCallDelta(name=block["name"], arguments=given)
                delta = ToolCallDelta(
                    index=self._blocks[index], id=block["id"], type="function", function=head
                )
                return ProviderChunk(tool_calls=[delta])
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta" and delta.get("text"):
                return ProviderChunk(delta=delta["text"])
            if delta["type"] == "input_json_delta" and delta.get("partial_json"):
                self._streamed.add(event["index"])
                return self._input(event["index"], delta["partial_json"])
        elif kind == "content_block_stop":
            index = event["index"]
            if index in self._blocks and index not in self._streamed:
                return self._input(index, "{}")  # no input pieces: the input is {}
        elif kind == "message_delta":
            self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
            self.stop_sequence = event["delta"].get("stop_sequence") or self.stop_sequence
            # cumulative counts; the input ones only sometimes
            usage = event.get("usage") or {}
            self.usage.update({k: v for k, v in usage.items() if v is not None})
        return None

    def end(self) -> ProviderChunk:
        finish = finish_reason(self.stop_reason) or "stop"
        if finish == "tool_calls" and not self._calls:  # only the answer tool: a JSON answer
            finish = "stop"
        return ProviderChunk(
            finish_reason=finish,
            stop_sequence=self.stop_sequence,
            usage=anthropic_usage(self.usage),
        )
