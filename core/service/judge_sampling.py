"""Which answers go to the Judge, decided on the request path at the cost of one random draw:
a share (`sample_rate`) of auto-routed answers, and every forced-exploration pull of a newly
added model (what the router most needs to learn). An answer for a model the caller named is
never judged: it taught the bandit nothing."""

from __future__ import annotations

import random
from typing import Protocol

from core.service.decision import RouteDecision
from core.service.judge_rubric import JudgedExchange


class JudgeOffer(Protocol):
    """Hands an answered exchange to the Judge (fire and forget: never on the response path)."""

    async def offer(self, exchange: JudgedExchange) -> None: ...


class JudgeSampler:
    def __init__(self, sample_rate: float, seed: int = 0) -> None:
        self.sample_rate = sample_rate
        self._rng = random.Random(seed)

    def wants(self, decision: RouteDecision) -> bool:
        if not decision.routed:
            return False
        return decision.forced or self._rng.random() < self.sample_rate
