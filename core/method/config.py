"""Pydantic configuration objects for the method, carrying the paper's defaults."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.method.tenants import TenantSettings

# Range of a budget (US$ per request) that an admin (PUT /admin/budget) or the service config
# may set. Much below the floor the pacer's cost / budget ratios overflow; US$ 100 is far above
# any realistic request (100k output tokens at US$ 600/M, a top list price, cost US$ 60), so a
# larger value is a typo (1e308), not a spending target.
MIN_BUDGET_USD = 1e-9
MAX_BUDGET_USD = 100.0
BUDGET_RANGE_DOC = "target spend per request, US$, in [1e-9, 100]"
BudgetUSD = Annotated[
    float,
    Field(ge=MIN_BUDGET_USD, le=MAX_BUDGET_USD, allow_inf_nan=False, description=BUDGET_RANGE_DOC),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BanditConfig(_Frozen):
    """Disjoint LinUCB with geometric forgetting (paper section 3)."""

    dim: int = Field(26, ge=2, description="context dimension, bias term included")
    alpha: float = Field(0.01, ge=0.0, description="UCB exploration weight")
    ridge: float = Field(1.0, gt=0.0, description="l0: A starts at l0*I")
    gamma: float = Field(0.997, gt=0.0, le=1.0, description="forgetting factor per request")
    max_decay_steps: int = Field(1000, ge=1, description="cap on the exponent of gamma")
    min_staleness_divisor: float = Field(1 / 200, gt=0.0, le=1.0)
    ridge_floor_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="re-add ridge when the decayed floor < this * l0"
    )
    cost_weight: float = Field(0.0, ge=0.0, description="lambda_c, a static cost weight")
    refresh_every: int = Field(
        2000, ge=1, description="recompute A^-1 exactly every N rank-1 updates of an arm"
    )
    # A drop in an arm's quality (core/method/shift.py): a one-sided CUSUM of its residuals.
    shift_threshold: float = Field(
        2.0, ge=0.0, description="CUSUM level that signals a drop; 0 = no detection"
    )
    shift_drift: float = Field(
        0.05, ge=0.0, description="residual (predicted - reward) tolerated per update"
    )
    shift_clip: float = Field(
        0.3, gt=0.0, description="residuals are clipped to +-this (one bad answer is no drop)"
    )
    shift_keep: float = Field(
        0.005,
        gt=0.0,
        le=1.0,
        description="on a signal the arm keeps this share of its evidence (A, b scaled)",
    )
    shift_restore: float = Field(
        0.25,
        ge=0.0,
        description="CUSUM level at which a cut arm whose rewards fit its pre-drop statistics "
        "again gets them back; 0 = never",
    )


class PacerMode(str, Enum):
    HARD = "hard"
    SOFT = "soft"
    ADAPTIVE = "adaptive"


class CostSignal(str, Enum):
    LIST_PRICE = "list-price"  # the paper: c~ from log list prices
    EXPECTED_COST = "expected-cost"  # per-arm expected realised cost, relative to the budget


class PacerConfig(_Frozen):
    """Online primal-dual budget pacer."""

    budget_usd: float = Field(..., gt=0.0, description="target spend per request, US$")
    mode: PacerMode = PacerMode.ADAPTIVE
    ema: float = Field(0.95, ge=0.0, lt=1.0, description="cbar <- ema*cbar + (1-ema)*c")
    step: float = Field(0.05, gt=0.0, description="dual step size eta")
    lambda_max: float = Field(5.0, gt=0.0)
    cost_signal: CostSignal = CostSignal.EXPECTED_COST
    step_range_power: float = Field(
        0.75, ge=0.0, le=1.0, description="expected-cost mode: step *= (B / max cost)^power"
    )
    feedforward: bool = Field(
        True,
        description="expected-cost mode: re-solve the dual from recent contexts "
        "(core/method/spend_resolver.py); the integral dual then only shrinks the spend target",
    )
    feedforward_window: int = Field(256, ge=8, description="recent contexts the solve uses")
    feedforward_every: int = Field(32, ge=1, description="routes between solves")
    usage_ema: float = Field(
        0.98, ge=0.0, lt=1.0, description="per-arm EMA of realised cost / list price"
    )
    bank_memory: int = Field(
        500,
        ge=0,
        description="requests the budget's running balance remembers (a discount of "
        "1 - 1/memory per charge); an auto-routed pick must fit it (core/method/pacer.py); "
        "0 = off",
    )
    bank_debt_spread: int = Field(
        100,
        ge=0,
        description="a debt (negative balance) lowers the spend limit by debt / this many "
        "requests, so it is paid back over about as many requests instead of by sending "
        "everything to the cheapest model until it is cleared; 0 = at once",
    )
    bank_slack: float = Field(
        0.002,
        ge=0.0,
        le=1.0,
        description="how far the balance may go below zero, as a share of the budget per "
        "remembered request: spend over the memory stays within (1 + slack) x budget",
    )
    bank_pick_share: float = Field(
        0.35,
        gt=0.0,
        le=1.0,
        description="the largest share of the savings (a positive balance) one pick may "
        "spend: savings made before a window (a warm-up, a quiet night) are spent slowly",
    )


class CostScaleConfig(_Frozen):
    """Log-price normalisation of the cost term c~ (prices in $ per 1k tokens)."""

    price_lo: float = Field(1e-4, gt=0.0)
    price_hi: float = Field(0.1, gt=0.0)


class RouterConfig(_Frozen):
    bandit: BanditConfig = BanditConfig()
    pacer: PacerConfig
    cost_scale: CostScaleConfig = CostScaleConfig()
    forced_exploration_pulls: int = Field(20, ge=0, description="pulls given to a new arm")
    max_pending: int = Field(100_000, ge=1, description="routed requests awaiting feedback")
    tenants: TenantSettings = TenantSettings()
    seed: int = 0
