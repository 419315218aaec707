"""The arm table: the model table and, per arm, price, learned usage, activity and forced pulls."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.method.config import CostSignal, RouterConfig
from core.method.costs import cost_term
from core.method.errors import NoEligibleModelError
from core.method.registry import Capability, ModelRegistry, ModelSpec, RegistryChange


class RouteLimits(BaseModel):
    """A caller's own limits for one request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_blended_per_m: float | None = Field(
        None, gt=0.0, description="max blended list price, US$ per million tokens"
    )
    allowed_models: tuple[str, ...] | None = Field(None, min_length=1)
    # What the request needs (core.service.capabilities): capabilities, and its size in tokens.
    requires: tuple[Capability, ...] = ()
    prompt_tokens: int | None = Field(None, ge=0, description="estimated tokens of the input")
    output_tokens: int | None = Field(None, ge=1, description="the output the caller allows")


def cannot_serve(spec: ModelSpec, limits: RouteLimits) -> str | None:
    """Why `spec` cannot serve a request with these needs (None: it can)."""
    missing = [c for c in limits.requires if c not in spec.capabilities]
    if missing:
        has = ", ".join(spec.capabilities) or "none"
        return f"lacks {', '.join(missing)} (capabilities: {has})"
    out = limits.output_tokens
    if out is not None and spec.max_output_tokens is not None and out > spec.max_output_tokens:
        return f"max output {spec.max_output_tokens:,} tokens < {out:,} requested"
    if limits.prompt_tokens is not None:
        need = limits.prompt_tokens + (out or 0)
        if need > spec.context_length:
            return (
                f"context {spec.context_length:,} tokens < ~{need:,} needed "
                f"(prompt ~{limits.prompt_tokens:,}" + (f" + {out:,} output)" if out else ")")
            )
    return None


@dataclass(slots=True)
class _ArmView:
    """Per-arm values derived from list prices, learned usage, the active set and the slot
    names, which the request path would otherwise recompute on every call (twice per request
    for the expected costs). Built on demand; see ArmTable._changed and ArmTable.learn_usage."""

    expected: np.ndarray  # expected cost of a request per arm, US$ (ArmTable.expected_costs)
    known: np.ndarray  # the slots with learned usage
    unknown: np.ndarray  # the others, which borrow the mean usage of the known ones
    unknown_prices: np.ndarray  # their list prices
    dearest: float | None  # max expected cost over the active arms; None when none is active
    top_price: float | None  # max list price over the active arms; None when none is active
    removed: dict[str, str]  # the eligibility reason of each removed model
    models: tuple[str, ...]  # the model of each slot (Decision.models)
    signal: np.ndarray | None = None  # expected / signal_budget, made on first use
    signal_budget: float = math.nan


class ArmTable:
    """One slot per model ever registered (a removed model keeps its slot, for a re-add), in
    step with the registry. The arrays are the table's own: read them, change them only
    through its calls. `on_change` is called whenever prices, usage, the active set or the
    slots change (the feed-forward dual re-solves then)."""

    def __init__(self, config: RouterConfig, on_change: Callable[[], None] | None = None) -> None:
        self._cost_scale = config.cost_scale
        self._usage_ema = config.pacer.usage_ema
        self._expected_mode = config.pacer.cost_signal == CostSignal.EXPECTED_COST
        self._step_power = config.pacer.step_range_power
        self._explore_pulls = config.forced_exploration_pulls
        self._on_change = on_change
        self._view: _ArmView | None = None
        self.registry = ModelRegistry()
        self.slot_models: list[str] = []  # the model of each slot
        self.slots: dict[str, int] = {}  # and the slot of each model
        self.prices = np.zeros(0)  # blended list price, US$ per 1k tokens
        self.cost_terms = np.zeros(0)  # the normalised cost term c~ of the price
        self.active = np.zeros(0, dtype=bool)
        self.forced_left = np.zeros(0, dtype=np.int64)  # forced exploration pulls left
        # Per-arm EMA of realised cost / blended price: thousands of tokens per request.
        self.usage_k = np.zeros(0)

    def _changed(self) -> None:
        """Prices, usage, the active set or the slots changed: rebuild the view on next use."""
        self._view = None
        if self._on_change is not None:
            self._on_change()

    def _arm_view(self) -> _ArmView:
        view = self._view
        if view is None:
            view = self._view = self._build_arm_view()
        return view

    def _build_arm_view(self) -> _ArmView:
        usage, prices, active = self.usage_k, self.prices, self.active
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
                for m, a in zip(self.slot_models, active.tolist(), strict=True)
                if not a
            },
            models=tuple(self.slot_models),
        )

    def model_names(self) -> tuple[str, ...]:
        """The model of each slot, as a tuple shared by every decision until the slots change."""
        return self._arm_view().models

    # ---- administration ---------------------------------------------------------------------

    def _set_price(self, slot: int, spec: ModelSpec) -> None:
        self.prices[slot] = spec.blended_price
        self.cost_terms[slot] = cost_term(np.array([spec.blended_price]), self._cost_scale)[0]

    def add(self, spec: ModelSpec, explore: bool = True) -> tuple[RegistryChange, bool]:
        """Register a model: (the registry's change, whether it got a new slot). A new slot has
        no usage yet and, with `explore`, the configured forced exploration pulls; a re-add
        keeps its slot."""
        change = self.registry.add(spec)
        new = spec.id not in self.slots
        if new:
            self.slots[spec.id] = len(self.slot_models)
            self.slot_models.append(spec.id)
            self.prices = np.append(self.prices, 0.0)
            self.cost_terms = np.append(self.cost_terms, 0.0)
            self.active = np.append(self.active, False)
            self.usage_k = np.append(self.usage_k, np.nan)
            pulls = self._explore_pulls if explore else 0
            self.forced_left = np.append(self.forced_left, pulls)
        slot = self.slots[spec.id]
        self.active[slot] = True
        self._set_price(slot, spec)
        self._changed()
        return change, new

    def remove(self, model_id: str) -> RegistryChange:
        """Deactivate a model's arm; its slot and usage stay for a re-add."""
        change = self.registry.remove(model_id)
        self.active[self.slots[model_id]] = False
        self._changed()
        return change

    def reprice(
        self, model_id: str, input_per_m: float | None = None, output_per_m: float | None = None
    ) -> RegistryChange:
        change = self.registry.reprice(model_id, input_per_m, output_per_m)
        self._set_price(self.slots[model_id], self.registry.specs[model_id])
        self._changed()
        return change

    def update_spec(self, spec: ModelSpec) -> None:
        """Replace an active model's spec where nothing the arm depends on changes (provider,
        base URL, limits, simulation; the same prices): no registry change is recorded."""
        self.registry.refresh(spec)

    def take_forced(self, slot: int) -> None:
        """One forced exploration pull used (an arm with none left keeps none)."""
        if self.forced_left[slot] > 0:
            self.forced_left[slot] -= 1

    def give_back_forced(self, slot: int) -> None:
        """A forced pull that did not happen (its request failed): the arm gets it back."""
        self.forced_left[slot] += 1

    # ---- the cost view ------------------------------------------------------------------------

    def expected_costs(self) -> np.ndarray:
        """Per-arm expected cost of a request in US$: list price x learned usage (an arm with no
        charges yet borrows the mean usage of the others, so a re-price applies at once)."""
        return self._arm_view().expected.copy()

    def expected_cost(self, slot: int) -> float:
        """One arm's expected cost (as expected_costs(), without copying the array)."""
        return self._arm_view().expected.item(slot)

    def cost_signal(self, budget: float) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(what the dual multiplies in the score, what the hard ceiling compares, the max of
        the latter over the active arms or None when none is active). The arrays belong to the
        table: callers must not keep or modify them."""
        view = self._arm_view()
        if self._expected_mode:
            if view.signal_budget != budget:  # first use, or the budget changed
                view.signal = view.expected / budget
                view.signal_budget = budget
            return view.signal, view.expected, view.dearest
        return self.cost_terms, self.prices, view.top_price

    def dual_step_scale(self, budget: float) -> float:
        """With expected costs the dual prices c_a/B, whose gradient ranges up to max_a c_a/B.
        Scaling the step by (B / max_a c_a)^p keeps one expensive pick from swinging the dual
        far past its equilibrium (the paper's oscillation). List-price mode keeps the step."""
        if not self._expected_mode:
            return 1.0
        dearest = self._arm_view().dearest
        if dearest is None or dearest <= 0:  # None: no active arm
            return 1.0
        ratio = budget / dearest
        return (ratio if ratio < 1.0 else 1.0) ** self._step_power  # min(1.0, ratio), no call

    def seed_usage(self, slot: int, mean_cost_usd: float) -> None:
        """Usage from a prior's mean cost, as if the arm had answered once at that cost."""
        self.usage_k[slot] = mean_cost_usd / self.prices.item(slot)
        self._changed()

    def learn_usage(self, slot: int, cost_usd: float) -> None:
        """A charge of `cost_usd` on `slot` moves its usage EMA (the first one sets it)."""
        price = self.prices.item(slot)
        ratio = cost_usd / price
        old, ema = self.usage_k.item(slot), self._usage_ema
        usage = ratio if math.isnan(old) else ema * old + (1.0 - ema) * ratio
        self.usage_k[slot] = usage
        view = self._view
        if view is not None:
            if math.isnan(old) or math.isnan(usage):
                self._changed()  # the set of arms with learned usage changed: rebuild
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
            fallback = self.usage_k[view.known].mean()
            view.expected[view.unknown] = view.unknown_prices * fallback
            view.signal_budget = math.nan  # remake the signal on next use
            if view.dearest is not None:
                view.dearest = float(view.expected[self.active].max())
            return
        # Only this arm's expected cost moved.
        if view.signal is not None:
            view.signal[slot] = cost / view.signal_budget
        if self.active.item(slot):
            if cost >= view.dearest:
                view.dearest = cost
            elif before == view.dearest:  # the dearest arm got cheaper: find the new max
                view.dearest = float(view.expected[self.active].max())

    # ---- eligibility ------------------------------------------------------------------------

    def eligible(self, limits: RouteLimits | None) -> tuple[np.ndarray, list[bool], dict[str, str]]:
        """The caller's eligibility: (mask, the mask as a list, why each other model is not)."""
        mask = self.active.copy()
        reasons = dict(self._arm_view().removed)  # a copy: the caller adds to it
        if limits is not None:
            slots = self.slots
            if limits.allowed_models is not None:
                unknown = set(limits.allowed_models) - set(slots)
                if unknown:
                    raise NoEligibleModelError({m: "not registered" for m in sorted(unknown)})
                allowed = np.zeros_like(mask)
                allowed[[slots[m] for m in limits.allowed_models]] = True
                for m, s in slots.items():
                    if mask[s] and not allowed[s]:
                        reasons[m] = "not in allowed_models"
                mask &= allowed
            if limits.max_blended_per_m is not None:
                cheap = self.prices * 1000.0 <= limits.max_blended_per_m
                for m, s in slots.items():
                    if mask[s] and not cheap[s]:
                        reasons[m] = (
                            f"blended price {self.prices[s] * 1000:.4g} $/M exceeds "
                            f"max_blended_per_m {limits.max_blended_per_m:.4g}"
                        )
                mask &= cheap
            if limits.requires or limits.prompt_tokens is not None or limits.output_tokens:
                specs = self.registry.specs
                for m, s in slots.items():
                    if mask[s] and (why := cannot_serve(specs[m], limits)) is not None:
                        reasons[m] = why
                        mask[s] = False
        return mask, mask.tolist(), reasons

    # ---- state ------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, metadata) of a snapshot; prices and cost terms follow from the registry."""
        arrays = {"forced_left": self.forced_left, "usage_k": self.usage_k}
        meta = {"registry": self.registry.to_json(), "slot_models": self.slot_models}
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Replace the contents with a snapshot's (see to_state); on_change is not called."""
        self.registry = ModelRegistry.from_json(meta["registry"])
        self.slot_models = list(meta["slot_models"])
        self.slots = {m: i for i, m in enumerate(self.slot_models)}
        k = len(self.slot_models)
        self.prices, self.cost_terms = np.zeros(k), np.zeros(k)
        for m, i in self.slots.items():
            self._set_price(i, self.registry.specs[m])
        self.active = np.array([self.registry.active[m] for m in self.slot_models], dtype=bool)
        self.forced_left = arrays["forced_left"].astype(np.int64)
        self.usage_k = arrays["usage_k"].astype(float)
        self._view = None
