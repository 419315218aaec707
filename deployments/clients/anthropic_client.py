"""Anthropic via the official `anthropic` SDK, behind the same interface as the OpenAI client.

Requests arrive in OpenAI's message format and are translated both ways: system/developer
messages become `system`, consecutive same-role messages merge (Anthropic wants alternation),
stop reasons map to OpenAI finish reasons, and input/output tokens to prompt/completion tokens.

Not translated yet: tools (and tool calls in the history), JSON response formats, logprobs
and image parts. A request that needs one is refused with a 400 `ProviderError` naming it,
never answered as if it had not been asked; the passthrough fields (sampling and caching hints
for OpenAI-compatible servers) are not sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse, Usage
from deployments.clients.errors import ProviderError, is_retryable_status, status_error
from deployments.clients.pool import ClientPool

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# An `error` event inside a 200 stream carries only a type; give it the status it would have had.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "stop")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise ProviderError(400, f"unsupported content part for anthropic: {part!r:.80}")
        blocks.append({"type": "text", "text": part.get("text", "")})
    return blocks


def unsupported(req: ProviderRequest) -> str | None:
    """What this client cannot honour in `req`, or None."""
    if req.tools and req.tool_choice != "none":
        return "tools"
    if any(m.get("tool_calls") for m in req.messages):
        return "messages with tool_calls"
    if (req.response_format or {}).get("type") in ("json_object", "json_schema"):
        return f"response_format {req.response_format['type']!r}"  # type: ignore[index]
    if req.logprobs:
        return "logprobs"
    return None


def to_anthropic(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> (system prompt, alternating user/assistant messages)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for msg in messages:
        role, blocks = msg.get("role"), _blocks(msg.get("content"))
        if role in ("system", "developer"):
            system.extend(b["text"] for b in blocks)
            continue
        # Tool results have no tool_use to attach to here (we send no tools); keep their text.
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


def _usage(
    input_tokens: int | None, cache_create: int | None, cache_read: int | None, output: int
) -> Usage:
    # Cached input is billed too (we charge list price for it: conservative).
    prompt = (input_tokens or 0) + (cache_create or 0) + (cache_read or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=output)


def translate_error(exc: Exception) -> ProviderError:
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:  # error event mid-stream
            status = _ERROR_TYPE_STATUS.get(getattr(exc, "type", None) or "", 500)
            return ProviderError(status, str(exc), retryable=is_retryable_status(status))
        return status_error(status, exc.message, exc.response.headers)
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(None, "upstream timed out", retryable=True, timeout=True)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(None, f"cannot reach upstream: {exc.message}", retryable=True)
    return ProviderError(None, f"anthropic client error: {exc}")


class AnthropicClient:
    def __init__(
        self,
        api_key_env: str = "ANTHROPIC_API_KEY",
        default_base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 0,
        default_max_tokens: int = 1024,
        send_sampling_params: bool = False,
    ) -> None:
        self.api_key_env = api_key_env
        self.default_base_url = default_base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries  # 0: the router, not the SDK, decides about retries
        self.default_max_tokens = default_max_tokens  # Anthropic requires max_tokens
        # This SDK's messages.create has no temperature/top_p (current models reject them), so
        # they are dropped unless asked for; then they go as extra body fields, for older models
        # and Anthropic-compatible servers that still take them.
        self.send_sampling_params = send_sampling_params
        self._pool = ClientPool(
            anthropic.AsyncAnthropic, api_key_env, default_base_url, timeout_s, max_retries
        )

    def _client(self, req: ProviderRequest) -> anthropic.AsyncAnthropic:
        return self._pool.client(req.spec.base_url)

    def _params(self, req: ProviderRequest) -> dict[str, Any]:
        if (what := unsupported(req)) is not None:
            raise ProviderError(400, f"{what}: not supported by the anthropic client")
        system, messages = to_anthropic(req.messages)
        params: dict[str, Any] = {
            "model": req.spec.upstream_name,
            "messages": messages,
            "max_tokens": req.max_tokens or self.default_max_tokens,
        }
        if system:
            params["system"] = system
        sampling: dict[str, float] = {}
        if req.temperature is not None:
            sampling["temperature"] = min(req.temperature, 1.0)  # OpenAI: 0..2, Anthropic: 0..1
        if req.top_p is not None:
            sampling["top_p"] = req.top_p
        if sampling and self.send_sampling_params:
            params["extra_body"] = sampling
        if req.stop_list():
            params["stop_sequences"] = req.stop_list()
        return params

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        params = self._params(req)
        client = self._client(req)
        start = time.monotonic()
        try:
            msg = await client.messages.create(**params)
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        u = msg.usage
        return ProviderResponse(
            model_id=req.model_id,
            content="".join(b.text for b in msg.content if b.type == "text"),
            finish_reason=finish_reason(msg.stop_reason),
            usage=_usage(
                u.input_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens,
                u.output_tokens,
            ),
            latency_s=time.monotonic() - start,
        )

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        params = self._params(req)
        client = self._client(req)
        tokens = {"input": 0, "cache_create": 0, "cache_read": 0, "output": 0}
        stop_reason: str | None = None
        try:
            stream = await client.messages.create(**params, stream=True)
            async with stream:  # closes the HTTP response if our consumer stops early
                async for event in stream:
                    if event.type == "message_start":
                        u = event.message.usage
                        tokens["input"] = u.input_tokens
                        tokens["cache_create"] = u.cache_creation_input_tokens or 0
                        tokens["cache_read"] = u.cache_read_input_tokens or 0
                        tokens["output"] = u.output_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        if event.delta.text:
                            yield ProviderChunk(delta=event.delta.text)
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        u = event.usage  # cumulative counts; input ones only sometimes
                        tokens["output"] = u.output_tokens
                        if u.input_tokens is not None:
                            tokens["input"] = u.input_tokens
                        if u.cache_creation_input_tokens is not None:
                            tokens["cache_create"] = u.cache_creation_input_tokens
                        if u.cache_read_input_tokens is not None:
                            tokens["cache_read"] = u.cache_read_input_tokens
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        usage = _usage(
            tokens["input"], tokens["cache_create"], tokens["cache_read"], tokens["output"]
        )
        yield ProviderChunk(finish_reason=finish_reason(stop_reason) or "stop", usage=usage)

    async def aclose(self) -> None:
        await self._pool.aclose()
