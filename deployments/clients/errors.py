"""ProviderError (core.service.ports) for clients: built from an upstream status and headers."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from core.method.faults import is_retryable_status
from core.service.ports import ProviderError

__all__ = ["ProviderError", "is_retryable_status", "retry_after_s", "status_error"]


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, message: str, headers: Mapping[str, str]) -> ProviderError:
    return ProviderError(
        status, message, retry_after_s=retry_after_s(headers), retryable=is_retryable_status(status)
    )
