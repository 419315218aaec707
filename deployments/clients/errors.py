"""The one error type provider clients raise, so callers need not know any SDK's exceptions."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

# 408 timeout, 409 conflict, 425 too early, 429 rate limit, and every 5xx (529 = overloaded)
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


class ProviderError(Exception):
    """An upstream failure. `status` is the HTTP status (None: no response, e.g. timeout or
    connection error); `retryable` says whether trying again (maybe elsewhere) may succeed."""

    def __init__(
        self,
        status: int | None,
        message: str,
        retry_after_s: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    def __reduce__(self):  # keep every field when pickled across Ray processes
        return (type(self), (self.status, self.message, self.retry_after_s, self.retryable))

    def __repr__(self) -> str:
        return (
            f"ProviderError(status={self.status!r}, message={self.message!r}, "
            f"retry_after_s={self.retry_after_s!r}, retryable={self.retryable!r})"
        )


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_4XX or status >= 500


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
