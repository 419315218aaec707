"""Online primal-dual budget pacer: a dual variable lambda that prices spend above budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.method.config import PacerConfig, PacerMode


@dataclass
class PacerState:
    cost_ema: float
    dual: float
    charges: int = 0
    total_spend: float = 0.0


class BudgetPacer:
    def __init__(self, config: PacerConfig, state: PacerState | None = None) -> None:
        self.config = config
        self.state = state or PacerState(cost_ema=config.budget_usd, dual=0.0)

    @property
    def config(self) -> PacerConfig:
        return self._config

    @config.setter
    def config(self, config: PacerConfig) -> None:
        # The scalars charge() and the router read per request, as plain Python values: cheaper
        # than pydantic attribute and enum reads, and kept in step with the (frozen) config.
        self._config = config
        self._budget = config.budget_usd
        self._ema, self._step, self._lambda_max = config.ema, config.step, config.lambda_max
        self._hard = config.mode == PacerMode.HARD
        self._soft = config.mode == PacerMode.SOFT

    @property
    def budget(self) -> float:
        return self._budget

    @property
    def dual(self) -> float:
        return self.state.dual

    @property
    def over_budget(self) -> bool:
        return self.state.cost_ema > self._budget

    def set_budget(self, budget_usd: float) -> None:
        if not (math.isfinite(budget_usd) and budget_usd > 0):
            raise ValueError(f"budget_usd must be a positive finite number, got {budget_usd!r}")
        self.config = self.config.model_copy(update={"budget_usd": budget_usd})

    def charge(self, cost_usd: float, step_scale: float = 1.0) -> None:
        """Charge one request's realised cost: EMA of spend, then a projected dual step
        (scaled by `step_scale` in (0, 1], see core.method.arms.ArmTable.dual_step_scale)."""
        if not (math.isfinite(cost_usd) and cost_usd >= 0):
            raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        s = self.state
        ema = self._ema
        s.cost_ema = ema * s.cost_ema + (1.0 - ema) * cost_usd
        step = self._step * step_scale
        dual = s.dual + step * (s.cost_ema / self._budget - 1.0)
        # Projected onto [0, lambda_max]: min(max(dual, 0.0), lambda_max) without the two calls.
        s.dual = 0.0 if dual < 0.0 else self._lambda_max if dual > self._lambda_max else dual
        s.charges += 1
        s.total_spend += cost_usd

    def soft_weight(self) -> float:
        """The dual's weight on c~ in the score (0 when the soft mode is off)."""
        return 0.0 if self._hard else self.state.dual

    def ceiling(self, dearest: float) -> float | None:
        """Hard mode: the highest cost an arm may have, `dearest` (the most expensive active
        arm's) / (1 + lambda); None when no ceiling applies (soft mode, or lambda <= 0)."""
        dual = self.state.dual
        if self._soft or dual <= 0.0:
            return None
        return dearest / (1.0 + dual)
