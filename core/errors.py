"""Errors the router raises for bad requests; the service maps them to 4xx."""

from __future__ import annotations


class RouterError(ValueError):
    """Base class: a request the router refuses, with a message naming the cause."""


class UnknownRequestError(RouterError, KeyError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"unknown request_id {request_id!r} (never routed, or expired)")
        self.request_id = request_id

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class InvalidFeedbackError(RouterError):
    pass


class NoEligibleModelError(RouterError):
    def __init__(self, reasons: dict[str, str]) -> None:
        detail = "; ".join(f"{m}: {why}" for m, why in reasons.items()) or "no models registered"
        super().__init__(f"no eligible model for this request ({detail})")
        self.reasons = reasons
