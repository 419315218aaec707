"""Errors the router raises for bad requests; the service maps them to 4xx.

Each keeps its raw inputs in `args` (not a formatted message): Ray re-raises a deployment's
exception in the caller by rebuilding it from `args`, which must give the same error back."""

from __future__ import annotations


class RouterError(ValueError):
    """Base class: a request the router refuses, with a message naming the cause."""


class UnknownRequestError(RouterError, KeyError):
    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id

    def __str__(self) -> str:
        return f"unknown request_id {self.request_id!r} (never routed, or expired)"


class InvalidFeedbackError(RouterError):
    pass


class DuplicateRequestIdError(RouterError):
    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id

    def __str__(self) -> str:
        return f"request id {self.request_id!r} is already in use"


class NoEligibleModelError(RouterError):
    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons

    def __str__(self) -> str:
        detail = "; ".join(f"{m}: {why}" for m, why in self.reasons.items())
        return f"no eligible model for this request ({detail or 'no models registered'})"
