"""The Ingress deployment: the HTTP API of DESIGN.md (OpenAI-compatible chat, feedback, models,
health, admin). It validates, then calls Embedder -> Router -> Provider and charges the Router
the realised cost (usage x registry prices) when the answer arrives.

The request id is Serve's own (the `x-request-id` request header, set by Serve's proxy when the
client sends none): Serve echoes it on the response and tags every hop's log lines with it,
and the Router keys the decision, the charge and the feedback by it.

No `from __future__ import annotations` here: FastAPI must see the real annotation types."""

import asyncio
import contextvars
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.method.costs import realised_cost_usd
from core.method.faults import can_fall_back
from core.method.registry import ModelSpec
from core.replay.simulator import estimate_tokens
from core.service.protocol import (
    SSE_DONE,
    AddModelRequest,
    BudgetRequest,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ErrorBody,
    ExplainRequest,
    FeedbackRequest,
    FeedbackResponse,
    ParetoserveInfo,
    ProviderRequest,
    RepriceRequest,
    Usage,
    completion_id,
    error_body,
)
from deployments.clients.errors import ProviderError
from deployments.http_errors import HTTPError, cause, error_response, to_http
from deployments.router_calls import retrying

log = logging.getLogger("ray.serve")
app = FastAPI(
    title="paretoserve",
    version="0.1.0",
    description="Budget-paced, self-adapting LLM router (OpenAI-compatible).",
)
MAX_REQUEST_ID_CHARS = 200  # the feedback API accepts ids up to this length


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    # A JSON decode error's loc holds a character offset, not a field.
    locs = [
        "" if e.get("type") == "json_invalid" else ".".join(str(p) for p in e["loc"][1:])
        for e in errors
    ]
    message = "; ".join(f"{loc or 'body'}: {e['msg']}" for loc, e in zip(locs, errors, strict=True))
    body = ErrorBody.of(message, param=(locs[0] or None) if locs else None, code="invalid_value")
    return JSONResponse(body.model_dump(), status_code=422)


@app.exception_handler(HTTPError)
async def _http_error(_: Request, exc: HTTPError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404, 405 and the like in OpenAI's error shape too."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(HTTPError(exc.status_code, str(exc.detail), type=kind))


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, keys: list[str]) -> bool:
    # Compare with every key in constant time; never short-circuit on the first match.
    return bool(token) and sum(hmac.compare_digest(token, k) for k in keys) > 0


_CLIENT_PATHS = ("/v1/chat/completions", "/v1/feedback", "/v1/models")


@app.middleware("http")
async def _authenticate(request: Request, call_next):
    """Keys are checked before anything reads the body, so a caller without one learns only
    that it needs one. The keys sit in app.state, set when the replica starts."""
    path, state = request.url.path, request.app.state
    if path.startswith("/admin"):
        if not state.admin_key:
            message = f"admin API disabled: {state.admin_env} is not set"
            return error_response(HTTPError(401, message, type="authentication_error"))
        if not _matches(_bearer(request), [state.admin_key]):
            message = "missing or invalid admin key"
            return error_response(HTTPError(401, message, type="authentication_error"))
    elif path in _CLIENT_PATHS and state.api_keys:
        if not _matches(_bearer(request), state.api_keys):
            message = "missing or invalid API key"
            return error_response(HTTPError(401, message, type="authentication_error"))
    return await call_next(request)


def _request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    if len(rid) > MAX_REQUEST_ID_CHARS:
        raise HTTPError(
            400, f"x-request-id is longer than {MAX_REQUEST_ID_CHARS} characters", "x-request-id"
        )
    return rid


def _cost(spec: ModelSpec, usage: Usage) -> float:
    return realised_cost_usd(
        usage.prompt_tokens, usage.completion_tokens, spec.input_per_m, spec.output_per_m
    )


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator when the response ends in any way. Starlette leaves a body
    abandoned by a client hang-up to the garbage collector, so its cleanup (the charge for
    what the provider already generated) would run at some unknown later time."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _so_far(req: ProviderRequest, streamed: list[str]) -> Usage:
    """Estimated usage of a stream that ended early (or whose server reports none)."""
    return Usage(
        prompt_tokens=estimate_tokens(len(req.prompt_text)),
        completion_tokens=estimate_tokens(sum(map(len, streamed))) if streamed else 0,
    )


_HOP_BUCKETS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.2},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
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
    ) -> None:
        self.embedder, self.router, self.feedback = embedder, router, feedback
        self.registry, self.providers = registry, providers
        self.max_prompt_chars = max_prompt_chars
        # Read once at start-up, kept for the auth middleware, never logged.
        app.state.admin_key = os.environ.get(admin_key_env, "")
        app.state.admin_env = admin_key_env
        app.state.api_keys = [
            k.strip() for k in os.environ.get(api_keys_env, "").split(",") if k.strip()
        ]
        self._detached: set[asyncio.Task] = set()
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

    async def _call(self, hop: str, response):
        start = time.perf_counter()
        try:
            return await response
        except Exception as exc:
            err = to_http(exc)
            self._m_errors.inc(tags={"status": str(err.status)})
            raise err from None
        finally:
            self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": hop})

    async def _provider(self, hop: str, response):
        """Like _call, but a provider's own failure comes back as the ProviderError it is (so
        the request can fall back); anything else becomes an HTTPError."""
        start = time.perf_counter()
        try:
            return await response
        except Exception as exc:
            if isinstance(cause(exc), ProviderError):
                raise cause(exc) from None
            err = to_http(exc)
            self._m_errors.inc(tags={"status": str(err.status)})
            raise err from None
        finally:
            self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": hop})

    async def _fall_back(
        self, decision: dict, exc: ProviderError, limits: dict | None, failed: list[str]
    ) -> dict:
        """The decided model failed (after its provider's retries). An auto-routed request
        moves to the Router's next-best model (the decision is re-keyed there); an explicit
        model, the caller's own bad input, or no model left ends the request with the
        provider's error. Failed models are appended to `failed`."""
        rid, model = decision["request_id"], decision["model"]
        if decision["routed"] and can_fall_back(exc.status, exc.retryable):
            nxt = await self._call(
                "fallback",
                self.router.fallback.remote(rid, model, exc.status, exc.retry_after_s, limits),
            )
            failed.append(model)
            if nxt is not None:
                log.warning("fallback %s -> %s after %s: %s", model, nxt["model"], exc.status, exc)
                return nxt
        else:
            cool = can_fall_back(exc.status, exc.retryable)  # not for the caller's bad input
            await self._call(
                "fallback",
                self.router.fail.remote(rid, model, exc.status, exc.retry_after_s, cool),
            )
        err = to_http(exc)
        self._m_errors.inc(tags={"status": str(err.status)})
        raise err

    # ---- chat -------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest, request: Request):
        start = time.perf_counter()
        rid = _request_id(request)
        text = body.prompt_text()
        if not text.strip():
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
        x = await self._call("embed", self.embedder.embed.remote(text))
        limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else None
        model = None if body.model == "auto" else body.model
        decision = await self._call("route", self._decide(x, limits or None, model, rid))
        spec = ModelSpec.model_validate(decision["spec"])
        req = ProviderRequest.from_chat(rid, body, spec)
        if body.stream:
            return await self._stream(body, req, decision, limits or None, x)
        failed: list[str] = []
        while True:
            try:
                resp = await self._provider(
                    "provider", self.providers[spec.provider].complete.remote(req)
                )
                break
            except ProviderError as exc:
                decision = await self._fall_back(decision, exc, limits or None, failed)
                spec = ModelSpec.model_validate(decision["spec"])
                req = ProviderRequest.for_model(req, spec)
        self._count(spec, decision, body.stream)
        cost = _cost(spec, resp.usage)
        charge = self._send_charge(rid, cost, spec.id, x, decision["forced"])
        await self._call("charge", asyncio.shield(charge))
        info = self._info(decision, cost, resp.recorded_reward, failed)
        out = ChatCompletionResponse.build(resp, info)
        self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": "total"})
        log.info("chat model=%s routed=%s cost_usd=%.3g", spec.id, decision["routed"], cost)
        return JSONResponse(
            out.model_dump(mode="json"), headers={"x-paretoserve-cost-usd": f"{cost:.10g}"}
        )

    async def _decide(self, x, limits: dict | None, model: str | None, rid: str) -> dict:
        """Route; if the Router died mid-call, pick up the decision if it survived, else route
        again under the same request id."""
        first = True

        async def once() -> dict:
            nonlocal first
            if not first:
                d = await self.router.resume.remote(rid, model is not None)
                if d is not None:
                    return d
            first = False
            return await self.router.route.remote(x, limits, model, rid)

        return await retrying(once, self._router_retry)

    def _router_retry(self) -> None:
        self._m_router_retries.inc()

    def _count(self, spec: ModelSpec, decision: dict, stream: bool) -> None:
        self._m_requests.inc(
            tags={
                "model": spec.id,
                "routed": str(decision["routed"]).lower(),
                "stream": str(stream).lower(),
            }
        )

    @staticmethod
    def _info(
        decision: dict, cost: float, reward: float | None, failed: list[str] | None = None
    ) -> ParetoserveInfo:
        return ParetoserveInfo(
            request_id=decision["request_id"],
            cost_usd=cost,
            routed=decision["routed"],
            forced=decision["forced"],
            dual=decision["dual"],
            recorded_reward=reward,
            fallback_from=list(failed) if failed else None,
        )

    def _send_charge(
        self, rid: str, cost: float, model: str, x: list[float], forced: bool
    ) -> asyncio.Task:
        """Charge the Router in a task of its own, outside the request's context: when a client
        hangs up, Serve cancels every call its request made, and a charge must land anyway.
        The context goes along so that a restarted Router can restore a lost decision."""

        async def charge() -> None:
            try:
                call = self.router.charge.remote
                await retrying(lambda: call(rid, cost, model, x, forced), self._router_retry)
            except Exception:
                log.exception("charge of %s ($%.6g to %s) failed", rid, cost, model)
                raise

        task = asyncio.get_running_loop().create_task(charge(), context=contextvars.Context())
        self._detached.add(task)  # kept referenced until done
        task.add_done_callback(self._detached.discard)
        return task

    async def _stream(
        self,
        body: ChatCompletionRequest,
        req: ProviderRequest,
        decision: dict,
        limits: dict | None,
        x: list[float],
    ) -> StreamingResponse:
        rid = decision["request_id"]
        spec = req.spec
        failed: list[str] = []
        # Wait for the first chunk here: an error before any token falls back like a plain
        # request, and with no fallback left it is a plain HTTP error.
        while True:
            provider = self.providers[spec.provider]
            chunks = provider.options(stream=True).stream.remote(req).__aiter__()
            try:
                first = await self._provider("provider_first_chunk", chunks.__anext__())
                break
            except ProviderError as exc:
                decision = await self._fall_back(decision, exc, limits, failed)
                spec = ModelSpec.model_validate(decision["spec"])
                req = ProviderRequest.for_model(req, spec)
        self._count(spec, decision, True)

        async def events() -> AsyncIterator[str]:
            cid, created = completion_id(rid), int(time.time())

            def chunk(delta: Delta, finish=None, **extra) -> str:
                choice = ChunkChoice(delta=delta, finish_reason=finish)
                return ChatCompletionChunk(
                    id=cid, created=created, model=spec.id, choices=[choice], **extra
                ).sse()

            last, streamed, completed = first, [], False
            try:
                yield chunk(Delta(role="assistant", content=""))
                current = first
                while True:
                    if current.delta:
                        streamed.append(current.delta)
                        yield chunk(Delta(content=current.delta))
                    last = current
                    current = await chunks.__anext__()
            except StopAsyncIteration:
                completed = True
            except Exception as exc:  # mid-stream failure: a clear error event, then stop
                err = to_http(exc)
                payload = error_body(err.message, err.type, err.param, err.code)
                yield f"data: {json.dumps(payload)}\n\n"
                yield SSE_DONE
                return
            finally:
                if not completed:  # failed, or the client went away: the provider still bills
                    chunks.cancel()  # stop the upstream generation
                    so_far = _cost(spec, _so_far(req, streamed))
                    self._send_charge(rid, so_far, spec.id, x, decision["forced"])
            usage = last.usage or _so_far(req, streamed)  # some servers send no usage
            cost = _cost(spec, usage)
            await asyncio.shield(self._send_charge(rid, cost, spec.id, x, decision["forced"]))
            yield chunk(
                Delta(),
                last.finish_reason or "stop",
                paretoserve=self._info(decision, cost, last.recorded_reward, failed),
                usage=CompletionUsage.of(usage) if body.include_usage else None,
            )
            yield SSE_DONE

        return _ClosingStreamingResponse(events(), media_type="text/event-stream")

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
        return await self._call("router", self.router.state.remote())

    @app.post("/admin/explain")
    async def admin_explain(self, body: ExplainRequest) -> dict:
        """Per model: estimated quality, uncertainty bonus, cost penalty, score, eligibility."""
        x = await self._call("embed", self.embedder.embed.remote(body.prompt))
        limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else None
        return await self._call("router", self.router.explain.remote(x, limits or None))

    @app.put("/admin/budget")
    async def admin_budget(self, body: BudgetRequest) -> dict:
        return await self._call("router", self.router.set_budget.remote(body.usd_per_request))
