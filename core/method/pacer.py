"""Online primal-dual budget pacer: a dual variable lambda that prices spend above budget, and
the budget's running balance that bounds what the next pick may cost.

The dual steers spend towards the budget on average, but reacts only after the money is spent:
one pick of a model costing many budgets, at a ceiling near the cheapest model's cost, moves the
mean past the budget before the dual can answer. The balance is a discounted account of budget
minus realised cost per charge (memory `bank_memory` requests); a pick whose expected cost is
more than the budget plus the balance plus a small overdraft (`bank_slack` x budget x the
remembered requests) is not made, so mean spend over the memory cannot pass (1 + slack) x
budget by more than one pick's estimation error. A debt (a negative balance: picks that cost
more than expected) lowers the limit by debt / `bank_debt_spread`, so it is paid back over
about that many requests with the models that fit, not by the cheapest model alone; savings
(a positive balance) count only at `bank_pick_share`, so that savings made before a window (a
warm-up, a quiet night) are spent over many requests, not by the window's first dear pick. A request
in flight counts as the budget it brings less its expected cost until it is charged (then as
the budget less its realised cost) or dropped, so concurrent requests cannot spend the same
savings."""

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
    bank: float = 0.0  # discounted sum of (budget - cost) over the charges since the budget was set
    bank_n: float = 0.0  # discounted count of those charges


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
        memory = config.bank_memory
        self._bank_keep = 1.0 - 1.0 / memory if memory else 0.0
        self._bank_slack = config.bank_slack
        self._debt_spread = config.bank_debt_spread
        self._pick_share = config.bank_pick_share

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
        if budget_usd != self._budget:  # savings at the old budget do not carry over
            self.state.bank = self.state.bank_n = 0.0
        self.config = self.config.model_copy(update={"budget_usd": budget_usd})

    def retarget(self, budget_usd: float) -> None:
        """A new target that follows a period budget (core/method/tenants.py): unlike
        set_budget, the running balance carries over, as the target drifts a little at a time."""
        if budget_usd != self._budget:
            self.config = self.config.model_copy(update={"budget_usd": budget_usd})

    def charge(self, cost_usd: float, step_scale: float = 1.0, held_usd: float = 0.0) -> None:
        """Charge one request's realised cost: EMA of spend, then a projected dual step
        (scaled by `step_scale` in (0, 1], see core.method.arms.ArmTable.dual_step_scale);
        the balance gets back what the decision held and pays the realised cost."""
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
        keep = self._bank_keep
        if keep:
            s.bank = keep * (s.bank + held_usd) + (self._budget - cost_usd)
            s.bank_n = keep * s.bank_n + 1.0

    @property
    def banking(self) -> bool:
        return bool(self._bank_keep)

    def hold(self, expected_usd: float) -> None:
        """A decision in flight: it holds `expected_usd` (its expected cost less the budget it
        brings; negative for a request cheaper than the budget) until charged."""
        if self._bank_keep:
            self.state.bank -= expected_usd

    def release(self, held_usd: float) -> None:
        """A held decision ended without a charge (failed, dropped, expired)."""
        if self._bank_keep:
            self.state.bank += held_usd

    def spend_limit(self) -> float | None:
        """The most the next pick may be expected to cost: the budget, plus the running
        balance, plus the overdraft; None when the balance is off (`bank_memory` 0)."""
        keep = self._bank_keep
        if not keep:
            return None
        s, budget = self.state, self._budget
        bank = keep * s.bank
        if bank < 0.0:
            if self._debt_spread:
                bank /= self._debt_spread
        else:
            bank *= self._pick_share
        return budget + bank + self._bank_slack * budget * (1.0 + keep * s.bank_n)

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
