"""One SDK client per base URL, shared by the OpenAI and Anthropic provider clients.

A model's `base_url` (vLLM, OpenRouter, a local server; it arrives in each request's `spec`)
overrides the provider default. The
API key comes from an environment variable; a custom base URL may go without one (a placeholder
is sent), the provider's own endpoint may not. The key is never logged.

The clients' `http_transport` option: "aiohttp" (the default) hands the pool the SDK's own
aiohttp transport (`DefaultAioHttpClient`, vendored by both SDKs), about a quarter less CPU per
call than its httpx default ("httpx"; `python -m benchmarks.sdk_transport`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from deployments.clients.errors import ProviderError

PLACEHOLDER_KEY = "no-key"
SdkClient = TypeVar("SdkClient")
HttpTransport = Literal["aiohttp", "httpx"]


class ClientPool(Generic[SdkClient]):
    def __init__(
        self,
        factory: Callable[..., SdkClient],
        api_key_env: str,
        default_base_url: str | None,
        timeout_s: float,
        max_retries: int,
        aiohttp_client: Callable[[], Any] | None = None,
    ) -> None:
        """`aiohttp_client`: the SDK's aiohttp HTTP client class (None: the SDK's httpx one)."""
        self._factory = factory
        self._aiohttp_client = aiohttp_client
        self.api_key_env = api_key_env
        self.default_base_url = default_base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._clients: dict[str | None, SdkClient] = {}

    def client(self, base_url: str | None = None) -> SdkClient:
        """The SDK client of a model's `base_url` (None: the provider default)."""
        base_url = base_url or self.default_base_url
        client = self._clients.get(base_url)
        if client is None:
            key = os.environ.get(self.api_key_env)
            if not key:
                if base_url is None:
                    raise ProviderError(None, f"{self.api_key_env} is not set")
                key = PLACEHOLDER_KEY
            # Made on the replica's event loop (first use), where an aiohttp session belongs.
            http = {} if self._aiohttp_client is None else {"http_client": self._aiohttp_client()}
            client = self._factory(
                api_key=key,
                base_url=base_url,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
                **http,
            )
            self._clients[base_url] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
