"""The Ingress deployment: the HTTP API of DESIGN.md (OpenAI chat, Anthropic messages, feedback,
models, health, admin).

It authenticates, validates and maps errors to OpenAI-shaped bodies (Anthropic-shaped on
/v1/messages); a chat's steps (embed -> route -> provider with fallback -> charge) are
core.service.chat's, over the Serve handles adapted to its ports (deployments/ports.py). An
Anthropic request is translated to the same chat request, and its answer back, by
core.service.anthropic_translate.

The request id is Serve's own (the `x-request-id` request header, set by Serve's proxy when the
client sends none): Serve echoes it on the response and tags every hop's log lines with it,
and the Router keys the decision, the charge and the feedback by it.

No `from __future__ import annotations` here: FastAPI must see the real annotation types."""

import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.method.tenants import TenantSpec
from core.service.anthropic_protocol import MessagesRequest, messages_refusal
from core.service.anthropic_translate import AnthropicStreamFormat, to_chat_request, to_message
from core.service.capabilities import explain_limits
from core.service.chat import ChatService
from core.service.decision import RouteDecision
from core.service.judge_sampling import JudgeSampler
from core.service.protocol import (
    AddModelRequest,
    BudgetRequest,
    ChatCompletionRequest,
    ExplainRequest,
    FeedbackRequest,
    FeedbackResponse,
    RepriceRequest,
    TenantPatch,
    chat_refusal,
)
from core.service.tenant_keys import TenantKeys
from deployments.http_errors import HTTPError, error_response, to_http
from deployments.ports import ServeEmbedder, ServeJudge, ServeProviders, ServeRouter, timed

log = logging.getLogger("ray.serve")
T = TypeVar("T")
app = FastAPI(
    title="paretoserve",
    version="0.1.0",
    description="Budget-paced, self-adapting LLM router (OpenAI-compatible).",
)
MAX_REQUEST_ID_CHARS = 200  # the feedback API accepts ids up to this length
MESSAGES_PATH = "/v1/messages"  # Anthropic's API: its error shape, its key header
_REFUSALS = {"/v1/chat/completions": chat_refusal, MESSAGES_PATH: messages_refusal}


def _respond(request: Request, err: HTTPError) -> JSONResponse:
    """The error in the shape of the API the request called."""
    return error_response(err, anthropic=request.url.path == MESSAGES_PATH)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the first bad field; a chat or messages request naming a field (or a value)
    the router cannot honour is a 400 naming it (core.service.protocol.chat_refusal,
    core.service.anthropic_protocol.messages_refusal)."""
    errors = exc.errors()
    refusal_of = _REFUSALS.get(request.url.path)
    if refusal_of is not None:
        in_body = [{**e, "loc": tuple(e["loc"][1:])} for e in errors if e["loc"][:1] == ("body",)]
        refusal = refusal_of(in_body)
        if refusal is not None:
            err = refusal.error
            return _respond(request, HTTPError(400, err.message, err.param, code=err.code))
    # A JSON decode error's loc holds a character offset, not a field.
    locs = [
        "" if e.get("type") == "json_invalid" else ".".join(str(p) for p in e["loc"][1:])
        for e in errors
    ]
    message = "; ".join(f"{loc or 'body'}: {e['msg']}" for loc, e in zip(locs, errors, strict=True))
    param = (locs[0] or None) if locs else None
    return _respond(request, HTTPError(422, message, param, code="invalid_value"))


@app.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return _respond(request, exc)


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404, 405 and the like in the API's error shape too."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _respond(request, HTTPError(exc.status_code, str(exc.detail), type=kind))


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, keys: list[str]) -> bool:
    # Compare with every key in constant time; never short-circuit on the first match.
    return bool(token) and sum(hmac.compare_digest(token, k) for k in keys) > 0


_CLIENT_PATHS = ("/v1/chat/completions", MESSAGES_PATH, "/v1/feedback", "/v1/models")


async def _refusal(request: Request) -> JSONResponse | None:
    """Keys are checked before anything reads the body, so a caller without one learns only
    that it needs one: the response refusing the request, or None to let it through. The keys
    sit in app.state, set when the replica starts. A client key comes as a bearer token, or
    (the `anthropic` SDK's way) in `x-api-key` on /v1/messages."""
    path, state = request.url.path, request.app.state
    if path.startswith("/admin"):
        if not state.admin_key:
            message = f"admin API disabled: {state.admin_env} is not set"
            return error_response(HTTPError(401, message, type="authentication_error"))
        if not _matches(_bearer(request), [state.admin_key]):
            message = "missing or invalid admin key"
            return error_response(HTTPError(401, message, type="authentication_error"))
    elif path in _CLIENT_PATHS:
        key = _bearer(request)
        if path == MESSAGES_PATH and not key:
            key = request.headers.get("x-api-key", "").strip()
        if TenantKeys.is_tenant_key(key):  # a tenant's key: paced and charged for the tenant
            try:
                tenant = await state.tenant_keys.tenant(key)
            except Exception as exc:
                return _respond(request, to_http(exc))
            if tenant is None:
                message = "unknown or revoked tenant key"
                return _respond(request, HTTPError(401, message, type="authentication_error"))
            request.state.tenant = tenant
        elif state.api_keys and not _matches(key, state.api_keys):
            message = "missing or invalid API key"
            return _respond(request, HTTPError(401, message, type="authentication_error"))
    return None


class _Authenticate:
    """The key check as a plain ASGI middleware: Starlette's `@app.middleware("http")` runs
    every request through a task group and a memory stream, which cost the Ingress ~15% of its
    CPU per request (py-spy, docs/benchmarks.md)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refused = await _refusal(Request(scope))  # its state is the scope's: seen below
            if refused is not None:
                return await refused(scope, receive, send)
        await self.app(scope, receive, send)


app.add_middleware(_Authenticate)


def _tenant(request: Request) -> str | None:
    """The tenant whose key authenticated the request (None: no tenant key)."""
    return getattr(request.state, "tenant", None)


def _request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    if len(rid) > MAX_REQUEST_ID_CHARS:
        raise HTTPError(
            400, f"x-request-id is longer than {MAX_REQUEST_ID_CHARS} characters", "x-request-id"
        )
    return rid


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator when the response ends in any way. Starlette leaves a body
    abandoned by a client hang-up to the garbage collector, so its cleanup (the charge for
    what the provider already generated) would run at some unknown later time."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


_HOP_BUCKETS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


@serve.deployment(name="Ingress")  # replica options: graphs/app.py, from the settings tree
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        embedder: DeploymentHandle,
        router: DeploymentHandle,
        feedback: DeploymentHandle,
        registry: DeploymentHandle,
        providers: dict[str, DeploymentHandle],
        max_prompt_chars: int = 100_000,
        admin_key_env: str = "PARETOSERVE_ADMIN_KEY",
        api_keys_env: str = "PARETOSERVE_API_KEYS",
        *,
        context_cache_size: int = 0,
        judge: DeploymentHandle | None = None,
        judge_sample_rate: float = 0.0,
        judge_seed: int = 0,
    ) -> None:
        self.embedder, self.router, self.judge = embedder, router, judge
        self.feedback, self.registry = feedback, registry
        self.max_prompt_chars = max_prompt_chars
        # Read once at start-up, kept for the auth middleware, never logged.
        app.state.admin_key = os.environ.get(admin_key_env, "")
        app.state.admin_env = admin_key_env
        app.state.api_keys = [
            k.strip() for k in os.environ.get(api_keys_env, "").split(",") if k.strip()
        ]
        app.state.tenant_keys = TenantKeys(lambda digest: router.tenant_of_key.remote(digest))
        self._m_requests = Counter(
            "paretoserve_requests",
            "chat requests by answering model",
            tag_keys=("model", "routed", "stream"),
        )
        self._m_hop = Histogram(
            "paretoserve_hop_latency_ms",
            "latency per hop",
            boundaries=_HOP_BUCKETS_MS,
            tag_keys=("hop",),
        )
        self._m_errors = Counter("paretoserve_http_errors", "error responses", tag_keys=("status",))
        self._m_router_retries = Counter(
            "paretoserve_router_retries", "Router calls repeated after the Router replica died"
        )
        self.chats = ChatService(
            ServeEmbedder(embedder, self._observe, context_cache_size),
            ServeRouter(router, self._observe, self._m_router_retries.inc),
            ServeProviders(providers, self._observe),
            stream_error=lambda exc: to_http(exc).body(),
            log=log,
            judge=None
            if judge is None
            else (ServeJudge(judge), JudgeSampler(judge_sample_rate, judge_seed)),
        )

    def _observe(self, hop: str, ms: float) -> None:
        self._m_hop.observe(ms, tags={"hop": hop})

    async def _mapped(self, call: Awaitable[T]) -> T:
        """Await `call`; any failure becomes the HTTPError it maps to, counted once."""
        try:
            return await call
        except Exception as exc:
            err = to_http(exc)
            self._m_errors.inc(tags={"status": str(err.status)})
            raise err from None

    async def _call(self, hop: str, response: Awaitable[T]) -> T:
        return await self._mapped(timed(self._observe, hop, response))

    # ---- chat -------------------------------------------------------------------------

    def _check_prompt(self, body: ChatCompletionRequest) -> None:
        if not body.prompt_text().strip():
            raise HTTPError(422, "messages: the prompt is empty", "messages")
        total = sum(len(m.text()) for m in body.messages)  # every message goes upstream
        if total > self.max_prompt_chars:
            raise HTTPError(
                413,
                f"messages: {total} characters in all, more than the limit of "
                f"{self.max_prompt_chars}",
                "messages",
                code="prompt_too_long",
            )

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest, request: Request):
        start = time.perf_counter()
        rid = _request_id(request)
        self._check_prompt(body)
        if body.stream:
            stream = await self._mapped(self.chats.open_stream(rid, body, _tenant(request)))
            self._count(stream.decision, True)
            return _ClosingStreamingResponse(stream.events(), media_type="text/event-stream")
        answer = await self._mapped(self.chats.complete(rid, body, _tenant(request)))
        decision, cost = answer.decision, answer.cost_usd
        self._count(decision, False)
        self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": "total"})
        log.info("chat model=%s routed=%s cost_usd=%.3g", decision.model, decision.routed, cost)
        return JSONResponse(
            answer.response.model_dump(mode="json"),
            headers={"x-paretoserve-cost-usd": f"{cost:.10g}"},
        )

    @app.post(MESSAGES_PATH)
    async def messages(self, body: MessagesRequest, request: Request):
        """Anthropic's Messages API over the same chat path: the request is translated to a
        chat request, the answer (plain or streamed) back to Anthropic's message."""
        start = time.perf_counter()
        rid = _request_id(request)
        try:
            chat = to_chat_request(body)
        except ValidationError as exc:  # not expected: the Anthropic schema checks as much
            raise to_http(exc) from None
        self._check_prompt(chat)
        if body.stream:
            stream = await self._mapped(self.chats.open_stream(rid, chat, _tenant(request)))
            self._count(stream.decision, True)
            fmt = AnthropicStreamFormat(
                rid,
                stream.decision.model,
                stream.estimated_prompt_tokens,
                stream_error=lambda exc: to_http(exc).anthropic_body(),
            )
            return _ClosingStreamingResponse(stream.events(fmt), media_type="text/event-stream")
        answer = await self._mapped(self.chats.complete(rid, chat, _tenant(request)))
        decision, cost = answer.decision, answer.cost_usd
        self._count(decision, False)
        self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": "total"})
        log.info("messages model=%s routed=%s cost_usd=%.3g", decision.model, decision.routed, cost)
        return JSONResponse(
            to_message(answer.provider, answer.info).model_dump(mode="json"),
            headers={"x-paretoserve-cost-usd": f"{cost:.10g}"},
        )

    def _count(self, decision: RouteDecision, stream: bool) -> None:
        self._m_requests.inc(
            tags={
                "model": decision.model,
                "routed": str(decision.routed).lower(),
                "stream": str(stream).lower(),
            }
        )

    # ---- feedback, models, health -------------------------------------------------------

    @app.post("/v1/feedback")
    async def post_feedback(self, body: FeedbackRequest) -> FeedbackResponse:
        status = await self._call(
            "feedback", self.feedback.submit.remote(body.request_id, body.reward)
        )
        return FeedbackResponse(status=status, request_id=body.request_id)

    @app.get("/v1/models")
    async def models(self) -> dict:
        table = await self._call("registry", self.registry.list.remote())
        return {
            "object": "list",
            "data": [
                {"id": m["id"], "object": "model", "created": 0, "owned_by": m["provider"]}
                for m in table
            ]
            + [{"id": "auto", "object": "model", "created": 0, "owned_by": "paretoserve"}],
        }

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    # ---- admin (the key is checked by the middleware) -----------------------------------

    @app.get("/admin/models")
    async def admin_models(self) -> list[dict]:
        return await self._call("registry", self.registry.list.remote())

    @app.post("/admin/models", status_code=201)
    async def admin_add(self, body: AddModelRequest) -> dict:
        return await self._call("registry", self.registry.add.remote(body.to_spec()))

    @app.patch("/admin/models/{model_id:path}")
    async def admin_reprice(self, model_id: str, body: RepriceRequest) -> dict:
        """New prices and/or the simulated provider's behaviour, as one registry version."""
        return await self._call(
            "registry",
            self.registry.patch.remote(
                model_id,
                body.input_per_m,
                body.output_per_m,
                body.simulation,
                body.sets_simulation,
            ),
        )

    @app.delete("/admin/models/{model_id:path}")
    async def admin_remove(self, model_id: str) -> dict:
        return await self._call("registry", self.registry.remove.remote(model_id))

    @app.get("/admin/state")
    async def admin_state(self) -> dict:
        """The Router's state, with the Judge's figures under `judge`."""
        state = await self._call("router", self.router.state.remote())
        if self.judge is None:
            state["judge"] = {"enabled": False}
        else:
            state["judge"] = await self._call("judge", self.judge.stats.remote())
        return state

    @app.post("/admin/explain")
    async def admin_explain(self, body: ExplainRequest) -> dict:
        """Per model: estimated quality, uncertainty bonus, cost penalty, score, eligibility."""
        x = await self._call("embed", self.embedder.embed.remote(body.prompt))
        return await self._call("router", self.router.explain.remote(x, explain_limits(body)))

    # ---- tenants (admin) ----------------------------------------------------------------

    @app.post("/admin/tenants", status_code=201)
    async def admin_add_tenant(self, body: TenantSpec) -> dict:
        return await self._call("router", self.router.add_tenant.remote(body.model_dump()))

    @app.get("/admin/tenants")
    async def admin_tenants(self) -> list[dict]:
        return await self._call("router", self.router.tenants.remote())

    @app.get("/admin/tenants/{tenant_id}")
    async def admin_tenant(self, tenant_id: str) -> dict:
        return await self._call("router", self.router.tenant.remote(tenant_id))

    @app.patch("/admin/tenants/{tenant_id}")
    async def admin_patch_tenant(self, tenant_id: str, body: TenantPatch) -> dict:
        changes = body.model_dump(exclude_unset=True)
        return await self._call("router", self.router.update_tenant.remote(tenant_id, changes))

    @app.delete("/admin/tenants/{tenant_id}")
    async def admin_remove_tenant(self, tenant_id: str) -> dict:
        return await self._call("router", self.router.remove_tenant.remote(tenant_id))

    @app.post("/admin/tenants/{tenant_id}/keys", status_code=201)
    async def admin_tenant_key(self, tenant_id: str) -> dict:
        """A new API key of the tenant; shown only in this answer."""
        return await self._call("router", self.router.create_tenant_key.remote(tenant_id))

    @app.delete("/admin/tenants/{tenant_id}/keys/{key_id}")
    async def admin_revoke_key(self, tenant_id: str, key_id: str) -> dict:
        revoked = await self._call(
            "router", self.router.revoke_tenant_key.remote(tenant_id, key_id)
        )
        if not revoked:
            raise HTTPError(404, f"tenant {tenant_id!r} has no key {key_id!r}", "key_id")
        return {"tenant": tenant_id, "key_id": key_id, "revoked": True}

    @app.put("/admin/budget")
    async def admin_budget(self, body: BudgetRequest) -> dict:
        return await self._call("router", self.router.set_budget.remote(body.usd_per_request))
