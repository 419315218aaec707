"""The model table: specs, runtime changes, and a version number bumped by every change."""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.method.costs import blended_price_per_1k


class SpeedClass(str, Enum):
    FAST = "fast"
    BALANCED = "balanced"
    SLOW = "slow"


# Sane bounds on a list price (US$ per million tokens): outside them a price is a typo, and a
# near-zero one would make cost ratios overflow (the router divides realised cost by price).
# The dearest list prices of 2025 are a few hundred US$/M, far below the ceiling.
MIN_PRICE_PER_M = 1e-6
MAX_PRICE_PER_M = 10_000.0
MAX_CONTEXT_LENGTH = 100_000_000  # tokens; the longest context windows of 2025 are 10M
MAX_SIM_WAIT_S = 600.0  # the simulated provider's injected waits (seconds, x time_scale)


class SimBehaviour(BaseModel):
    """Runtime knobs of the simulated provider for one model (PATCH /admin/models/{id} with
    `simulation`, or a serve_config model entry). Carried in every ProviderRequest, so every
    provider replica sees the same setting. Real provider clients ignore it.

    Faults are drawn once per attempt from a RNG seeded by (simulator seed, model, request id,
    attempt): one uniform picks at most one of error / timeout / rate limit (their rates must
    sum to at most 1); an independent one picks a latency spike."""

    # strict: a number given as a string is an error, not a silent coercion (ints are fine)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    reward_scale: float = Field(
        1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="multiplies the reward; in [0, 1]"
    )
    quality: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="mean drawn reward override; in [0, 1]",
    )
    reward_value: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="every answer gets this reward (the replay's quality regression); "
        "overrides reward_scale and quality; in [0, 1]",
    )
    error_rate: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="share answered 5xx; in [0, 1]"
    )
    error_status: int = Field(
        503, ge=500, le=599, description="status of an injected error; in [500, 599]"
    )
    timeout_rate: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="share timed out; in [0, 1]"
    )
    timeout_s: float = Field(
        10.0,
        ge=0.0,
        le=MAX_SIM_WAIT_S,
        allow_inf_nan=False,
        description="wait before a timeout (x time_scale); seconds in [0, 600]",
    )
    rate_limit_rate: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="share answered 429; in [0, 1]"
    )
    retry_after_s: float = Field(
        1.0,
        ge=0.0,
        le=MAX_SIM_WAIT_S,
        allow_inf_nan=False,
        description="Retry-After of a 429; seconds in [0, 600]",
    )
    latency_spike_rate: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="share delayed; in [0, 1]"
    )
    latency_spike_s: float = Field(
        5.0,
        ge=0.0,
        le=MAX_SIM_WAIT_S,
        allow_inf_nan=False,
        description="added before the first token (x time_scale); seconds in [0, 600]",
    )

    @model_validator(mode="after")
    def _rates_fit(self) -> SimBehaviour:
        total = self.error_rate + self.timeout_rate + self.rate_limit_rate
        if total > 1.0 + 1e-12:
            raise ValueError(
                f"error_rate + timeout_rate + rate_limit_rate must be at most 1, got {total:.4g}"
            )
        return self


# What a request may need of a model (core.service.capabilities derives it from the request).
Capability = Literal["tools", "vision", "json_schema"]
ALL_CAPABILITIES: tuple[Capability, ...] = ("json_schema", "tools", "vision")


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., min_length=1, max_length=200, description="the id clients use")
    provider: str = Field("simulated", min_length=1, description="provider client name")
    provider_model: str | None = Field(None, description="provider-side name (default: id)")
    input_per_m: float = Field(
        ...,
        ge=MIN_PRICE_PER_M,
        le=MAX_PRICE_PER_M,
        allow_inf_nan=False,
        description="US$ per million input tokens, in [1e-6, 10000]",
    )
    output_per_m: float = Field(
        ...,
        ge=MIN_PRICE_PER_M,
        le=MAX_PRICE_PER_M,
        allow_inf_nan=False,
        description="US$ per million output tokens, in [1e-6, 10000]",
    )
    context_length: int = Field(
        128_000, ge=1, le=MAX_CONTEXT_LENGTH, description="tokens, in [1, 100000000]"
    )
    max_output_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_CONTEXT_LENGTH,
        description="the most tokens one answer may have (None: up to the context window)",
    )
    capabilities: tuple[Capability, ...] = Field(
        ALL_CAPABILITIES,
        description="what the model can serve, among tools, vision, json_schema (default: all "
        "three); requests that need one go only to models that declare it",
    )
    base_url: str | None = None
    speed: SpeedClass = SpeedClass.BALANCED
    simulation: SimBehaviour | None = Field(
        None, description="simulated provider only: reward scale, quality, injected faults"
    )

    @field_validator("capabilities")
    @classmethod
    def _unique_sorted(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))

    @field_validator("input_per_m", "output_per_m")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("price must be finite")
        return v

    @property
    def upstream_name(self) -> str:
        return self.provider_model or self.id

    @property
    def blended_price(self) -> float:
        return blended_price_per_1k(self.input_per_m, self.output_per_m)


class ChangeKind(str, Enum):
    ADD = "add"
    REMOVE = "remove"
    REPRICE = "reprice"
    SIMULATE = "simulate"


class RegistryChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    kind: ChangeKind
    model_id: str
    spec: ModelSpec | None = None
    at_unix: float


class RegistryError(ValueError):
    pass


class UnknownModelError(RegistryError):
    pass


class UnknownProviderError(RegistryError):
    pass


class ModelRegistry:
    """Active models plus the specs of removed ones (so a re-add can resume its arm)."""

    def __init__(self, models: list[ModelSpec] | None = None) -> None:
        self.specs: dict[str, ModelSpec] = {}
        self.active: dict[str, bool] = {}
        self.changes: list[RegistryChange] = []
        for spec in models or []:
            self.add(spec)

    @property
    def version(self) -> int:
        return len(self.changes)

    def active_models(self) -> list[ModelSpec]:
        return [s for mid, s in self.specs.items() if self.active[mid]]

    def get(self, model_id: str) -> ModelSpec:
        if not self.active.get(model_id):
            raise UnknownModelError(f"unknown model {model_id!r}")
        return self.specs[model_id]

    def _record(self, kind: ChangeKind, model_id: str, spec: ModelSpec | None) -> RegistryChange:
        change = RegistryChange(
            version=self.version + 1, kind=kind, model_id=model_id, spec=spec, at_unix=time.time()
        )
        self.changes.append(change)
        return change

    def add(self, spec: ModelSpec) -> RegistryChange:
        if self.active.get(spec.id):
            raise RegistryError(f"model {spec.id!r} is already registered")
        self.specs[spec.id] = spec
        self.active[spec.id] = True
        return self._record(ChangeKind.ADD, spec.id, spec)

    def remove(self, model_id: str) -> RegistryChange:
        self.get(model_id)
        if sum(self.active.values()) == 1:
            raise RegistryError(f"cannot remove {model_id!r}: it is the last active model")
        self.active[model_id] = False
        return self._record(ChangeKind.REMOVE, model_id, None)

    def reprice(
        self, model_id: str, input_per_m: float | None = None, output_per_m: float | None = None
    ) -> RegistryChange:
        old = self.get(model_id)
        update = {
            k: v
            for k, v in (("input_per_m", input_per_m), ("output_per_m", output_per_m))
            if v is not None
        }
        if not update:
            raise RegistryError("reprice needs input_per_m or output_per_m")
        # Validate through the model so bad prices are rejected before anything changes.
        new = ModelSpec.model_validate({**old.model_dump(), **update})
        self.specs[model_id] = new
        return self._record(ChangeKind.REPRICE, model_id, new)

    def refresh(self, spec: ModelSpec) -> None:
        """Replace an active model's spec with one at the same prices (provider, base URL,
        limits, simulation): nothing an arm depends on, so no change is recorded."""
        old = self.get(spec.id)
        if (old.input_per_m, old.output_per_m) != (spec.input_per_m, spec.output_per_m):
            raise RegistryError(f"refresh of {spec.id!r} changes its prices: reprice it")
        self.specs[spec.id] = spec

    def simulate(self, model_id: str, behaviour: SimBehaviour | dict | None) -> RegistryChange:
        """Set (or with None clear) a model's simulated-provider behaviour."""
        old = self.get(model_id)
        sim = None if behaviour is None else SimBehaviour.model_validate(behaviour)
        new = old.model_copy(update={"simulation": sim})
        self.specs[model_id] = new
        return self._record(ChangeKind.SIMULATE, model_id, new)

    def to_json(self) -> dict:
        return {
            "specs": [s.model_dump(mode="json") for s in self.specs.values()],
            "active": self.active,
            "changes": [c.model_dump(mode="json") for c in self.changes],
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelRegistry:
        reg = cls()
        reg.specs = {s["id"]: ModelSpec.model_validate(s) for s in data["specs"]}
        reg.active = {k: bool(v) for k, v in data["active"].items()}
        reg.changes = [RegistryChange.model_validate(c) for c in data["changes"]]
        return reg
