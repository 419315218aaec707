"""`RouteDecision`: the Router's typed answer to route / resume / fallback, as it crosses Ray."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from core.method.registry import ModelSpec


class _CoreDecision(Protocol):
    """What `RouteDecision.of` reads of the core Router's decision (core.method.router)."""

    request_id: str
    model: str
    t: int
    dual: float
    forced: bool
    direct: bool
    tenant: str | None
    max_tokens: int | None


class RouteDecision(BaseModel):
    """The model a request goes to, with its registry entry (so a provider replica needs no
    model table) and what the response reports about the decision. Frozen and picklable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    model: str = Field(description="the registry id of the chosen model (= spec.id)")
    t: int = Field(description="the bandit's step at decision time")
    dual: float = Field(description="the pacer's dual variable at decision time")
    forced: bool = Field(description="a forced-exploration pull of a newly added model")
    routed: bool = Field(description="the bandit chose (model 'auto'); False: the caller named it")
    spec: ModelSpec = Field(description="the chosen model's registry entry")
    tenant: str | None = Field(None, description="the tenant paying (None: the service)")
    max_tokens: int | None = Field(
        None, description="a capped tenant's request: the output limit its reservation covers"
    )

    @classmethod
    def of(cls, d: _CoreDecision, spec: ModelSpec) -> RouteDecision:
        """From the core Router's decision and the chosen model's registry entry."""
        return cls(
            request_id=d.request_id,
            model=d.model,
            t=int(d.t),
            dual=float(d.dual),
            forced=bool(d.forced),
            routed=not d.direct,
            spec=spec,
            tenant=d.tenant,
            max_tokens=d.max_tokens,
        )
