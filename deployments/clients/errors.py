"""The one error type provider clients raise, so callers need not know any SDK's exceptions."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from core.method.faults import is_retryable_status


class ProviderError(Exception):
    """An upstream failure. `status` is the HTTP status (None: no response, e.g. timeout or
    connection error); `retryable` says whether trying again (maybe elsewhere) may succeed;
    `timeout` marks an upstream that did not answer in time."""

    def __init__(
        self,
        status: int | None,
        message: str,
        retry_after_s: float | None = None,
        retryable: bool = False,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.retryable = retryable
        self.timeout = timeout

    def __reduce__(self):  # keep every field when pickled across Ray processes
        return (
            type(self),
            (self.status, self.message, self.retry_after_s, self.retryable, self.timeout),
        )

    def __repr__(self) -> str:
        return (
            f"ProviderError(status={self.status!r}, message={self.message!r}, "
            f"retry_after_s={self.retry_after_s!r}, retryable={self.retryable!r}, "
            f"timeout={self.timeout!r})"
        )


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
