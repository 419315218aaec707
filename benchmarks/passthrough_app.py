"""The service benchmark's floor: one Serve deployment that answers chats with no routing.

`POST /v1/chat/completions` parses the same `core.service.protocol.ChatCompletionRequest` as
the real Ingress, calls the same `deployments.clients.simulated.SimulatedClient` (same
`SimulatorConfig`) in-process for a fixed model, and returns the same
`ChatCompletionResponse` shape and headers (the request id is Serve's, as in the Ingress).
There is no embedder, router, registry, charge or handle call: what the real app costs above
this is the price of routing (see benchmarks/bench_service.py and docs/benchmarks.md, "Service
latency and throughput").

A body naming a configured model gets that model (like the real app's bypass); `"auto"` gets
the fixed default model. `GET /healthz` answers `{"status": "ok"}`.

Like every benchmark, this module sits above `deployments` (it imports the simulated client):
it exists to benchmark the service. Only benchmarks/bench_service.py imports it.

No `from __future__ import annotations` here: FastAPI must see the real annotation types.
"""

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from core.method.costs import realised_cost_usd
from core.method.registry import ModelSpec
from core.replay.simulator import SimulatorConfig
from core.service.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ParetoserveInfo,
    ProviderRequest,
    error_body,
)
from deployments.clients.simulated import SimulatedClient

app = FastAPI(title="paretoserve passthrough (benchmark floor)", version="0.1.0")


# Same replica settings as the real Ingress (deployments/ingress.py), so the two front doors
# get the same CPU share, concurrency limit and autoscaling.
@serve.deployment(
    name="Passthrough",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.2},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
@serve.ingress(app)
class Passthrough:
    def __init__(
        self,
        models: list[dict[str, Any]],
        simulator: dict[str, Any] | None = None,
        model_id: str | None = None,
    ) -> None:
        specs = [ModelSpec.model_validate(m) for m in models]
        if not specs:
            raise ValueError("models: give at least one model")
        self.specs = {s.id: s for s in specs}
        if model_id is not None and model_id not in self.specs:
            raise ValueError(f"model_id: {model_id!r} is not one of {sorted(self.specs)}")
        self.default = self.specs[model_id] if model_id is not None else specs[0]
        self.client = SimulatedClient(SimulatorConfig.model_validate(simulator or {}))

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest, request: Request) -> JSONResponse:
        text = body.prompt_text()
        if not text.strip():
            return JSONResponse(
                error_body("messages: the prompt is empty", param="messages"), status_code=422
            )
        spec = self.specs.get(body.model, self.default)
        # like the Ingress: Serve's request id (its proxy sets x-request-id and echoes it)
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        resp = await self.client.complete(ProviderRequest.from_chat(rid, body, spec))
        cost = realised_cost_usd(
            resp.usage.prompt_tokens,
            resp.usage.completion_tokens,
            spec.input_per_m,
            spec.output_per_m,
        )
        info = ParetoserveInfo(
            request_id=rid,
            cost_usd=cost,
            routed=False,
            forced=False,
            dual=0.0,
            recorded_reward=resp.recorded_reward,
        )
        out = ChatCompletionResponse.build(resp, info)
        return JSONResponse(
            out.model_dump(mode="json"), headers={"x-paretoserve-cost-usd": f"{cost:.10g}"}
        )

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def build_passthrough(
    models: list[ModelSpec | dict[str, Any]],
    simulator: SimulatorConfig | dict[str, Any] | None = None,
    model_id: str | None = None,
) -> Application:
    """The app: `models` and `simulator` as in serve_config.yaml's `models` and
    `providers.simulated.options`; `model_id` answers `"auto"` (default: the first model)."""
    model_dicts = [ModelSpec.model_validate(m).model_dump(mode="json") for m in models]
    if isinstance(simulator, SimulatorConfig):
        sim = simulator.model_dump(mode="json", exclude_unset=True)
    else:
        sim = dict(simulator or {})
    SimulatorConfig.model_validate(sim)  # a bad option fails here, not in a replica
    return Passthrough.bind(model_dicts, sim, model_id)
