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

from core.costs import realised_cost_usd
from core.protocol import (
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
from core.registry import ModelSpec
from core.simulator import estimate_tokens
from deployments.http_errors import HTTPError, error_response, to_http

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
        decision = await self._call(
            "route", self.router.route.remote(x, limits or None, model, rid)
        )
        spec = ModelSpec.model_validate(decision["spec"])
        req = ProviderRequest.from_chat(rid, body, spec)
        provider = self.providers[spec.provider]
        self._m_requests.inc(
            tags={
                "model": spec.id,
                "routed": str(decision["routed"]).lower(),
                "stream": str(body.stream).lower(),
            }
        )
        if body.stream:
            return await self._stream(body, req, spec, decision, provider)
        resp = await self._call("provider", provider.complete.remote(req))
        cost = _cost(spec, resp.usage)
        await self._call("charge", asyncio.shield(self._send_charge(rid, cost, spec.id)))
        out = ChatCompletionResponse.build(resp, self._info(decision, cost, resp.recorded_reward))
        self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": "total"})
        log.info("chat model=%s routed=%s cost_usd=%.3g", spec.id, decision["routed"], cost)
        return JSONResponse(
            out.model_dump(mode="json"), headers={"x-paretoserve-cost-usd": f"{cost:.10g}"}
        )

    @staticmethod
    def _info(decision: dict, cost: float, reward: float | None) -> ParetoserveInfo:
        return ParetoserveInfo(
            request_id=decision["request_id"],
            cost_usd=cost,
            routed=decision["routed"],
            forced=decision["forced"],
            dual=decision["dual"],
            recorded_reward=reward,
        )

    def _send_charge(self, rid: str, cost: float, model: str) -> asyncio.Task:
        """Charge the Router in a task of its own, outside the request's context: when a client
        hangs up, Serve cancels every call its request made, and a charge must land anyway."""

        async def charge() -> None:
            try:
                await self.router.charge.remote(rid, cost, model)
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
        spec: ModelSpec,
        decision: dict,
        provider: DeploymentHandle,
    ) -> StreamingResponse:
        rid = decision["request_id"]
        chunks = provider.options(stream=True).stream.remote(req).__aiter__()
        # Wait for the first chunk here so that an error before any token is a plain HTTP error.
        first = await self._call("provider_first_chunk", chunks.__anext__())

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
                    self._send_charge(rid, _cost(spec, _so_far(req, streamed)), spec.id)
            usage = last.usage or _so_far(req, streamed)  # some servers send no usage
            cost = _cost(spec, usage)
            await asyncio.shield(self._send_charge(rid, cost, spec.id))
            yield chunk(
                Delta(),
                last.finish_reason or "stop",
                paretoserve=self._info(decision, cost, last.recorded_reward),
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
        return await self._call(
            "registry",
            self.registry.reprice.remote(model_id, body.input_per_m, body.output_per_m),
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
