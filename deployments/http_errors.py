"""HTTP error mapping for the Ingress: exceptions from any hop -> OpenAI-shaped error bodies."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayTaskError

from core.errors import (
    DuplicateRequestIdError,
    InvalidFeedbackError,
    NoEligibleModelError,
    UnknownRequestError,
)
from core.protocol import ErrorBody, error_body
from core.registry import RegistryError, UnknownModelError, UnknownProviderError
from core.store import StaleVersionError
from deployments.clients.errors import ProviderError

log = logging.getLogger("ray.serve")


class HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type, code, headers


def cause(exc: BaseException) -> BaseException:
    """The original exception behind Ray's wrapper, when a deployment raised it."""
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def to_http(exc: BaseException) -> HTTPError:
    exc = cause(exc)
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, ValidationError):
        body = ErrorBody.from_validation(exc).error
        return HTTPError(422, body.message, body.param, code=body.code)
    if isinstance(exc, DuplicateRequestIdError):
        return HTTPError(409, str(exc), "x-request-id", code="duplicate_request_id")
    if isinstance(exc, UnknownRequestError):
        return HTTPError(404, str(exc), "request_id", code="unknown_request_id")
    if isinstance(exc, InvalidFeedbackError):
        return HTTPError(422, str(exc), "reward", code="invalid_value")
    if isinstance(exc, NoEligibleModelError):
        unknown = any(r in ("not registered", "removed") for r in exc.reasons.values())
        return HTTPError(
            404 if unknown else 400,
            str(exc),
            "model",
            code="model_not_found" if unknown else "no_eligible_model",
        )
    if isinstance(exc, StaleVersionError):
        return HTTPError(409, str(exc), code="conflict")
    if isinstance(exc, UnknownModelError):
        return HTTPError(404, str(exc), "model", code="model_not_found")
    if isinstance(exc, UnknownProviderError):
        return HTTPError(422, str(exc), "provider", code="invalid_value")
    if isinstance(exc, RegistryError):
        return HTTPError(409, str(exc), "model", code="registry_conflict")
    if isinstance(exc, ProviderError):
        retry = {"retry-after": f"{exc.retry_after_s:.0f}"} if exc.retry_after_s else None
        status = 429 if exc.status == 429 else 502
        return HTTPError(
            status,
            f"provider error: {exc}",
            type="upstream_error",
            code=str(exc.status),
            headers=retry,
        )
    if isinstance(exc, ValueError):
        return HTTPError(400, str(exc))
    log.exception("unhandled error", exc_info=exc)
    return HTTPError(500, "internal error", type="server_error")


def error_response(err: HTTPError) -> JSONResponse:
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code),
        status_code=err.status,
        headers=err.headers,
    )
