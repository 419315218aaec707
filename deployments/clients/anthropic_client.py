"""Anthropic via the official `anthropic` SDK, behind the same interface as the OpenAI client.

A thin wrapper: the translation both ways (our OpenAI-shaped `ProviderRequest` -> the Messages
API's parameters, with tools, tool turns, images, system prompts, JSON response formats and
stop sequences; Anthropic's message or stream events -> `ProviderResponse` / `ProviderChunk`s,
with tool calls, finish reasons and usage) is core/service/anthropic_upstream.py's, which
documents each mapping. A request that cannot be asked of Anthropic (`logprobs`) is refused
with a 400 `ProviderError` naming it, before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from core.service.anthropic_protocol import finish_reason
from core.service.anthropic_upstream import (
    AnthropicCall,
    StreamDecoder,
    anthropic_call,
    provider_response,
    to_anthropic,
)
from core.service.protocol import ProviderChunk, ProviderRequest, ProviderResponse
from deployments.clients.errors import ProviderError, is_retryable_status, status_error
from deployments.clients.pool import ClientPool, HttpTransport

__all__ = ["AnthropicClient", "finish_reason", "to_anthropic", "translate_error"]

# An `error` event inside a 200 stream carries only a type; give it the status it would have had.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


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
        http_transport: HttpTransport = "aiohttp",
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
            anthropic.AsyncAnthropic,
            api_key_env,
            default_base_url,
            timeout_s,
            max_retries,
            anthropic.DefaultAioHttpClient if http_transport == "aiohttp" else None,
        )

    def _client(self, req: ProviderRequest) -> anthropic.AsyncAnthropic:
        return self._pool.client(req.spec.base_url)

    def _call(self, req: ProviderRequest) -> AnthropicCall:
        return anthropic_call(req, self.default_max_tokens, self.send_sampling_params)

    async def complete(self, req: ProviderRequest) -> ProviderResponse:
        call = self._call(req)
        client = self._client(req)
        start = time.monotonic()
        try:
            msg = await client.messages.create(**call.params)
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        return provider_response(_json(msg), call, req.model_id, time.monotonic() - start)

    async def stream(self, req: ProviderRequest) -> AsyncIterator[ProviderChunk]:
        call = self._call(req)
        client = self._client(req)
        decoder = StreamDecoder(call.format_tool)
        try:
            stream = await client.messages.create(**call.params, stream=True)
            async with stream:  # closes the HTTP response if our consumer stops early
                async for event in stream:
                    chunk = decoder.feed(_json(event))
                    if chunk is not None:
                        yield chunk
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        yield decoder.end()

    async def aclose(self) -> None:
        await self._pool.aclose()


def _json(obj: Any) -> dict[str, Any]:
    """An SDK object (a message, a stream event) as its JSON."""
    return obj.to_dict(mode="json")
