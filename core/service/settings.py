"""Typed configuration of the service (the graph builder's `args`), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.method.config import (
    BanditConfig,
    BudgetUSD,
    CostSignal,
    PacerConfig,
    PacerMode,
    RouterConfig,
)
from core.method.faults import CooldownConfig, RetryPolicy
from core.method.registry import ModelSpec
from core.state.durable import DurabilityConfig


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderSettings(_Strict):
    """One provider client deployment: which client, and its options (see deployments/clients)."""

    kind: Literal["simulated", "openai", "anthropic"]
    options: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="retries of a failed call on the same model"
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="a fixed number of replicas instead of autoscaling (None: autoscale)",
    )


class RouterTuning(_Strict):
    """The method's knobs; the defaults are the paper's except the pacer's cost signal."""

    bandit: BanditConfig = BanditConfig()
    pacer_mode: PacerMode = PacerMode.ADAPTIVE
    cost_signal: CostSignal = CostSignal.EXPECTED_COST
    forced_exploration_pulls: int = Field(20, ge=0)
    seed: int = 0

    def router_config(self, budget_usd: float) -> RouterConfig:
        return RouterConfig(
            bandit=self.bandit,
            pacer=PacerConfig(
                budget_usd=budget_usd, mode=self.pacer_mode, cost_signal=self.cost_signal
            ),
            forced_exploration_pulls=self.forced_exploration_pulls,
            seed=self.seed,
        )


class RouterSettings(_Strict):
    """What the Router deployment needs: the method, its initial table, and where state lives."""

    budget_usd_per_request: BudgetUSD
    models: list[ModelSpec] = Field(..., min_length=1)
    tuning: RouterTuning = RouterTuning()
    state_path: str
    priors_path: str | None = None
    durability: DurabilityConfig = DurabilityConfig()
    faults: CooldownConfig = CooldownConfig()


class AppArgs(_Strict):
    """`args` of graphs.app:build_app, as written in serve_config.yaml."""

    budget_usd_per_request: BudgetUSD
    models: list[ModelSpec] = Field(..., min_length=1)
    providers: dict[str, ProviderSettings] = Field(
        default_factory=lambda: {"simulated": ProviderSettings(kind="simulated")}
    )
    state_path: str = "var/paretoserve.db"
    priors_path: str | None = None
    router: RouterTuning = RouterTuning()
    durability: DurabilityConfig = DurabilityConfig()
    faults: CooldownConfig = Field(
        default_factory=CooldownConfig,
        description="cool-downs of failing models and how far a request falls back",
    )
    embedder: dict[str, Any] = Field(default_factory=dict, description="EmbedderArgs fields")
    max_prompt_chars: int = Field(100_000, ge=1, description="longer prompts get a 413")
    admin_key_env: str = "PARETOSERVE_ADMIN_KEY"
    api_keys_env: str = "PARETOSERVE_API_KEYS"

    @model_validator(mode="after")
    def _providers_exist(self) -> AppArgs:
        missing = sorted({m.provider for m in self.models} - set(self.providers))
        if missing:
            raise ValueError(f"models use providers with no entry in `providers`: {missing}")
        ids = [m.id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError("model ids must be unique")
        return self

    def resolved(self, base: Path) -> AppArgs:
        """Relative paths resolved against `base` (replicas do not share the caller's cwd)."""

        def absolute(p: str | None) -> str | None:
            return None if p is None else str((base / p).resolve())

        return self.model_copy(
            update={
                "state_path": absolute(self.state_path),
                "priors_path": absolute(self.priors_path),
            }
        )

    def router_settings(self) -> RouterSettings:
        return RouterSettings(
            budget_usd_per_request=self.budget_usd_per_request,
            models=self.models,
            tuning=self.router,
            state_path=self.state_path,
            priors_path=self.priors_path,
            durability=self.durability,
            faults=self.faults,
        )
