"""HTTP error mapping for the Ingress: exceptions from any hop -> error bodies in OpenAI's shape
(`error_response`) or, for the Anthropic Messages endpoint, Anthropic's (`anthropic=True`)."""

from __future__ import annotations

import logging
import math
import time

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from core.method.errors import (
    DuplicateRequestIdError,
    InvalidFeedbackError,
    NoEligibleModelError,
    UnknownRequestError,
)
from core.method.registry import RegistryError, UnknownModelError, UnknownProviderError
from core.method.tenants import (
    TenantBudgetExhaustedError,
    TenantExistsError,
    UnknownTenantError,
)
from core.service.anthropic_protocol import anthropic_error
from core.service.protocol import ChatCompletionRequest, ErrorBody, chat_refusal, error_body
from core.state.store import StaleVersionError
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

    def body(self) -> dict:
        """`{"error": {"message", "type", "param", "code"}}`: the response body or SSE event."""
        return error_body(self.message, self.type, self.param, self.code)

    def anthropic_body(self) -> dict:
        """`{"type": "error", "error": {"type", "message", "param"?, "code"?}}`: Anthropic's
        shape (its error type from the status), for the Messages endpoint and its streams."""
        return anthropic_error(self.status, self.message, self.param, self.code)


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
        refused = None
        if exc.title == ChatCompletionRequest.__name__:  # what the router cannot honour: 400
            refused = chat_refusal(exc.errors(include_url=False))
        if refused is not None:
            err = refused.error
            return HTTPError(400, err.message, err.param, code=err.code)
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
    if isinstance(exc, TenantBudgetExhaustedError):
        wait = math.ceil(exc.retry_after_s(time.time()))
        return HTTPError(
            429,
            str(exc),
            type="rate_limit_error",
            code="tenant_budget_exhausted",
            headers={"retry-after": str(wait)},
        )
    if isinstance(exc, TenantExistsError):
        return HTTPError(409, str(exc), "id", code="tenant_exists")
    if isinstance(exc, UnknownTenantError):
        return HTTPError(404, str(exc), "tenant", type="not_found_error", code="tenant_not_found")
    if isinstance(exc, StaleVersionError):
        return HTTPError(409, str(exc), code="conflict")
    if isinstance(exc, UnknownModelError):
        return HTTPError(404, str(exc), "model", code="model_not_found")
    if isinstance(exc, UnknownProviderError):
        return HTTPError(422, str(exc), "provider", code="invalid_value")
    if isinstance(exc, RegistryError):
        return HTTPError(409, str(exc), "model", code="registry_conflict")
    if isinstance(exc, ProviderError):
        return provider_http_error(exc)
    if isinstance(exc, RayActorError | ActorUnavailableError):  # a replica died, retries spent
        return HTTPError(
            503,
            "a deployment replica is restarting; retry shortly",
            type="server_error",
            code="replica_unavailable",
            headers={"retry-after": "5"},
        )
    if isinstance(exc, ValueError):
        return HTTPError(400, str(exc))
    log.exception("unhandled error", exc_info=exc)
    return HTTPError(500, "internal error", type="server_error")


def provider_http_error(exc: ProviderError) -> HTTPError:
    """The answer to a request whose provider failed (no fallback left, or an explicit model):
    429 for a rate limit, 504 for a timeout, 503 for an unavailable or overloaded upstream
    (503/529), else 502. `Retry-After` (whole seconds, rounded up) when the upstream sent one;
    `code` is the upstream status ("timeout" or "no_response" without one)."""
    if exc.status == 429:
        status = 429
    elif exc.timeout:
        status = 504
    elif exc.status in (503, 529):
        status = 503
    else:
        status = 502
    retry = None
    if exc.retry_after_s is not None:
        retry = {"retry-after": str(max(0, math.ceil(exc.retry_after_s)))}
    code = str(exc.status) if exc.status is not None else ("timeout" if exc.timeout else None)
    return HTTPError(
        status,
        f"provider error: {exc}",
        type="rate_limit_error" if status == 429 else "upstream_error",
        code=code or "no_response",
        headers=retry,
    )


def error_response(err: HTTPError, anthropic: bool = False) -> JSONResponse:
    body = err.anthropic_body() if anthropic else err.body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)
