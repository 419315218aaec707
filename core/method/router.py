"""The Router facade: decide (route), account spend (charge), learn (feedback), administer."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from enum import Enum
from itertools import compress
from operator import gt

import numpy as np

from core.method.arms import ArmTable, RouteLimits
from core.method.bandit import LinUCB
from core.method.config import CostSignal, PacerMode, RouterConfig
from core.method.errors import (
    DuplicateRequestIdError,
    InvalidFeedbackError,
    NoEligibleModelError,
)
from core.method.faults import Cooldown, CooldownConfig, Cooldowns
from core.method.ledger import Ledger, Pending
from core.method.pacer import BudgetPacer, PacerState
from core.method.priors import Priors, mean_preserving_load
from core.method.registry import ModelRegistry, ModelSpec, RegistryChange, RegistryError
from core.method.shift import Shelf, ShiftDetector
from core.method.spend_resolver import FeedForwardDual
from core.method.tenants import (
    Tenant,
    TenantBook,
    TenantBudgetExhaustedError,
    TenantSpec,
    cost_bound,
)

_NEG_INF = np.array(-np.inf)  # a 0-d array operand: numpy converts a Python float on every call
_F64 = np.dtype(np.float64)
_TENANT_BUFFER = "tenant_resolver_buffer."  # + tenant id: a tenant's feed-forward contexts


def _is_number(v: object) -> bool:
    # float and int first: the numbers.Real ABC check costs ~0.5 us per call.
    t = type(v)
    return (
        t is float
        or t is int
        or (isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_))
    )


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
    tenant: str | None = None
    # A capped tenant's request: the output limit its reservation covers, to send upstream,
    # and the reservation (its cost bound, US$).
    max_tokens: int | None = None
    reserved_usd: float = 0.0

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
class Pacing:
    """One budget's pacing: the integral pacer and its feed-forward dual. The service has
    one; a tenant with a target of its own has another."""

    pacer: BudgetPacer
    ff: FeedForwardDual


class Router:
    """The bandit, the pacer and the feed-forward dual over an arm table (core.method.arms) and
    a decision ledger (core.method.ledger). It owns all their state; snapshots go through
    to_state() / from_state()."""

    def __init__(
        self,
        config: RouterConfig,
        models: list[ModelSpec] | None = None,
        cooldowns: CooldownConfig | None = None,
    ) -> None:
        # Failing models (provider faults): transient, not in snapshots; see core/method/faults.py.
        self.cooldowns = Cooldowns(cooldowns)
        self._config = config
        # Config scalars of the request path as plain Python values: a pydantic attribute chain
        # and an enum comparison per read would otherwise cost more than the arithmetic.
        expected_mode = config.pacer.cost_signal == CostSignal.EXPECTED_COST
        self._cost_weight = config.bandit.cost_weight
        self._feedforward = expected_mode and config.pacer.feedforward
        # The feed-forward dual weighs the score unless hard mode keeps the score cost-free.
        self._nu_in_score = self._feedforward and config.pacer.mode != PacerMode.HARD
        self.bandit = LinUCB(config.bandit)
        self.shifts = ShiftDetector(config.bandit)
        self.pacer = BudgetPacer(config.pacer)
        dim = config.bandit.dim
        self._ff = self._new_ff()
        self._service = Pacing(self.pacer, self._ff)
        self.tenants = TenantBook(config.tenants)
        self._tenant_pacing: dict[str, Pacing] = {}
        self.arms = ArmTable(config, on_change=self._resolve_soon)
        self.ledger = Ledger(config.max_pending)
        self.rng = np.random.default_rng(config.seed)
        self.context_sum = np.zeros(dim)
        self._zero_x = np.zeros(dim)
        self._dual_operand = np.zeros(())  # scratch of _assess
        for spec in models or []:
            self.add_model(spec, explore=False)

    @property
    def config(self) -> RouterConfig:
        return self._config

    def _new_ff(self) -> FeedForwardDual:
        p = self._config.pacer
        return FeedForwardDual(self._config.bandit.dim, p.feedforward_window, p.feedforward_every)

    def _resolve_soon(self) -> None:
        """Costs or arms changed: every feed-forward dual re-solves at its next route."""
        self._ff.resolve_soon()
        for pacing in self._tenant_pacing.values():
            pacing.ff.resolve_soon()

    @property
    def t(self) -> int:
        return self.bandit.t

    @property
    def registry(self) -> ModelRegistry:
        """The model table (the arm table's): read it, change it through the Router."""
        return self.arms.registry

    @property
    def nu(self) -> float:
        """The feed-forward dual of the latest route (feed-forward mode; 0 otherwise)."""
        return self._ff.nu

    # ---- administration -------------------------------------------------------------------

    def add_model(self, spec: ModelSpec, explore: bool = True) -> RegistryChange:
        """Register a model: a new arm starts at l0*I, 0 with forced exploration; a re-add
        resumes its kept statistics."""
        change, new = self.arms.add(spec, explore)
        if new:
            self.bandit.add_arm()
        return change

    def remove_model(self, model_id: str) -> RegistryChange:
        """Stop choosing the model at once; its statistics are kept for a re-add."""
        return self.arms.remove(model_id)

    def reprice(
        self,
        model_id: str,
        input_per_m: float | None = None,
        output_per_m: float | None = None,
    ) -> RegistryChange:
        return self.arms.reprice(model_id, input_per_m, output_per_m)

    def update_spec(self, spec: ModelSpec) -> None:
        """Replace an active model's spec where its prices stay (provider, base URL, limits,
        simulation): nothing the arm depends on, so no registry change is recorded."""
        self.arms.update_spec(spec)

    def has_arm(self, model_id: str) -> bool:
        """The model has an arm (it is registered, or was and got removed)."""
        return model_id in self.arms.slots

    def expected_costs(self) -> np.ndarray:
        """Per-arm expected cost of a request in US$ (see ArmTable.expected_costs)."""
        return self.arms.expected_costs()

    def set_budget(self, usd_per_request: float) -> None:
        self.pacer.set_budget(usd_per_request)
        self._ff.resolve_soon()

    # ---- tenants (core/method/tenants.py): who pays, paced and capped apiece -----------------

    def add_tenant(self, spec: TenantSpec, now: float) -> dict:
        self._pace(self.tenants.add(spec, now), now)
        return self.tenant_report(spec.id, now)

    def update_tenant(self, spec: TenantSpec, now: float) -> dict:
        tenant = self.tenants.get(spec.id)
        tenant.update(spec, now)
        self._pace(tenant, now)
        return self.tenant_report(spec.id, now)

    def remove_tenant(self, tenant_id: str) -> None:
        """Requests of the tenant in flight are still charged (to the service's pacer)."""
        self.tenants.remove(tenant_id)
        pacing = self._tenant_pacing.pop(tenant_id, None)
        if pacing is not None:  # its charges stay in the service's totals (Router.state)
            self.pacer.state.charges += pacing.pacer.state.charges
            self.pacer.state.total_spend += pacing.pacer.state.total_spend

    def _rolled(self, tenant_id: str, now: float) -> tuple[Tenant, BudgetPacer | None]:
        """The tenant, in its period at `now`, and its own pacer (None: it has no target)."""
        tenant = self.tenants.get(tenant_id)
        tenant.roll(now)
        pacing = self._tenant_pacing.get(tenant_id)
        return tenant, None if pacing is None else pacing.pacer

    def tenant_report(self, tenant_id: str, now: float) -> dict:
        tenant, pacer = self._rolled(tenant_id, now)
        if pacer is None:
            return tenant.report(now, None, None)
        return tenant.report(now, pacer.dual, pacer.budget)

    def tenant_gauges(self, tenant_id: str, now: float) -> tuple[float, float | None, float | None]:
        """(spend this period, what is left after reservations, the dual): the figures a
        metrics exporter sets per request, without building tenant_report()'s full record."""
        tenant, pacer = self._rolled(tenant_id, now)
        return tenant.account.spent_usd, tenant.remaining(), None if pacer is None else pacer.dual

    def tenant_reports(self, now: float) -> list[dict]:
        return [self.tenant_report(t.id, now) for t in self.tenants]

    def add_tenant_key(self, tenant_id: str, digest: str, key_id: str, now: float) -> None:
        self.tenants.add_key(tenant_id, digest, key_id, now)

    def revoke_tenant_key(self, tenant_id: str, key_id: str) -> bool:
        return self.tenants.revoke_key(tenant_id, key_id)

    def reserved_for(self, request_id: str) -> float:
        """What a capped tenant's budget holds for the pending request (0: nothing)."""
        entry = self.ledger.get(request_id)
        if entry is None or entry.tenant not in self.tenants:
            return 0.0
        return self.tenants.get(entry.tenant).account.reserved.get(request_id, 0.0)

    def tenant_of_key(self, digest: str) -> str | None:
        return self.tenants.of_key(digest)

    def _pace(self, tenant: Tenant, now: float) -> Pacing:
        """The tenant's pacing at its current target (the service's if it has none)."""
        if not tenant.paced:
            self._tenant_pacing.pop(tenant.id, None)
            return self._service
        target = tenant.target(now)
        pacing = self._tenant_pacing.get(tenant.id)
        if pacing is None:
            pacer = BudgetPacer(self._config.pacer.model_copy(update={"budget_usd": target}))
            pacing = self._tenant_pacing[tenant.id] = Pacing(pacer, self._new_ff())
        elif abs(target - pacing.pacer.budget) > 0.005 * pacing.pacer.budget:
            # Re-targeted on a move of over 0.5% only: each costs a config copy and a re-solve.
            pacing.pacer.retarget(target)
            pacing.ff.resolve_soon()
        return pacing

    def _pacing_of(self, tenant: str | None) -> Pacing | None:
        """The pacing a pending decision of `tenant` holds on; None: its tenant was removed."""
        if tenant is None:
            return self._service
        if tenant not in self.tenants:
            return None
        return self._tenant_pacing.get(tenant, self._service)

    def _within_cap(
        self,
        tenant: Tenant,
        limits: RouteLimits | None,
        mask: np.ndarray,
        eligible: list[bool],
        reasons: dict[str, str],
        named: int | None = None,
    ) -> tuple[np.ndarray, list[bool], dict[int, tuple[float, int]]]:
        """A capped tenant: the eligible models whose cost bound fits what is left of its
        budget, each with (bound, output limit); an output limit is lowered to fit, down to
        the settings' minimum. Raises TenantBudgetExhaustedError when none fits (or, with
        `named`, the slot of a model the caller named, when that one does not)."""
        settings = self.tenants.settings
        room = tenant.remaining()
        prompt = ((limits.prompt_tokens if limits else None) or 0) * settings.prompt_token_margin
        wanted = limits.output_tokens if limits else None
        specs = self.registry.specs
        fits: dict[int, tuple[float, int]] = {}
        cheapest = named_need = math.inf
        out_mask = mask.copy()
        for i in compress(range(len(eligible)), eligible):
            m = self.arms.slot_models[i]
            spec = specs[m]
            out = wanted or spec.max_output_tokens or settings.default_output_tokens
            if spec.max_output_tokens is not None:
                out = min(out, spec.max_output_tokens)
            floor = min(settings.min_output_tokens, out)
            prompt_usd = cost_bound(prompt, 0, spec.input_per_m, 0.0)
            per_token = spec.output_per_m / 1e6
            need = prompt_usd + floor * per_token
            cheapest = min(cheapest, need)
            if i == named:
                named_need = need
            if prompt_usd + out * per_token > room:
                out = int((room - prompt_usd) / per_token) if room > prompt_usd else 0
            if out < floor:
                out_mask[i] = False
                reasons[m] = (
                    f"its cost bound is over the ${max(room, 0.0):.4g} left of tenant "
                    f"{tenant.id!r}'s budget"
                )
                continue
            fits[i] = (prompt_usd + out * per_token, out)
        if not fits:
            raise tenant.refusal(cheapest)
        if named is not None and named not in fits:
            raise tenant.refusal(named_need)
        return out_mask, out_mask.tolist(), fits

    def configure_cooldowns(self, config: CooldownConfig) -> None:
        """New cool-down rules, starting with no model cooling (cool-downs are transient and not
        in snapshots, so a restored Router gets the service's rules here)."""
        self.cooldowns = Cooldowns(config)

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
            raise ValueError(
                f"priors were built with a different feature projection "
                f"({priors.projection_fingerprint}, not {projection_fingerprint}); "
                f"{priors.remake_hint()}"
            )
        loaded = []
        slots = self.arms.slots
        for model_id, prior in priors.arms.items():
            if model_id in slots:
                A, b = mean_preserving_load(prior, self.config.bandit.ridge)
                self.bandit.load_prior(slots[model_id], A, b, self.config.bandit.ridge)
                if prior.mean_cost_usd is not None:
                    self.arms.seed_usage(slots[model_id], prior.mean_cost_usd)
                loaded.append(model_id)
        return loaded

    # ---- the request path -----------------------------------------------------------------

    def _signal(self) -> np.ndarray:
        """What the dual multiplies in the score, per arm (see ArmTable.cost_signal)."""
        return self.arms.cost_signal(self.pacer.budget)[0]

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
        self,
        x: np.ndarray,
        mask: np.ndarray,
        eligible: list[bool],
        reasons: dict[str, str],
        pacing: Pacing,
    ) -> tuple[np.ndarray, list[bool], dict[str, str], np.ndarray, np.ndarray, np.ndarray]:
        """The pacer's ceiling on top of the caller's eligibility (ArmTable.eligible), and the
        score terms at time t: (mask, mask as a list, reasons, quality, bonus, penalty)."""
        quality, bonus = self.bandit.estimates(x)
        pacer = pacing.pacer
        signal, ceiling_costs, dearest = self.arms.cost_signal(pacer.budget)
        # None in soft mode, at lambda <= 0 (the ceiling admits every arm), or with no arm active.
        cap = None if dearest is None else pacer.ceiling(dearest)
        if cap is not None:
            ceiling = ceiling_costs <= cap
            ceiling &= mask
            under = ceiling.tolist()
            # If the ceiling leaves nothing, only the caller's limits apply.
            if True in under:
                if under != eligible:  # reasons only when the ceiling excludes an arm
                    why = f"above the pacer's ceiling (lambda={pacer.dual:.3f})"
                    # The arms it excludes, eligible > under (True > False), found in C.
                    for name in compress(self.arms.slot_models, map(gt, eligible, under)):
                        reasons[name] = why
                mask, eligible = ceiling, under
        limit = pacer.spend_limit()
        if limit is not None:
            mask, eligible = self._within_balance(limit, mask, eligible, reasons)
        # The cost penalty: the dual weight (0 in hard mode) times the signal, plus the static
        # cost weight's term (0 by default). The dual weight goes in as a 0-d array: numpy
        # converts a Python float operand on every call.
        weight = self._dual_operand
        weight[()] = pacing.ff.nu if self._nu_in_score else pacer.soft_weight()
        penalty = weight * signal
        if self._cost_weight != 0.0:
            penalty = self._cost_weight * self.arms.cost_terms + penalty
        return mask, eligible, reasons, quality, bonus, penalty

    def _within_balance(
        self, limit: float, mask: np.ndarray, eligible: list[bool], reasons: dict[str, str]
    ) -> tuple[np.ndarray, list[bool]]:
        """Leave out the arms whose expected cost is over the budget's running balance
        (BudgetPacer.spend_limit); if that leaves none, the cheapest eligible arm only."""
        expected = self.arms.expected_costs()
        afford = expected <= limit
        afford &= mask
        if afford.tolist() == eligible:
            return mask, eligible
        if not afford.any():
            cheapest = int(np.argmin(np.where(mask, expected, np.inf)))
            afford = np.zeros_like(mask)
            afford[cheapest] = True
        under = afford.tolist()
        why = f"expected cost over the budget's running balance (${limit:.3g})"
        for name in compress(self.arms.slot_models, map(gt, eligible, under)):
            reasons[name] = why
        return afford, under

    def route(
        self,
        x: np.ndarray,
        limits: RouteLimits | None = None,
        model: str | None = None,
        request_id: str | None = None,
        now: float | None = None,
        tenant: str | None = None,
    ) -> Decision:
        """Pick a model for context x (or record an explicit `model`, bypassing the bandit but
        not the caller's own limits). `request_id` names the decision (default: random); a
        name already in use is refused. With `now` (unix seconds), auto-routing skips models
        cooling down after failures, unless that would leave none. A `tenant`'s request (it
        needs `now`) is paced at the tenant's target and, if capped, reserves its cost bound
        (core/method/tenants.py)."""
        x = self._check_context(x)
        arms = self.arms
        if request_id is not None and self.ledger.in_use(request_id):
            raise DuplicateRequestIdError(request_id)
        payer = None
        pacing = self._service
        if tenant is not None:
            if now is None:
                raise ValueError("a tenant's request needs the time (now)")
            payer = self.tenants.get(tenant)
            payer.arrived(now)
            pacing = self._pace(payer, now)
        if model is not None and not (model in arms.slots and arms.active[arms.slots[model]]):
            why = "removed" if model in arms.slots else "not registered"
            raise NoEligibleModelError({model: why})
        mask, eligible, reasons = arms.eligible(limits)
        if model is None and now is not None and self.cooldowns.state:
            mask, eligible = self._skip(mask, eligible, reasons, self.cooldowns.cooling(now), now)
        if model is None and True not in eligible:
            raise NoEligibleModelError(reasons)
        if model is not None and not eligible[arms.slots[model]]:
            raise NoEligibleModelError({model: reasons[model]})
        fits = None
        if payer is not None and payer.capped:
            before = eligible
            named = None if model is None else arms.slots[model]
            mask, eligible, fits = self._within_cap(payer, limits, mask, eligible, reasons, named)
            after_cap = eligible
        self.bandit.t += 1
        t = self.bandit.t
        pacer = pacing.pacer
        if self._feedforward:
            signal = (
                self._signal
                if pacing is self._service
                else lambda: arms.cost_signal(pacer.budget)[0]
            )
            pacing.ff.step(x, self.bandit.theta, arms.active, signal, pacer.dual)
        mask, eligible, reasons, quality, bonus, penalty = self._assess(
            x, mask, eligible, reasons, pacing
        )
        forced = False
        if model is not None:
            slot = arms.slots[model]
        else:
            # The first eligible arm with forced pulls left, if any. In Python over the arms
            # that have pulls (compress skips the rest in C): an arm held back by the ceiling
            # keeps its pulls, and this check runs, for as long as the ceiling holds.
            explore = None
            pulls = arms.forced_left.tolist()
            if any(pulls) and not pacer.over_budget:
                for i in compress(range(len(pulls)), pulls):
                    if pulls[i] > 0 and eligible[i]:
                        explore = i
                        break
            if explore is not None:
                slot = explore
                arms.take_forced(slot)
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
        entry = self.ledger.open(request_id, slot, x, t, forced, tenant)
        self._hold(entry)
        max_tokens, bound = None, 0.0
        if fits is not None:
            bound, max_tokens = fits[slot]
            payer.reserve(request_id, bound)
            if model is None and self._degraded(slot, before, after_cap, quality, bonus, penalty):
                payer.account.degraded += 1
        # Positional: keyword arguments would cost ~0.4 us more per request.
        return Decision(
            request_id,
            arms.slot_models[slot],  # model
            t,
            pacer.dual,
            forced,
            model is not None,  # direct
            arms.model_names(),
            quality,
            bonus,
            penalty,
            mask,  # eligible
            reasons,
            tenant,
            max_tokens,
            bound,
        )

    @staticmethod
    def _degraded(
        slot: int,
        before_cap: list[bool],
        after_cap: list[bool],
        quality: np.ndarray,
        bonus: np.ndarray,
        penalty: np.ndarray,
    ) -> bool:
        """The tenant's cap left out a model that scored above the one chosen."""
        score = quality + bonus - penalty
        return any(
            b and not a and score[i] > score[slot]
            for i, (b, a) in enumerate(zip(before_cap, after_cap, strict=True))
        )

    def resume(self, request_id: str, direct: bool) -> Decision | None:
        """The decision already made under `request_id`, if it is pending and not yet charged:
        a caller whose route call was lost (the Router died mid-call) picks it up instead of
        deciding twice. None: no such decision, route again."""
        entry = self.ledger.get(request_id)
        if entry is None or entry.charged:
            return None
        if entry.tenant in self.tenants and self.tenants.get(entry.tenant).holds(request_id):
            # A capped tenant's decision: the output limit its reservation covers is not
            # recorded, so it is dropped (what it held goes back) and decided again.
            self._drop(request_id, entry)
            return None
        none = np.empty(0)
        model = self.arms.slot_models[entry.slot]
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
        slots = self.arms.slots
        out = mask.copy()
        for m in failed:
            out[slots[m]] = False
        after_failed = out.copy()
        for m in cooling:
            slot = slots.get(m)
            if slot is not None:
                out[slot] = False
        if not out.any():
            out = after_failed
        for m, s in slots.items():
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
        entry = self.ledger.lookup(request_id)
        arms = self.arms
        current = arms.slot_models[entry.slot]
        if entry.charged or current != failed_model:
            raise ValueError(
                f"request {request_id!r} is not awaiting {failed_model!r} (it is on {current!r}"
                f"{', answered' if entry.charged else ''})"
            )
        entry.failed = (*entry.failed, failed_model)
        if entry.forced:  # the newcomer did not get its exploration pull: give it back
            arms.give_back_forced(entry.slot)
            entry.forced = False
        if len(entry.failed) > self.cooldowns.config.max_fallbacks:
            self._drop(request_id, entry)
            return None
        mask, eligible, reasons = arms.eligible(limits)
        mask, eligible = self._skip(
            mask, eligible, reasons, self.cooldowns.cooling(now), now, entry.failed
        )
        if True not in eligible:
            self._drop(request_id, entry)
            return None
        pacing = self._pacing_of(entry.tenant) or self._service
        payer = self.tenants.find(entry.tenant) if entry.tenant is not None else None
        fits = None
        if payer is not None and payer.capped:
            payer.release(request_id)  # the failed model's bound; the new one's is reserved
            try:
                mask, eligible, fits = self._within_cap(payer, limits, mask, eligible, reasons)
            except TenantBudgetExhaustedError:
                self._drop(request_id, entry)
                return None
        mask, eligible, reasons, quality, bonus, penalty = self._assess(
            entry.x, mask, eligible, reasons, pacing
        )
        score = np.where(mask, quality + bonus - penalty, _NEG_INF)
        slot = int(np.argmax(score))  # the first best: no RNG draw, so routing stays seeded
        self.bandit.mark_pull(slot)
        self._rekey(entry, slot)
        max_tokens, bound = None, 0.0
        if fits is not None:
            bound, max_tokens = fits[slot]
            payer.reserve(request_id, bound)
        return Decision(
            request_id,
            arms.slot_models[slot],
            entry.t,
            pacing.pacer.dual,
            False,  # forced
            False,  # direct
            arms.model_names(),
            quality,
            bonus,
            penalty,
            mask,
            reasons,
            entry.tenant,
            max_tokens,
            bound,
        )

    def answered_by(
        self,
        request_id: str,
        model: str,
        x: np.ndarray,
        forced: bool,
        tenant: str | None = None,
    ) -> str:
        """Make sure the pending decision of an answered request names `model`, the one that
        answered, before it is charged. A Router that restarted may have lost the decision
        (made after its last flush) or a fallback's re-key; the caller, who holds the context,
        restores it. Returns "known", "rekeyed" or "adopted" (or "settled" if already charged
        and rewarded). An adopted decision is a pull at the current time."""
        if self.ledger.settled(request_id):
            return "settled"
        entry = self.ledger.get(request_id)
        if model not in self.arms.slots:
            raise NoEligibleModelError({model: "not registered"})
        slot = self.arms.slots[model]
        if entry is not None:
            if entry.slot == slot:
                return "known"
            self._rekey(entry, slot)
            self.bandit.mark_pull(slot)  # as the lost fallback did
            return "rekeyed"
        x = self._check_context(x)
        self.bandit.t += 1
        self.bandit.mark_pull(slot)
        self.context_sum += x
        tenant = tenant if tenant is not None and tenant in self.tenants else None
        self._hold(self.ledger.restore(request_id, slot, x, self.bandit.t, forced, tenant))
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
        entry = self.ledger.get(request_id) if request_id is not None else None
        if entry is not None and not entry.charged:
            if entry.forced and self.arms.slot_models[entry.slot] == model:
                self.arms.give_back_forced(entry.slot)
            self._drop(request_id, entry)
        return cd

    # ---- recovery -------------------------------------------------------------------------

    def is_pending(self, request_id: str) -> bool:
        """A decision awaits its charge or reward under `request_id`."""
        return request_id in self.ledger

    def pending_ids(self) -> list[str]:
        """The request ids of the pending decisions, oldest first."""
        return self.ledger.ids()

    def replay_decision(
        self,
        request_id: str,
        model: str,
        x: np.ndarray,
        t: int,
        forced: bool,
        tenant: str | None = None,
        reserved_usd: float = 0.0,
    ) -> bool:
        """Re-apply a recorded decision during recovery: time, pull, forced pull, pending
        entry and a capped tenant's reservation move as route() moved them (the choice itself
        is not re-made). False, and nothing changes, when the decision is pending already or
        its model has no arm."""
        if request_id in self.ledger or model not in self.arms.slots:
            return False
        slot = self.arms.slots[model]
        self.advance_to(t)
        self.bandit.mark_pull(slot)
        if forced:
            self.arms.take_forced(slot)
        self.context_sum += x
        payer = self.tenants.find(tenant) if tenant is not None else None
        entry = self.ledger.restore(
            request_id, slot, np.asarray(x, float), t, forced, None if payer is None else tenant
        )
        self._hold(entry)
        if payer is not None:
            payer.reserve(request_id, reserved_usd)
        return True

    def advance_to(self, t: int) -> None:
        """Move time to at least t (a journal event replayed in recovery)."""
        if t > self.bandit.t:
            self.bandit.t = t

    def expire(self, request_ids: list[str]) -> int:
        """Forget pending contexts (their TTL ran out); returns how many were still pending."""
        for rid in request_ids:
            entry = self.ledger.get(rid)
            if entry is not None and not entry.charged:
                self._release(rid, entry)
        return self.ledger.expire(request_ids)

    # ---- what decisions in flight hold of the budget's running balance -------------------

    def _held(self, pacer: BudgetPacer | None, slot: int) -> float:
        """What a decision on `slot` holds of the balance until charged: its expected cost less
        the budget the request brings (a request cheaper than the budget adds to it)."""
        if pacer is None or not pacer.banking:
            return 0.0
        return self.arms.expected_cost(slot) - pacer.budget

    def _hold(self, entry: Pending) -> None:
        pacing = self._pacing_of(entry.tenant)
        if pacing is not None and pacing.pacer.banking:
            pacing.pacer.hold(self._held(pacing.pacer, entry.slot))

    def _rekey(self, entry: Pending, slot: int) -> None:
        """A pending, uncharged decision moves to another model (a fallback)."""
        pacing = self._pacing_of(entry.tenant)
        if pacing is not None and pacing.pacer.banking:
            pacing.pacer.release(self._held(pacing.pacer, entry.slot))
            pacing.pacer.hold(self._held(pacing.pacer, slot))
        entry.slot = slot

    def _release(self, request_id: str, entry: Pending) -> None:
        """What an uncharged decision held (balance; a capped tenant's reservation) goes back."""
        pacing = self._pacing_of(entry.tenant)
        if pacing is not None:
            pacing.pacer.release(self._held(pacing.pacer, entry.slot))
            if entry.tenant is not None:
                self.tenants.get(entry.tenant).release(request_id)

    def _drop(self, request_id: str, entry: Pending) -> None:
        """An uncharged decision ends without an answer."""
        self._release(request_id, entry)
        self.ledger.drop(request_id)

    # ---- charges and feedback -------------------------------------------------------------

    def due(self, request_id: str, kind: str) -> bool:
        """Whether a "charge" or "feedback" for `request_id` would apply (False: a duplicate).
        Raises UnknownRequestError when no decision is pending under the id."""
        if kind == "charge":
            return self.ledger.charge_due(request_id) is not None
        return self.ledger.reward_due(request_id) is not None

    def charge(self, request_id: str, cost_usd: float, now: float | None = None) -> FeedbackStatus:
        """Charge the realised cost of a routed request to its pacer and, for a tenant's, to
        the tenant's period spend (in the period holding `now`), once per request."""
        if not (_is_number(cost_usd) and math.isfinite(cost_usd) and cost_usd >= 0):
            raise InvalidFeedbackError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        entry = self.ledger.charge_due(request_id)
        if entry is None:
            return FeedbackStatus.DUPLICATE
        cost = float(cost_usd)
        arms = self.arms
        if self.cooldowns.state:  # the model answered: its failure streak ends
            self.cooldowns.succeed(arms.slot_models[entry.slot])
        pacing = self._pacing_of(entry.tenant)
        pacer = self.pacer if pacing is None else pacing.pacer
        held = self._held(None if pacing is None else pacer, entry.slot)
        pacer.charge(cost, arms.dual_step_scale(pacer.budget), held)
        if pacing is not None and entry.tenant is not None:
            payer = self.tenants.get(entry.tenant)
            payer.settle(request_id, cost, payer.account.period_start if now is None else now)
        arms.learn_usage(entry.slot, cost)
        self.ledger.charged(request_id, entry)
        return FeedbackStatus.APPLIED

    def feedback(self, request_id: str, reward: float) -> FeedbackStatus:
        """Learn from a reward in [0, 1]; a repeat is reported as a duplicate and not applied."""
        if not (_is_number(reward) and math.isfinite(reward) and 0 <= reward <= 1):
            raise InvalidFeedbackError(f"reward must be a finite number in [0, 1], got {reward!r}")
        entry = self.ledger.reward_due(request_id)
        if entry is None:
            return FeedbackStatus.DUPLICATE
        reward = float(reward)
        shifts = self.shifts
        if shifts.enabled:
            residual = self.bandit.predict(entry.slot, entry.x) - reward
        self.bandit.update(entry.slot, entry.x, reward)
        if shifts.enabled:
            self._watch_quality(entry.slot, entry.x, reward, residual)
        self.ledger.rewarded(request_id, entry)
        return FeedbackStatus.APPLIED

    def _watch_quality(self, slot: int, x: np.ndarray, reward: float, residual: float) -> None:
        """A drop cuts the arm's evidence, shelving what it knew; a recovery brings that back."""
        shifts, bandit = self.shifts, self.bandit
        back = shifts.recovered(slot, x, reward)
        if back is not None:
            bandit.restore_arm(slot, back.Ab, back.ridge_floor, back.last_update)
        elif shifts.observe(slot, residual):
            shifts.shelve(slot, Shelf(*bandit.arm_state(slot)))
            bandit.shrink(slot, self.config.bandit.shift_keep)

    def explain(
        self, x: np.ndarray, limits: RouteLimits | None = None, now: float | None = None
    ) -> dict[str, dict]:
        """What route() would weigh for x as the next request, without routing."""
        x = self._check_context(x)
        mask, eligible, reasons = self.arms.eligible(limits)
        if now is not None and self.cooldowns:
            mask, eligible = self._skip(mask, eligible, reasons, self.cooldowns.cooling(now), now)
        self.bandit.t += 1  # route() scores at t + 1; undone below, nothing else changes
        try:
            mask, _, reasons, quality, bonus, penalty = self._assess(
                x, mask, eligible, reasons, self._service
            )
        finally:
            self.bandit.t -= 1
        return Decision(
            request_id="",
            model="",
            t=self.t + 1,
            dual=self.pacer.dual,
            forced=False,
            direct=False,
            models=self.arms.model_names(),
            quality=quality,
            bonus=bonus,
            penalty=penalty,
            eligible=mask,
            reasons=reasons,
        ).explain()

    # ---- observability and state ----------------------------------------------------------

    def state(self, now: float | None = None) -> dict:
        """With `now`, `cooldowns` says how long each failing model still cools down."""
        s = self.pacer.state
        tenant_pacing = self._tenant_pacing.values()
        mean_x = self.context_sum / max(self.t, 1)
        expected = self.expected_costs()
        arms = self.arms
        return {
            "t": self.t,
            "budget_usd_per_request": self.pacer.budget,
            "dual": s.dual,
            "feedforward_dual": self._ff.nu if self._feedforward else None,
            "spend_ema_usd": s.cost_ema,
            # Every pacer's: the service's and each tenant's.
            "charges": s.charges + sum(p.pacer.state.charges for p in tenant_pacing),
            "total_spend_usd": s.total_spend
            + math.fsum(p.pacer.state.total_spend for p in tenant_pacing),
            "tenants": len(self.tenants),
            "registry_version": self.registry.version,
            "pending": len(self.ledger),
            "cooldowns": self.cooldowns.to_json(now),
            "models": {
                m: {
                    "active": bool(arms.active[i]),
                    "pulls": int(self.bandit.pulls[i]),
                    "updates": int(self.bandit.updates[i]),
                    "forced_pulls_left": int(arms.forced_left[i]),
                    "blended_usd_per_m": float(arms.prices[i] * 1000),
                    "expected_cost_usd": float(expected[i]),
                    "estimated_quality": float(self.bandit.theta[i] @ mean_x) if self.t else None,
                }
                for i, m in enumerate(arms.slot_models)
            },
        }

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything a restart needs, as (numpy arrays, JSON-able metadata); cool-downs are
        transient and left out. Router.from_state makes the same Router again."""
        arm_arrays, arm_meta = self.arms.to_state()
        ledger_arrays, ledger_meta = self.ledger.to_state(self.config.bandit.dim)
        ff_arrays, ff_meta = self._ff.to_state()
        arrays = {
            **self.bandit.arrays(),
            **self.shifts.arrays(),
            **arm_arrays,
            "context_sum": self.context_sum,
            **ledger_arrays,
            **ff_arrays,
        }
        tenant_pacing = {}
        for tenant_id, pacing in self._tenant_pacing.items():
            buffers, resolver = pacing.ff.to_state()
            arrays[_TENANT_BUFFER + tenant_id] = buffers["resolver_buffer"]
            tenant_pacing[tenant_id] = {
                "pacer": vars(pacing.pacer.state),
                "budget_usd": pacing.pacer.budget,
                **resolver,
            }
        meta = {
            "config": self.config.model_dump(mode="json"),
            "t": self.t,
            "pacer": vars(self.pacer.state),
            "budget_usd": self.pacer.budget,
            **arm_meta,
            "rng": self.rng.bit_generator.state,
            **ledger_meta,
            **ff_meta,
            "tenants": self.tenants.to_json(),
            "tenant_pacing": tenant_pacing,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> Router:
        """The Router that to_state() described."""
        router = cls(RouterConfig.model_validate(meta["config"]))
        router.bandit.load_arrays(arrays, meta["t"])
        router.shifts.load_arrays(arrays)
        router.pacer.state = PacerState(**meta["pacer"])
        router.pacer.set_budget(meta["budget_usd"])
        router.arms.load_state(arrays, meta)
        router.context_sum = arrays["context_sum"]
        router._ff.load_state(arrays, meta)
        router.rng.bit_generator.state = meta["rng"]
        router.ledger.load_state(arrays, meta)
        router.tenants.load_json(meta.get("tenants", []))
        for tenant_id, p in meta.get("tenant_pacing", {}).items():
            pacer = BudgetPacer(
                router.config.pacer.model_copy(update={"budget_usd": p["budget_usd"]}),
                PacerState(**p["pacer"]),
            )
            ff = router._new_ff()
            ff.load_state({"resolver_buffer": arrays[_TENANT_BUFFER + tenant_id]}, p)
            router._tenant_pacing[tenant_id] = Pacing(pacer, ff)
        return router


__all__ = [
    "Decision",
    "FeedbackStatus",
    "RegistryError",
    "RouteLimits",
    "Router",
]
