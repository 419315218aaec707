"""The Ingress deployment: the HTTP API of DESIGN.md (OpenAI-compatible chat, feedback, models,
health, admin). It validates, then calls Embedder -> Router -> Provider and charges the Router
the realised cost (usage x registry prices) when the answer arrives.

No `from __future__ import annotations` here: FastAPI must see the real annotation types."""


import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

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
    FeedbackRequest,
    FeedbackResponse,
    ParetoserveInfo,
    ProviderChunk,
    ProviderRequest,
    RepriceRequest,
    completion_id,
    error_body,
)
from core.registry import ModelSpec
from deployments.http_errors import HTTPError, error_response, to_http

log = logging.getLogger("ray.serve")
app = FastAPI(
    title="paretoserve",
    version="0.1.0",
    description="Budget-paced, self-adapting LLM router (OpenAI-compatible).",
)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    locs = [".".join(str(p) for p in e["loc"] if p != "body") for e in errors]
    message = "; ".join(f"{loc or 'body'}: {e['msg']}" for loc, e in zip(locs, errors, strict=True))
    body = ErrorBody.of(message, param=locs[0] if locs else None, code="invalid_value")
    return JSONResponse(body.model_dump(), status_code=422)


@app.exception_handler(HTTPError)
async def _http_error(_: Request, exc: HTTPError) -> JSONResponse:
    return error_response(exc)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, keys: list[str]) -> bool:
    # Compare with every key in constant time; never short-circuit on the first match.
    return bool(token) and sum(hmac.compare_digest(token, k) for k in keys) > 0


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
        # Keys are read once at start-up and never logged.
        self._admin_key = os.environ.get(admin_key_env, "")
        self._api_keys = [k for k in os.environ.get(api_keys_env, "").split(",") if k.strip()]
        self._admin_env = admin_key_env
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

    # ---- auth -------------------------------------------------------------------------

    def _client(self, request: Request) -> None:
        if self._api_keys and not _matches(_bearer(request), self._api_keys):
            raise HTTPError(401, "missing or invalid API key", type="authentication_error")

    def _admin(self, request: Request) -> None:
        if not self._admin_key:
            raise HTTPError(
                401,
                f"admin API disabled: {self._admin_env} is not set",
                type="authentication_error",
            )
        if not _matches(_bearer(request), [self._admin_key]):
            raise HTTPError(401, "missing or invalid admin key", type="authentication_error")

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
        self._client(request)
        start = time.perf_counter()
        text = body.prompt_text()
        if not text.strip():
            raise HTTPError(422, "messages: the prompt is empty", "messages")
        if len(text) > self.max_prompt_chars:
            raise HTTPError(
                413,
                f"messages: prompt has {len(text)} characters, more than "
                f"the limit of {self.max_prompt_chars}",
                "messages",
                code="prompt_too_long",
            )
        x = await self._call("embed", self.embedder.embed.remote(text))
        limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else None
        model = None if body.model == "auto" else body.model
        decision = await self._call("route", self.router.route.remote(x, limits or None, model))
        spec = ModelSpec.model_validate(decision["spec"])
        rid = decision["request_id"]
        req = ProviderRequest.from_chat(rid, body, spec)
        provider = self.providers[spec.provider]
        tags = {
            "model": spec.id,
            "routed": str(decision["routed"]).lower(),
            "stream": str(body.stream).lower(),
        }
        self._m_requests.inc(tags=tags)
        if body.stream:
            return await self._stream(body, req, spec, decision, provider)
        resp = await self._call("provider", provider.complete.remote(req))
        cost = realised_cost_usd(
            resp.usage.prompt_tokens,
            resp.usage.completion_tokens,
            spec.input_per_m,
            spec.output_per_m,
        )
        await self._call("charge", self.router.charge.remote(rid, cost, spec.id))
        out = ChatCompletionResponse.build(resp, self._info(decision, cost, resp.recorded_reward))
        self._m_hop.observe((time.perf_counter() - start) * 1000, tags={"hop": "total"})
        log.info(
            "chat request_id=%s model=%s routed=%s cost_usd=%.3g",
            rid,
            spec.id,
            decision["routed"],
            cost,
        )
        return JSONResponse(out.model_dump(mode="json"), headers=self._headers(rid, cost))

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

    @staticmethod
    def _headers(rid: str, cost: float | None) -> dict[str, str]:
        headers = {"x-request-id": rid}
        if cost is not None:
            headers["x-paretoserve-cost-usd"] = f"{cost:.10g}"
        return headers

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
                return ChatCompletionChunk(
                    id=cid,
                    created=created,
                    model=spec.id,
                    choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                    **extra,
                ).sse()

            yield chunk(Delta(role="assistant", content=""))
            last: ProviderChunk = first
            try:
                current = first
                while True:
                    if current.delta:
                        yield chunk(Delta(content=current.delta))
                    last = current
                    current = await chunks.__anext__()
            except StopAsyncIteration:
                pass
            except Exception as exc:  # mid-stream failure: a clear error event, then stop
                err = to_http(exc)
                payload = error_body(err.message, err.type, err.param, err.code)
                yield f"data: {json.dumps(payload)}\n\n"
                yield SSE_DONE
                return
            usage = last.usage
            cost = 0.0
            if usage is not None:
                cost = realised_cost_usd(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    spec.input_per_m,
                    spec.output_per_m,
                )
                await self.router.charge.remote(rid, cost, spec.id)
            info = self._info(decision, cost, last.recorded_reward)
            yield chunk(
                Delta(),
                last.finish_reason or "stop",
                paretoserve=info,
                usage=CompletionUsage.of(usage) if usage and body.include_usage else None,
            )
            yield SSE_DONE

        return StreamingResponse(
            events(), media_type="text/event-stream", headers=self._headers(rid, None)
        )

    # ---- feedback, models, health -------------------------------------------------------

    @app.post("/v1/feedback")
    async def post_feedback(self, body: FeedbackRequest, request: Request) -> FeedbackResponse:
        self._client(request)
        status = await self._call(
            "feedback", self.feedback.submit.remote(body.request_id, body.reward)
        )
        return FeedbackResponse(status=status, request_id=body.request_id)

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._client(request)
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

    # ---- admin --------------------------------------------------------------------------

    @app.get("/admin/models")
    async def admin_models(self, request: Request) -> list[dict]:
        self._admin(request)
        return await self._call("registry", self.registry.list.remote())

    @app.post("/admin/models", status_code=201)
    async def admin_add(self, body: AddModelRequest, request: Request) -> dict:
        self._admin(request)
        return await self._call("registry", self.registry.add.remote(body.to_spec()))

    @app.patch("/admin/models/{model_id:path}")
    async def admin_reprice(self, model_id: str, body: RepriceRequest, request: Request) -> dict:
        self._admin(request)
        return await self._call(
            "registry", self.registry.reprice.remote(model_id, body.input_per_m, body.output_per_m)
        )

    @app.delete("/admin/models/{model_id:path}")
    async def admin_remove(self, model_id: str, request: Request) -> dict:
        self._admin(request)
        return await self._call("registry", self.registry.remove.remote(model_id))

    @app.get("/admin/state")
    async def admin_state(self, request: Request) -> dict:
        self._admin(request)
        return await self._call("router", self.router.state.remote())

    @app.put("/admin/budget")
    async def admin_budget(self, body: BudgetRequest, request: Request) -> dict:
        self._admin(request)
        return await self._call("router", self.router.set_budget.remote(body.usd_per_request))
