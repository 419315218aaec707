"""Tenant API keys at the Ingress: which tenant a key belongs to, asked of the Router (the
keys' owner) and remembered for a short while, so a request costs no Router call per key
check. A revoked or deleted key stops working within `ttl_s`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from core.method.tenants import key_digest

TENANT_KEY_PREFIX = "pst-"  # what the Router's keys start with (deployments/router.py)


class TenantKeys:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[str | None]],
        ttl_s: float = 2.0,
        max_entries: int = 10_000,
    ) -> None:
        self._lookup = lookup  # key digest -> tenant id, or None
        self._ttl_s = ttl_s
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    @staticmethod
    def is_tenant_key(api_key: str) -> bool:
        return api_key.startswith(TENANT_KEY_PREFIX)

    async def tenant(self, api_key: str) -> str | None:
        """The tenant of `api_key`; None: no such key (or revoked)."""
        digest = key_digest(api_key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        tenant = await self._lookup(digest)
        self._cache[digest] = (tenant, now + self._ttl_s)
        self._cache.move_to_end(digest)
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return tenant
