"""The router facade: decide (route), account spend (charge), learn (feedback), administer."""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from itertools import compress
from operator import gt
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.method.bandit import LinUCB
from core.method.config import CostSignal, PacerMode, RouterConfig
from core.method.costs import cost_term
from core.method.errors import (
    DuplicateRequestIdError,
    InvalidFeedbackError,
    NoEligibleModelError,
    UnknownRequestError,
)
from core.method.faults import Cooldown, CooldownConfig, Cooldowns
from core.method.pacer import BudgetPacer
from core.method.priors import Priors, mean_preserving_load
from core.method.registry import ModelRegistry, ModelSpec, RegistryChange, RegistryError
from core.method.spend_resolver import SpendResolver

_NEG_INF = np.array(-np.inf)  # a 0-d array operand: numpy converts a Python float on every call
_F64 = np.dtype(np.float64)


def _is_number(v: object) -> bool:
    # float and int first: the numbers.Real ABC check costs ~0.5 us per call.
    t = type(v)
    return (
        t is float
        or t is int
        or (isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_))
    )


class RouteLimits(BaseModel):
    """A caller's own limits for one request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_blended_per_m: float | None = Field(
        None, gt=0.0, description="max blended list price, US$ per million tokens"
    )
    allowed_models: tuple[str, ...] | None = Field(None, min_length=1)


class FeedbackStatus(str, Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class Decision:
    request_id: str
    model: str
    t: int
    dual: float
    forced: bool
    direct: bool
    models: tuple[str, ...]
    quality: np.ndarray
    bonus: np.ndarray
    penalty: np.ndarray
    eligible: np.ndarray
    reasons: dict[str, str] = field(default_factory=dict)

    def explain(self) -> dict[str, dict]:
        """Per model: estimated quality, uncertainty bonus, cost penalty, score, eligibility."""
        return {
            m: {
                "quality": float(self.quality[i]),
                "bonus": float(self.bonus[i]),
                "cost_penalty": float(self.penalty[i]),
                "score": float(self.quality[i] + self.bonus[i] - self.penalty[i]),
                "eligible": bool(self.eligible[i]),
                **({"reason": self.reasons[m]} if m in self.reasons else {}),
            }
            for i, m in enumerate(self.models)
        }


@dataclass(slots=True)
class _Pending:
    slot: int
    x: np.ndarray
    t: int
    forced: bool
    charged: bool = False
    rewarded: bool = False
    failed: tuple[str, ...] = ()  # models that failed this request (fallback); not persisted


@dataclass(slots=True)
class _ArmView:
    """Per-arm values derived from list prices, learned usage, the active set and the slot
    names, which the request path would otherwise recompute on every call (twice per request
    for the expected costs). Built on demand; see Router._arms_changed and Router._learn_usage."""

    expected: np.ndarray  # expected cost of a request per arm, US$ (Router.expected_costs)
    known: np.ndarray  # the slots with learned usage
    unknown: np.ndarray  # the others, which borrow the mean usage of the known ones
    unknown_prices: np.ndarray  # their list prices
    dearest: float | None  # max expected cost over the active arms; None when none is active
    top_price: float | None  # max list price over the active arms; None when none is active
    removed: dict[str, str]  # the eligibility reason of each removed model
    models: tuple[str, ...]  # the model of each slot (Decision.models)
    signal: np.ndarray | None = None  # expected / signal_budget, made on first use
    signal_budget: float = math.nan


class _ArmField:
    """A Router attribute the arm view derives from: assigning a whole new value (as
    core.state.snapshot.restore does) marks the view stale. The router's own in-place writes to
    these arrays call Router._arms_changed themselves."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, router: Router | None, owner: type | None = None) -> Any:
        if router is None:
            return self
        return getattr(router, self.slot)

    def __set__(self, router: Router, value: object) -> None:
        setattr(router, self.slot, value)
        router._view = None


class Router:
    prices = _ArmField()  # blended $ per 1k tokens, per slot
    active = _ArmField()
    usage_k = _ArmField()
    slot_models = _ArmField()

    def __init__(
        self,
        config: RouterConfig,
        models: list[ModelSpec] | None = None,
        cooldowns: CooldownConfig | None = None,
    ) -> None:
        self._view: _ArmView | None = None
        # Failing models (provider faults): transient, not in snapshots; see core/method/faults.py.
        self.cooldowns = Cooldowns(cooldowns)
        self.config = config
        self.bandit = LinUCB(config.bandit)
        self.pacer = BudgetPacer(config.pacer)
        self.registry = ModelRegistry()
        self.slot_models: list[str] = []
        self.slots: dict[str, int] = {}
        self.prices = np.zeros(0)
        self.cost_terms = np.zeros(0)
        self.active = np.zeros(0, dtype=bool)
        self.forced_left = np.zeros(0, dtype=np.int64)
        # Per-arm EMA of realised cost / blended price: thousands of tokens per request.
        self.usage_k = np.zeros(0)
        self.rng = np.random.default_rng(config.seed)
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.applied: OrderedDict[str, None] = OrderedDict()
        self.context_sum = np.zeros(config.bandit.dim)
        self._zero_x = np.zeros(config.bandit.dim)
        self._dual_operand = np.zeros(())  # scratch of _assess
        self.resolver = SpendResolver(config.bandit.dim, config.pacer.feedforward_window)
        self.nu = 0.0  # the feed-forward dual in use (feedforward mode)
        self._nu_mix = (0.0, 0.0, 0.0)  # (nu_hi, nu_lo, share of requests that use nu_lo)
        self._mix_credit = 0.0  # error diffusion: the lower dual's owed share, deterministic
        self._solve_in = 0  # routes until the next solve; 0 = at the next route
        self._ff_every = config.pacer.feedforward_every
        for spec in models or []:
            self.add_model(spec, explore=False)

    # ---- administration -------------------------------------------------------------------

    @property
    def config(self) -> RouterConfig:
        return self._config

    @config.setter
    def config(self, config: RouterConfig) -> None:
        # Config scalars of the request path as plain Python values: a pydantic attribute chain
        # and an enum comparison per read would otherwise cost more than the arithmetic.
        self._config = config
        self._expected_mode = config.pacer.cost_signal == CostSignal.EXPECTED_COST
        self._step_power = config.pacer.step_range_power
        self._usage_ema = config.pacer.usage_ema
        self._cost_weight = config.bandit.cost_weight
        self._max_pending = config.max_pending
        self._feedforward = self._expected_mode and config.pacer.feedforward
        # The feed-forward dual weighs the score unless hard mode keeps the score cost-free.
        self._nu_in_score = self._feedforward and config.pacer.mode != PacerMode.HARD
        self._view = None

    @property
    def t(self) -> int:
        return self.bandit.t

    def _arms_changed(self) -> None:
        """Prices, usage, the active set or the slots changed: rebuild the arm view on next use
        (and re-solve the feed-forward dual at the next route)."""
        self._view = None
        self._solve_in = 0

    def _arm_view(self) -> _ArmView:
        view = self._view
        if view is None:
            view = self._view = self._build_arm_view()
        return view

    def _build_arm_view(self) -> _ArmView:
        usage, prices, active = self._usage_k, self._prices, self._active
        unknown = np.isnan(usage)
        known = usage[~unknown]
        fallback = known.mean() if len(known) else 1.0
        expected = prices * np.where(unknown, fallback, usage)
        any_active = bool(active.any())
        return _ArmView(
            expected=expected,
            known=np.flatnonzero(~unknown),
            unknown=np.flatnonzero(unknown),
            unknown_prices=prices[unknown],
            dearest=float(expected[active].max()) if any_active else None,
            top_price=float(prices[active].max()) if any_active else None,
            removed={
                m: "removed"
                for m, a in zip(self._slot_models, active.tolist(), strict=True)
                if not a
            },
            models=tuple(self._slot_models),
        )

    def _set_price(self, slot: int, spec: ModelSpec) -> None:
        self._prices[slot] = spec.blended_price
        self.cost_terms[slot] = cost_term(np.array([spec.blended_price]), self.config.cost_scale)[0]
        self._arms_changed()

    def add_model(self, spec: ModelSpec, explore: bool = True) -> RegistryChange:
        """Register a model: a new arm starts at l0*I, 0 with forced exploration; a re-add
        resumes its kept statistics."""
        change = self.registry.add(spec)
        if spec.id in self.slots:
            slot = self.slots[spec.id]
        else:
            slot = self.bandit.add_arm()
            self.slots[spec.id] = slot
            self.slot_models.append(spec.id)
            self.prices = np.append(self.prices, 0.0)
            self.cost_terms = np.append(self.cost_terms, 0.0)
            self.active = np.append(self.active, False)
            self.usage_k = np.append(self.usage_k, np.nan)
            pulls = self.config.forced_exploration_pulls if explore else 0
            self.forced_left = np.append(self.forced_left, pulls)
        self._active[slot] = True
        self._set_price(slot, spec)  # marks the arm view stale
        return change

    def remove_model(self, model_id: str) -> RegistryChange:
        """Stop choosing the model at once; its statistics are kept for a re-add."""
        change = self.registry.remove(model_id)
        self._active[self.slots[model_id]] = False
        self._arms_changed()
        return change

    def reprice(
        self,
        model_id: str,
        input_per_m: float | None = None,
        output_per_m: float | None = None,
    ) -> RegistryChange:
        change = self.registry.reprice(model_id, input_per_m, output_per_m)
        self._set_price(self.slots[model_id], self.registry.specs[model_id])
        return change

    def expected_costs(self) -> np.ndarray:
        """Per-arm expected cost of a request in US$: list price x learned usage (an arm with no
        charges yet borrows the mean usage of the others, so a re-price applies at once)."""
        return self._arm_view().expected.copy()

    def _cost_signal(self) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(what the dual multiplies in the score, what the hard ceiling compares, the max of
        the latter over the active arms or None when none is active). The arrays belong to the
        router: callers must not keep or modify them."""
        view = self._arm_view()
        if self._expected_mode:
            budget = self.pacer.budget
            if view.signal_budget != budget:  # first use, or the budget changed
                view.signal = view.expected / budget
                view.signal_budget = budget
            return view.signal, view.expected, view.dearest
        return self.cost_terms, self._prices, view.top_price

    def _dual_step_scale(self) -> float:
        """With expected costs the dual prices c_a/B, whose gradient ranges up to max_a c_a/B.
        Scaling the step by (B / max_a c_a)^p keeps one expensive pick from swinging the dual
        far past its equilibrium (the paper's oscillation). List-price mode keeps the step."""
        if not self._expected_mode:
            return 1.0
        dearest = self._arm_view().dearest
        if dearest is None or dearest <= 0:  # None: no active arm
            return 1.0
        ratio = self.pacer.budget / dearest
        return (ratio if ratio < 1.0 else 1.0) ** self._step_power  # min(1.0, ratio), no call

    def _feed_forward(self, x: np.ndarray) -> None:
        """Record x; when due, re-solve the dual so that the greedy policy over recent contexts
        spends the budget shrunk by the integral dual (which absorbs what the estimates miss).
        Each request then uses the lower dual for its owed share, else the higher one."""
        self.resolver.observe(x)
        # While the window fills (after a start or restart), re-solve at every route, on the
        # safe side (the higher dual, no mixing): a dual solved on the first context or two
        # would otherwise hold for `feedforward_every` routes, and under concurrency their
        # charges arrive too late for the integral dual to stop an early run of dear picks.
        filling = self.resolver.size <= self._ff_every
        if self._solve_in > 0 and not filling:
            self._solve_in -= 1
        else:
            signal = self._cost_signal()[0]
            target = 1.0 / (1.0 + self.pacer.dual)
            self._nu_mix = self.resolver.solve(self.bandit.theta, signal, self._active, target)
            if filling:
                self._nu_mix = (self._nu_mix[0], self._nu_mix[0], 0.0)
            self._solve_in = self._ff_every - 1
        nu_hi, nu_lo, share = self._nu_mix
        if share:  # error diffusion: the lower dual for its owed share of requests
            self._mix_credit += share
            if self._mix_credit >= 1.0:
                self._mix_credit -= 1.0
                self.nu = nu_lo
                return
        self.nu = nu_hi

    def set_budget(self, usd_per_request: float) -> None:
        self.pacer.set_budget(usd_per_request)
        self._solve_in = 0

    def load_priors(self, priors: Priors, projection_fingerprint: str | None = None) -> list[str]:
        """Warm-start the arms named in the priors; returns the models that got one.

        An arm's recorded mean cost also seeds its usage estimate (cost / list price), as if
        it had answered once at that cost: without it an arm borrows the others' usage until
        its first charge, and a dear reasoning model looks cheap. Under concurrency many
        requests are routed before that charge arrives, and the pacer then overspends."""
        if priors.dim != self.config.bandit.dim:
            raise ValueError(f"priors have dim {priors.dim}, router has {self.config.bandit.dim}")
        if (
            projection_fingerprint
            and priors.projection_fingerprint
            and priors.projection_fingerprint != projection_fingerprint
        ):
            raise ValueError("priors were built with a different feature projection")
        loaded = []
        for model_id, prior in priors.arms.items():
            if model_id in self.slots:
                A, b = mean_preserving_load(prior, self.config.bandit.ridge)
                self.bandit.load_prior(self.slots[model_id], A, b, self.config.bandit.ridge)
                if prior.mean_cost_usd is not None:
                    slot = self.slots[model_id]
                    self._usage_k[slot] = prior.mean_cost_usd / self._prices.item(slot)
                    self._arms_changed()
                loaded.append(model_id)
        return loaded

    # ---- the request path -----------------------------------------------------------------

    def _eligible(
        self, limits: RouteLimits | None
    ) -> tuple[np.ndarray, list[bool], dict[str, str]]:
        """The caller's eligibility: (mask, the mask as a list, why each other model is not)."""
        mask = self._active.copy()
        reasons = dict(self._arm_view().removed)  # a copy: the caller adds to it
        if limits is not None:
            if limits.allowed_models is not None:
                unknown = set(limits.allowed_models) - set(self.slots)
                if unknown:
                    raise NoEligibleModelError({m: "not registered" for m in sorted(unknown)})
                allowed = np.zeros_like(mask)
                allowed[[self.slots[m] for m in limits.allowed_models]] = True
                for m, s in self.slots.items():
                    if mask[s] and not allowed[s]:
                        reasons[m] = "not in allowed_models"
                mask &= allowed
            if limits.max_blended_per_m is not None:
                cheap = self._prices * 1000.0 <= limits.max_blended_per_m
                for m, s in self.slots.items():
                    if mask[s] and not cheap[s]:
                        reasons[m] = (
                            f"blended price {self._prices[s] * 1000:.4g} $/M exceeds "
                            f"max_blended_per_m {limits.max_blended_per_m:.4g}"
                        )
                mask &= cheap
        return mask, mask.tolist(), reasons

    def _check_context(self, x: np.ndarray) -> np.ndarray:
        # A float64 ndarray (the usual case) is used as it is: np.asarray would return it
        # unchanged, but the call alone costs ~0.2 us.
        if type(x) is not np.ndarray or x.dtype is not _F64:
            x = np.asarray(x, dtype=np.float64)
        # x . 0 is 0.0 when every x_i is finite and nan otherwise (it cannot overflow): one
        # numpy call instead of two for np.isfinite(x).all().
        if x.shape != self._zero_x.shape or not math.isfinite(x.dot(self._zero_x)):
            raise ValueError(f"context must be {self.config.bandit.dim} finite numbers")
        return x

    def _assess(
        self, x: np.ndarray, mask: np.ndarray, eligible: list[bool], reasons: dict[str, str]
    ) -> tuple[np.ndarray, list[bool], dict[str, str], np.ndarray, np.ndarray, np.ndarray]:
        """The pacer's ceiling on top of the caller's eligibility (from _eligible), and the score
        terms at time t: (mask, mask as a list, reasons, quality, bonus, penalty)."""
        quality, bonus = self.bandit.estimates(x)
        signal, ceiling_costs, dearest = self._cost_signal()
        # None in soft mode, at lambda <= 0 (the ceiling admits every arm), or with no arm active.
        cap = None if dearest is None else self.pacer.ceiling(dearest)
        if cap is not None:
            ceiling = ceiling_costs <= cap
            ceiling &= mask
            under = ceiling.tolist()
            # If the ceiling leaves nothing, only the caller's limits apply.
            if True in under:
                if under != eligible:  # reasons only when the ceiling excludes an arm
                    why = f"above the pacer's ceiling (lambda={self.pacer.dual:.3f})"
                    # The arms it excludes, eligible > under (True > False), found in C.
                    for name in compress(self._slot_models, map(gt, eligible, under)):
                        reasons[name] = why
                mask, eligible = ceiling, under
        # The cost penalty: the dual weight (0 in hard mode) times the signal, plus the static
        # cost weight's term (0 by default). The dual weight goes in as a 0-d array: numpy
        # converts a Python float operand on every call.
        weight = self._dual_operand
        weight[()] = self.nu if self._nu_in_score else self.pacer.soft_weight()
        penalty = weight * signal
        if self._cost_weight != 0.0:
            penalty = self._cost_weight * self.cost_terms + penalty
        return mask, eligible, reasons, quality, bonus, penalty

    def route(
        self,
        x: np.ndarray,
        limits: RouteLimits | None = None,
        model: str | None = None,
        request_id: str | None = None,
        now: float | None = None,
    ) -> Decision:
        """Pick a model for context x (or record an explicit `model`, bypassing the bandit but
        not the caller's own limits). `request_id` names the decision (default: random); a
        name already in use is refused. With `now` (unix seconds), auto-routing skips models
        cooling down after failures, unless that would leave none."""
        x = self._check_context(x)
        if request_id is not None and (request_id in self.pending or request_id in self.applied):
            raise DuplicateRequestIdError(request_id)
        if model is not None and not (model in self.slots and self._active[self.slots[model]]):
            why = "removed" if model in self.slots else "not registered"
            raise NoEligibleModelError({model: why})
        mask, eligible, reasons = self._eligible(limits)
        if model is None and now is not None and self.cooldowns.state:
            mask, eligible = self._skip(mask, eligible, reasons, self.cooldowns.cooling(now), now)
        if model is None and True not in eligible:
            raise NoEligibleModelError(reasons)
        if model is not None and not eligible[self.slots[model]]:
            raise NoEligibleModelError({model: reasons[model]})
        self.bandit.t += 1
        t = self.bandit.t
        if self._feedforward:
            self._feed_forward(x)
        mask, eligible, reasons, quality, bonus, penalty = self._assess(x, mask, eligible, reasons)
        forced = False
        if model is not None:
            slot = self.slots[model]
        else:
            # The first eligible arm with forced pulls left, if any. In Python over the arms
            # that have pulls (compress skips the rest in C): an arm held back by the ceiling
            # keeps its pulls, and this check runs, for as long as the ceiling holds.
            explore = None
            pulls = self.forced_left.tolist()
            if any(pulls) and not self.pacer.over_budget:
                for i in compress(range(len(pulls)), pulls):
                    if pulls[i] > 0 and eligible[i]:
                        explore = i
                        break
            if explore is not None:
                slot = explore
                self.forced_left[slot] -= 1
                forced = True
            else:
                # The best eligible score and its ties (within 1e-12) in Python floats: cheaper
                # than numpy reductions (or np.where) on K numbers. Ties are broken by the
                # seeded RNG.
                score = quality + bonus
                score -= penalty
                score = score.tolist()
                top = max(compress(score, eligible)) - 1e-12
                best = [i for i, v in enumerate(score) if v >= top and eligible[i]]
                slot = best[0] if len(best) == 1 else int(self.rng.choice(best))
        self.bandit.mark_pull(slot)
        self.context_sum += x
        if request_id is None:
            request_id = os.urandom(16).hex()  # 128 random bits; uuid4().hex costs 4x more
        self.pending[request_id] = _Pending(slot, x, t, forced)
        if len(self.pending) > self._max_pending:
            self.pending.popitem(last=False)
        # Positional: keyword arguments would cost ~0.4 us more per request.
        return Decision(
            request_id,
            self._slot_models[slot],  # model
            t,
            self.pacer.dual,
            forced,
            model is not None,  # direct
            self._arm_view().models,
            quality,
            bonus,
            penalty,
            mask,  # eligible
            reasons,
        )

    def resume(self, request_id: str, direct: bool) -> Decision | None:
        """The decision already made under `request_id`, if it is pending and not yet charged:
        a caller whose route call was lost (the Router died mid-call) picks it up instead of
        deciding twice. None: no such decision, route again."""
        entry = self.pending.get(request_id)
        if entry is None or entry.charged:
            return None
        none = np.empty(0)
        model = self._slot_models[entry.slot]
        return Decision(
            request_id, model, entry.t, self.pacer.dual, entry.forced, direct, (model,),
            none, none, none, none,
        )  # fmt: skip

    def _skip(
        self,
        mask: np.ndarray,
        eligible: list[bool],
        reasons: dict[str, str],
        cooling: frozenset[str],
        now: float | None,
        failed: tuple[str, ...] = (),
    ) -> tuple[np.ndarray, list[bool]]:
        """Leave out the models that failed this request (always) and those cooling down
        (unless that would leave no model). Adds their reasons."""
        out = mask.copy()
        for m in failed:
            out[self.slots[m]] = False
        after_failed = out.copy()
        for m in cooling:
            slot = self.slots.get(m)
            if slot is not None:
                out[slot] = False
        if not out.any():
            out = after_failed
        for m, s in self.slots.items():
            if mask[s] and not out[s]:
                if m in failed:
                    reasons[m] = "failed for this request"
                else:
                    cd = self.cooldowns.get(m)
                    left = (cd.until - now) if cd is not None and now is not None else 0.0
                    reasons[m] = f"cooling down after a provider failure ({left:.3g}s left)"
        return out, out.tolist()

    def fallback(
        self,
        request_id: str,
        failed_model: str,
        now: float,
        status: int | None = None,
        retry_after_s: float | None = None,
        limits: RouteLimits | None = None,
    ) -> Decision | None:
        """`failed_model` failed the pending request `request_id` (after its retries): cool it
        down, then re-decide for the same context among the caller's eligible models, leaving
        out every model that failed this request and, if others remain, those cooling down:
        the best score under the current budget (the pacer's ceiling applies; no forced
        exploration). The pending decision is re-keyed to the new model, so its charge and
        feedback go to the model that answers. None: no fallback is left (max_fallbacks
        reached, or no other eligible model); the pending decision is then dropped."""
        self.cooldowns.fail(failed_model, now, status, retry_after_s)
        entry = self._lookup(request_id)
        current = self._slot_models[entry.slot]
        if entry.charged or current != failed_model:
            raise ValueError(
                f"request {request_id!r} is not awaiting {failed_model!r} (it is on {current!r}"
                f"{', answered' if entry.charged else ''})"
            )
        entry.failed = (*entry.failed, failed_model)
        if entry.forced:  # the newcomer did not get its exploration pull: give it back
            self.forced_left[entry.slot] += 1
            entry.forced = False
        if len(entry.failed) > self.cooldowns.config.max_fallbacks:
            del self.pending[request_id]
            return None
        mask, eligible, reasons = self._eligible(limits)
        mask, eligible = self._skip(
            mask, eligible, reasons, self.cooldowns.cooling(now), now, entry.failed
        )
        if True not in eligible:
            del self.pending[request_id]
            return None
        mask, eligible, reasons, quality, bonus, penalty = self._assess(
            entry.x, mask, eligible, reasons
        )
        score = np.where(mask, quality + bonus - penalty, _NEG_INF)
        slot = int(np.argmax(score))  # the first best: no RNG draw, so routing stays seeded
        self.bandit.mark_pull(slot)
        entry.slot = slot
        return Decision(
            request_id,
            self._slot_models[slot],
            entry.t,
            self.pacer.dual,
            False,  # forced
            False,  # direct
            self._arm_view().models,
            quality,
            bonus,
            penalty,
            mask,
            reasons,
        )

    def answered_by(self, request_id: str, model: str, x: np.ndarray, forced: bool) -> str:
        """Make sure the pending decision of an answered request names `model`, the one that
        answered, before it is charged. A Router that restarted may have lost the decision
        (made after its last flush) or a fallback's re-key; the caller, who holds the context,
        restores it. Returns "known", "rekeyed" or "adopted" (or "settled" if already charged
        and rewarded). An adopted decision is a pull at the current time."""
        if request_id in self.applied and request_id not in self.pending:
            return "settled"
        entry = self.pending.get(request_id)
        if model not in self.slots:
            raise NoEligibleModelError({model: "not registered"})
        slot = self.slots[model]
        if entry is not None:
            if entry.slot == slot:
                return "known"
            entry.slot = slot
            self.bandit.mark_pull(slot)  # as the lost fallback did
            return "rekeyed"
        x = self._check_context(x)
        self.bandit.t += 1
        self.bandit.mark_pull(slot)
        self.context_sum += x
        self.pending[request_id] = _Pending(slot, x, self.bandit.t, forced)
        return "adopted"

    def fail(
        self,
        request_id: str | None,
        model: str,
        now: float,
        status: int | None = None,
        retry_after_s: float | None = None,
        cool: bool = True,
    ) -> Cooldown | None:
        """`model` failed the request for good (an explicit model, or no fallback left): cool
        it down (unless `cool` is False: the caller's own bad input) and drop the request's
        pending decision unless it was charged (a failed attempt is no reward signal, and what
        was not billed is not charged). Returns the model's cool-down, if it got one."""
        cd = self.cooldowns.fail(model, now, status, retry_after_s) if cool else None
        entry = self.pending.get(request_id) if request_id is not None else None
        if entry is not None and not entry.charged:
            if entry.forced and self._slot_models[entry.slot] == model:
                self.forced_left[entry.slot] += 1
            del self.pending[request_id]
        return cd

    def replay_decision(
        self, request_id: str, model: str, x: np.ndarray, t: int, forced: bool
    ) -> None:
        """Re-apply a recorded decision during recovery: time, pull, forced pull and pending
        entry move as route() moved them (the choice itself is not re-made)."""
        slot = self.slots[model]
        self.bandit.t = max(self.bandit.t, t)
        self.bandit.mark_pull(slot)
        if forced and self.forced_left[slot] > 0:
            self.forced_left[slot] -= 1
        self.context_sum += x
        self.pending[request_id] = _Pending(slot=slot, x=np.asarray(x, float), t=t, forced=forced)

    def expire(self, request_ids: list[str]) -> int:
        """Forget pending contexts (their TTL ran out); returns how many were still pending."""
        return sum(self.pending.pop(r, None) is not None for r in request_ids)

    def _lookup(self, request_id: str) -> _Pending:
        try:
            return self.pending[request_id]
        except KeyError:
            raise UnknownRequestError(request_id) from None

    def _settle(self, request_id: str, entry: _Pending) -> None:
        if entry.charged and entry.rewarded:
            del self.pending[request_id]

    def charge(self, request_id: str, cost_usd: float) -> FeedbackStatus:
        """Charge the realised cost of a routed request to the pacer (once per request)."""
        if not (_is_number(cost_usd) and math.isfinite(cost_usd) and cost_usd >= 0):
            raise InvalidFeedbackError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        if request_id in self.applied and request_id not in self.pending:
            return FeedbackStatus.DUPLICATE
        entry = self._lookup(request_id)
        if entry.charged:
            return FeedbackStatus.DUPLICATE
        cost = float(cost_usd)
        if self.cooldowns.state:  # the model answered: its failure streak ends
            self.cooldowns.succeed(self._slot_models[entry.slot])
        self.pacer.charge(cost, self._dual_step_scale())
        self._learn_usage(entry.slot, cost)
        entry.charged = True
        self._settle(request_id, entry)
        return FeedbackStatus.APPLIED

    def _learn_usage(self, slot: int, cost_usd: float) -> None:
        price = self._prices.item(slot)
        ratio = cost_usd / price
        old, ema = self._usage_k.item(slot), self._usage_ema
        usage = ratio if math.isnan(old) else ema * old + (1.0 - ema) * ratio
        self._usage_k[slot] = usage
        view = self._view
        if view is not None:
            if math.isnan(old) or math.isnan(usage):
                self._arms_changed()  # the set of arms with learned usage changed: rebuild
            else:
                self._patch_arm_view(view, slot, price * usage)

    def _patch_arm_view(self, view: _ArmView, slot: int, cost: float) -> None:
        """One arm's usage moved (a charge): update its expected `cost` and what depends on it
        in place of a rebuild. Python float arithmetic is IEEE double, and numpy's the same
        element-wise, so the patched values are bit-identical to a rebuild's."""
        before = view.expected.item(slot)
        view.expected[slot] = cost
        if len(view.unknown):
            # Arms with no usage yet borrow the mean usage of the others, which moved too.
            fallback = self._usage_k[view.known].mean()
            view.expected[view.unknown] = view.unknown_prices * fallback
            view.signal_budget = math.nan  # remake the signal on next use
            if view.dearest is not None:
                view.dearest = float(view.expected[self._active].max())
            return
        # Only this arm's expected cost moved.
        if view.signal is not None:
            view.signal[slot] = cost / view.signal_budget
        if self._active.item(slot):
            if cost >= view.dearest:
                view.dearest = cost
            elif before == view.dearest:  # the dearest arm got cheaper: find the new max
                view.dearest = float(view.expected[self._active].max())

    def feedback(self, request_id: str, reward: float) -> FeedbackStatus:
        """Learn from a reward in [0, 1]; a repeat is reported as a duplicate and not applied."""
        if not (_is_number(reward) and math.isfinite(reward) and 0 <= reward <= 1):
            raise InvalidFeedbackError(f"reward must be a finite number in [0, 1], got {reward!r}")
        if request_id in self.applied:
            return FeedbackStatus.DUPLICATE
        entry = self._lookup(request_id)
        self.bandit.update(entry.slot, entry.x, float(reward))
        entry.rewarded = True
        self.applied[request_id] = None
        if len(self.applied) > self._max_pending:
            self.applied.popitem(last=False)
        self._settle(request_id, entry)
        return FeedbackStatus.APPLIED

    def explain(
        self, x: np.ndarray, limits: RouteLimits | None = None, now: float | None = None
    ) -> dict[str, dict]:
        """What route() would weigh for x as the next request, without routing."""
        x = self._check_context(x)
        mask, eligible, reasons = self._eligible(limits)
        if now is not None and self.cooldowns:
            mask, eligible = self._skip(mask, eligible, reasons, self.cooldowns.cooling(now), now)
        self.bandit.t += 1  # route() scores at t + 1; undone below, nothing else changes
        try:
            mask, _, reasons, quality, bonus, penalty = self._assess(x, mask, eligible, reasons)
        finally:
            self.bandit.t -= 1
        return Decision(
            request_id="",
            model="",
            t=self.t + 1,
            dual=self.pacer.dual,
            forced=False,
            direct=False,
            models=tuple(self.slot_models),
            quality=quality,
            bonus=bonus,
            penalty=penalty,
            eligible=mask,
            reasons=reasons,
        ).explain()

    # ---- observability --------------------------------------------------------------------

    def state(self, now: float | None = None) -> dict:
        """With `now`, `cooldowns` says how long each failing model still cools down."""
        s = self.pacer.state
        mean_x = self.context_sum / max(self.t, 1)
        expected = self.expected_costs()
        return {
            "t": self.t,
            "budget_usd_per_request": self.pacer.budget,
            "dual": s.dual,
            "feedforward_dual": self.nu if self._feedforward else None,
            "spend_ema_usd": s.cost_ema,
            "charges": s.charges,
            "total_spend_usd": s.total_spend,
            "registry_version": self.registry.version,
            "pending": len(self.pending),
            "cooldowns": self.cooldowns.to_json(now),
            "models": {
                m: {
                    "active": bool(self.active[i]),
                    "pulls": int(self.bandit.pulls[i]),
                    "updates": int(self.bandit.updates[i]),
                    "forced_pulls_left": int(self.forced_left[i]),
                    "blended_usd_per_m": float(self.prices[i] * 1000),
                    "expected_cost_usd": float(expected[i]),
                    "estimated_quality": float(self.bandit.theta[i] @ mean_x) if self.t else None,
                }
                for i, m in enumerate(self.slot_models)
            },
        }


__all__ = [
    "Decision",
    "FeedbackStatus",
    "RegistryError",
    "RouteLimits",
    "Router",
]
