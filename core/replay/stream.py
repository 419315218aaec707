"""One stream of prompts through a Router with immediate feedback: the replay's inner loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.method.router import Router


@dataclass
class Outcomes:
    """A block of recorded outcomes, columns in `models` order; perturbations edit copies."""

    contexts: np.ndarray  # (n, d)
    rewards: np.ndarray  # (n, K)
    costs: np.ndarray  # (n, K)
    models: tuple[str, ...]

    def column(self, model: str) -> int:
        return self.models.index(model)


@dataclass
class StreamLog:
    models: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)
    duals: list[float] = field(default_factory=list)
    spend_ema: list[float] = field(default_factory=list)
    budgets: list[float] = field(default_factory=list)

    def extend(self, other: StreamLog) -> None:
        for name in vars(self):
            getattr(self, name).extend(getattr(other, name))


def run_stream(router: Router, block: Outcomes, order: np.ndarray) -> StreamLog:
    """Route each row, charge its recorded cost for the chosen model, then feed back its reward."""
    log = StreamLog()
    col = {m: i for i, m in enumerate(block.models)}
    for i in order:
        d = router.route(block.contexts[i])
        j = col[d.model]
        cost, reward = float(block.costs[i, j]), float(block.rewards[i, j])
        router.charge(d.request_id, cost)
        router.feedback(d.request_id, reward)
        log.models.append(d.model)
        log.rewards.append(reward)
        log.costs.append(cost)
        log.forced.append(d.forced)
        log.duals.append(router.pacer.dual)
        log.spend_ema.append(router.pacer.state.cost_ema)
        log.budgets.append(router.pacer.budget)
    return log
