"""The OpenAI provider client, for any OpenAI-compatible server, over the official `openai` SDK.

vLLM, OpenRouter, Together or a local server work alike. One SDK client per base URL
(deployments/clients/pool.py); `ModelSpec.base_url` overrides the default.

The request goes out as the client sent it: messages with image parts, tool calls and tool
call ids; tools, tool_choice, parallel_tool_calls, response_format, logprobs, top_logprobs,
seed, user, metadata; and the allow-listed passthrough fields (`extra_body`, so an SDK that
does not know a newer one still sends it). Tool calls and logprobs come back, plain and
streamed."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai

from core.service.protocol import (
    FunctionCall,
    FunctionCallDelta,
    ProviderChunk,
    ProviderRequest,
    ProviderResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
    message_text,
    tool_calls_text,
)
from deployments.clients.errors import ProviderError, status_error
from deployments.clients.pool import ClientPool, HttpTransport

log = logging.getLogger(__name__)


def translate_error(exc: Exception) -> ProviderError:
    """SDK exception -> ProviderError (timeouts and connection errors are retryable)."""
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.message, exc.response.headers)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(None, "upstream timed out", retryable=True, timeout=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(None, f"cannot reach upstream: {exc.message}", retryable=True)
    if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
        return ProviderError(None, f"upstream error: {exc.message}", retryable=True)
    return ProviderError(None, f"openai client error: {exc}")


_FORWARDED = (
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "seed",
    "user",
    "metadata",
)


def estimate_usage(req: ProviderRequest, completion: str) -> Usage:
    """For servers that send no usage: about four characters per token."""
    chars = sum(len(message_text(m)) + len(tool_calls_text(m)) for m in req.messages)
    completion_tokens = round(len(completion) / 4)
    return Usage(prompt_tokens=max(1, round(chars / 4)), completion_tokens=completion_tokens)


class OpenAIClient:
    def __init__(
        self,
        api_key_env: str = "OPENAI_API_KEY",
        default_base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 0,
        http_transport: HttpTransport = "aiohttp",
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        self.api_key_env = api_key_env
        self.default_base_url = default_base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries  # 0: the router, not the SDK, decides about retries
        # OpenAI's reasoning models accept only max_completion_tokens; many compatible servers
        # know only max_tokens.
        self.max_tokens_field = max_tokens_field
        self._pool = ClientPool(
            openai.AsyncOpenAI,
            api_key_env,
            default_base_url,
            timeout_s,
            max_retries,
            openai.DefaultAioHttpClient if http_transport == "aiohttp" else None,
        )

    def _client(self, req: ProviderRequest) -> openai.AsyncOpenAI:
        return self._pool.client(req.spec.base_url)

    def _params(self, req: ProviderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": req.spec.upstream_name, "messages": req.messages}
        if req.max_tokens is not None:
            params[self.max_tokens_field] = req.max_tokens
        for name in _FORWARDED:
            if getattr(req, name) is not None:
                params[name] = getattr(req, name)
        if req.passthrough:
            params["extra_body"] = dict(req.passthrough)
        return params

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        client = self._client(req)
        start = time.monotonic()
        try:
            resp = await client.chat.completions.create(**self._params(req))
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        if not resp.choices:
            raise ProviderError(None, "upstream returned no choices", retryable=True)
        choice = resp.choices[0]
        content = choice.message.content or ""
        calls = _tool_calls(choice.message.tool_calls)
        usage = (
            Usage(
                prompt_tokens=resp.usage.prompt_tokens,
                completion_tokens=resp.usage.completion_tokens,
            )
            if resp.usage
            else estimate_usage(req, content + "".join(c.function.arguments for c in calls))
        )
        return ProviderResponse(
            model_id=req.model_id,
            content=content,
            tool_calls=calls or None,
            logprobs=_logprobs(choice.logprobs),
            finish_reason=choice.finish_reason,
            usage=usage,
            latency_s=time.monotonic() - start,
        )

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        client = self._client(req)
        params = self._params(req)
        parts: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        try:
            stream = await client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            async with stream:  # closes the HTTP response if our consumer stops early
                async for chunk in stream:
                    if chunk.usage is not None:  # the extra last chunk, with no choices
                        usage = Usage(
                            prompt_tokens=chunk.usage.prompt_tokens,
                            completion_tokens=chunk.usage.completion_tokens,
                        )
                    for choice in chunk.choices[:1]:
                        finish = choice.finish_reason or finish
                        delta = choice.delta
                        text = (delta.content if delta else None) or ""
                        calls = _tool_call_deltas(delta.tool_calls if delta else None)
                        logprobs = _logprobs(choice.logprobs)
                        if text or calls or logprobs:
                            parts.append(text)
                            parts += [c.function.arguments or "" for c in calls if c.function]
                            yield ProviderChunk(
                                delta=text, tool_calls=calls or None, logprobs=logprobs
                            )
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        if usage is None:
            log.warning("model %s streamed no usage; estimating it", req.model_id)
            usage = estimate_usage(req, "".join(parts))
        yield ProviderChunk(finish_reason=finish or "stop", usage=usage)

    async def aclose(self) -> None:
        await self._pool.aclose()


def _tool_calls(calls: list[Any] | None) -> list[ToolCall]:
    """The SDK's function tool calls as ours (only function tools are ever sent; a server that
    leaves out `type` or `id` still gets its calls through)."""
    out = []
    for i, c in enumerate(calls or []):
        fn = getattr(c, "function", None)
        if getattr(c, "type", None) in ("function", None) and fn is not None:
            call = FunctionCall(name=fn.name or "", arguments=fn.arguments or "")
            out.append(ToolCall(id=c.id or f"call_{i}", function=call))
    return out


def _tool_call_deltas(calls: list[Any] | None) -> list[ToolCallDelta]:
    out = []
    for c in calls or []:
        fn = c.function
        out.append(
            ToolCallDelta(
                index=c.index,
                id=c.id,
                type="function" if c.type == "function" else None,
                function=FunctionCallDelta(name=fn.name, arguments=fn.arguments) if fn else None,
            )
        )
    return out


def _logprobs(logprobs: Any) -> dict[str, Any] | None:
    """OpenAI's choice.logprobs as JSON, or None when the upstream sent none."""
    if logprobs is None:
        return None
    data = logprobs.model_dump(mode="json", exclude_unset=True)
    return data if any(v is not None for v in data.values()) else None
