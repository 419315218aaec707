"""The online primal-dual budget pacer: spend EMA, dual variable, soft weight, hard ceiling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.method.config import PacerConfig, PacerMode
from core.method.pacer import BudgetPacer, PacerState

# Blended prices ($ per 1k tokens) of llama, mistral, flash, pro (../shared/data/prices.json).
PRICES = np.array([1e-4, 1e-3, 1.4e-3, 5.625e-3])
ALL = np.ones(4, dtype=bool)


def _pacer(budget: float = 1.0, mode: PacerMode = PacerMode.ADAPTIVE, dual: float | None = None):
    pacer = BudgetPacer(PacerConfig(budget_usd=budget, mode=mode))
    if dual is not None:
        pacer.state = PacerState(cost_ema=budget, dual=dual)
    return pacer


def test_starts_at_budget_with_zero_dual() -> None:
    pacer = _pacer(budget=0.002)
    assert pacer.state.cost_ema == 0.002
    assert pacer.dual == 0.0
    assert not pacer.over_budget
    assert pacer.state.charges == 0 and pacer.state.total_spend == 0.0


def test_exact_values_for_the_first_steps() -> None:
    # cbar <- 0.95 cbar + 0.05 c ; lambda <- clip(lambda + 0.05 (cbar/B - 1), 0, 5), B = 1.
    pacer = _pacer(budget=1.0)
    expected = [
        (2.0, 1.05, 0.0025),
        (2.0, 1.0975, 0.007375),
        (2.0, 1.142625, 0.01450625),
        # Spend drops to 0 but the EMA is still above budget: lambda keeps rising for a while.
        (0.0, 1.08549375, 0.0187809375),
        (0.0, 1.0312190625, 0.020341890625),
        (0.0, 0.979658109375, 0.01932479609375),
        (0.0, 0.93067520390625, 0.01585855628906),
    ]
    for cost, cbar, dual in expected:
        pacer.charge(cost)
        assert pacer.state.cost_ema == pytest.approx(cbar, abs=1e-12)
        assert pacer.dual == pytest.approx(dual, abs=1e-12)
    assert pacer.state.charges == 7
    assert pacer.state.total_spend == pytest.approx(6.0)


def test_dual_is_scale_free_in_dollars() -> None:
    # The same ratios at a realistic budget give the same dual.
    pacer = _pacer(budget=0.002)
    pacer.charge(0.004)
    assert pacer.state.cost_ema == pytest.approx(0.0021, rel=1e-12)
    assert pacer.dual == pytest.approx(0.0025, abs=1e-12)


def test_underspend_keeps_dual_at_zero_not_negative() -> None:
    pacer = _pacer(budget=1.0)
    pacer.charge(0.0)
    assert pacer.state.cost_ema == pytest.approx(0.95)
    assert pacer.dual == 0.0
    for _ in range(100):
        pacer.charge(0.5)
    assert pacer.dual == 0.0
    assert not pacer.over_budget


def test_dual_rises_under_sustained_overspend_and_is_capped_at_5() -> None:
    pacer = _pacer(budget=1.0)
    duals = []
    for _ in range(200):
        pacer.charge(3.0)
        duals.append(pacer.dual)
    assert all(b >= a for a, b in zip(duals, duals[1:], strict=False))
    assert duals[0] > 0 and duals[10] > duals[0]
    assert pacer.over_budget
    assert duals[-1] == 5.0  # reached and clipped (EMA -> 3, so steps of ~0.1)
    assert max(duals) == 5.0

    # A huge single overspend cannot push past the cap either.
    big = _pacer(budget=1.0)
    for _ in range(3):
        big.charge(1e6)
    assert big.dual == 5.0


def test_dual_returns_to_zero_under_sustained_underspend() -> None:
    pacer = _pacer(budget=1.0)
    for _ in range(300):
        pacer.charge(3.0)
    assert pacer.dual == 5.0
    duals = []
    for _ in range(400):
        pacer.charge(0.0)
        duals.append(pacer.dual)
    assert duals[-1] == 0.0
    first_zero = duals.index(0.0)
    assert all(d == 0.0 for d in duals[first_zero:])
    # Once the EMA is below budget the dual falls monotonically.
    assert pacer.state.cost_ema < 1.0
    assert not pacer.over_budget


def test_charge_rejects_bad_costs_with_nothing_changed() -> None:
    pacer = _pacer(budget=1.0)
    pacer.charge(2.0)
    before = PacerState(**vars(pacer.state))
    for bad in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="cost_usd"):
            pacer.charge(bad)
        assert vars(pacer.state) == vars(before)


def test_set_budget_validates_and_changes_the_target() -> None:
    pacer = _pacer(budget=1.0)
    pacer.set_budget(2.0)
    assert pacer.budget == 2.0
    pacer.charge(2.0)  # cbar = 0.95*1 + 0.05*2 = 1.05 < 2: dual stays 0
    assert pacer.dual == 0.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="budget_usd"):
            pacer.set_budget(bad)
    assert pacer.budget == 2.0


def test_soft_weight_per_mode() -> None:
    assert _pacer(mode=PacerMode.ADAPTIVE, dual=0.7).soft_weight() == 0.7
    assert _pacer(mode=PacerMode.SOFT, dual=0.7).soft_weight() == 0.7
    assert _pacer(mode=PacerMode.HARD, dual=0.7).soft_weight() == 0.0
    assert _pacer(mode=PacerMode.ADAPTIVE).soft_weight() == 0.0


@pytest.mark.parametrize(
    ("dual", "expected"),
    [
        (0.0, [True, True, True, True]),  # no ceiling while lambda == 0
        (0.5, [True, True, True, False]),  # 5.625e-3 / 1.5 = 3.75e-3
        (1.0, [True, True, True, False]),  # 2.8125e-3
        (3.0, [True, True, True, False]),  # 1.40625e-3: flash (1.4e-3) just fits ...
        (3.1, [True, True, False, False]),  # ... and is out at 1.372e-3
        (5.0, [True, False, False, False]),  # 9.375e-4
    ],
)
def test_hard_ceiling(dual: float, expected: list[bool]) -> None:
    for mode in (PacerMode.HARD, PacerMode.ADAPTIVE):
        cap = _pacer(mode=mode, dual=dual).ceiling(float(PRICES.max()))
        mask = ALL if cap is None else PRICES <= cap
        assert mask.tolist() == expected, (mode, dual)


def test_hard_ceiling_is_off_in_soft_mode() -> None:
    assert _pacer(mode=PacerMode.SOFT, dual=5.0).ceiling(float(PRICES.max())) is None


def test_hard_ceiling_divides_the_dearest_price_it_is_given() -> None:
    """The router passes the dearest active arm's cost: with pro removed, flash's."""
    active = np.array([True, True, True, False])
    # Ceiling = 1.4e-3 / 2 = 7e-4: only llama stays.
    cap = _pacer(mode=PacerMode.HARD, dual=1.0).ceiling(float(PRICES[active].max()))
    assert (PRICES[:3] <= cap).tolist() == [True, False, False]


def test_ceiling_threshold() -> None:
    """ceiling(dearest) = dearest / (1 + lambda); None where no ceiling applies."""
    assert _pacer(mode=PacerMode.SOFT, dual=2.0).ceiling(1.0) is None
    assert _pacer(mode=PacerMode.HARD, dual=0.0).ceiling(1.0) is None
    for mode in (PacerMode.HARD, PacerMode.ADAPTIVE):
        pacer = _pacer(mode=mode, dual=3.0)
        assert pacer.ceiling(float(PRICES.max())) == PRICES.max() / 4.0


def test_replacing_the_config_updates_what_charge_reads() -> None:
    pacer = _pacer(budget=1.0, mode=PacerMode.HARD, dual=0.5)
    pacer.config = PacerConfig(budget_usd=4.0, mode=PacerMode.SOFT, step=0.1)
    assert pacer.budget == 4.0 and pacer.soft_weight() == 0.5 and pacer.ceiling(1.0) is None
    pacer.charge(8.0)  # cbar = 0.95*1 + 0.05*8 = 1.35; dual += 0.1 * (1.35/4 - 1)
    assert pacer.state.cost_ema == pytest.approx(1.35)
    assert pacer.dual == pytest.approx(0.5 + 0.1 * (1.35 / 4.0 - 1.0))


# ---- the running balance ----------------------------------------------------------------------


def test_the_balance_remembers_budget_minus_cost_and_bounds_the_next_pick() -> None:
    # memory 4: each charge keeps 3/4 of the balance; the limit is budget + 3/4 balance + the
    # overdraft (slack x budget x (1 + 3/4 of the remembered charges)).
    cfg = PacerConfig(budget_usd=1.0, bank_memory=4, bank_slack=0.1, bank_debt_spread=0)
    pacer = BudgetPacer(cfg)
    assert pacer.spend_limit() == pytest.approx(1.0 + 0.1)  # nothing saved yet
    pacer.charge(0.5)
    assert (pacer.state.bank, pacer.state.bank_n) == (0.5, 1.0)
    pacer.charge(2.0)
    assert pacer.state.bank == pytest.approx(0.75 * 0.5 - 1.0)
    assert pacer.state.bank_n == pytest.approx(1.75)
    assert pacer.spend_limit() == pytest.approx(1.0 + 0.75 * -0.625 + 0.1 * (1.0 + 0.75 * 1.75))
    spread = BudgetPacer(cfg.model_copy(update={"bank_debt_spread": 5}), pacer.state)
    # a debt lowers the limit by a fifth of itself: paid back over about five requests
    assert spread.spend_limit() == pytest.approx(
        1.0 + 0.75 * -0.625 / 5 + 0.1 * (1.0 + 0.75 * 1.75)
    )
    pacer.set_budget(1.0)  # the same budget: the balance stands
    assert pacer.state.bank == pytest.approx(-0.625)
    pacer.set_budget(2.0)  # a new budget: savings (or debts) at the old one do not carry over
    assert (pacer.state.bank, pacer.state.bank_n) == (0.0, 0.0)
    assert BudgetPacer(PacerConfig(budget_usd=1.0, bank_memory=0)).spend_limit() is None


def test_one_pick_may_spend_only_its_share_of_the_savings() -> None:
    cfg = PacerConfig(budget_usd=1.0, bank_memory=4, bank_slack=0.0, bank_pick_share=0.5)
    pacer = BudgetPacer(cfg)
    pacer.charge(0.0)  # saved a whole budget
    assert pacer.state.bank == 1.0
    # the limit is budget + half of the (discounted) savings, not all of them
    assert pacer.spend_limit() == pytest.approx(1.0 + 0.5 * 0.75)
    pacer.charge(3.0)  # a debt is not halved: it lowers the limit by debt / spread
    debt = 0.75 * 1.0 - 2.0
    assert pacer.spend_limit() == pytest.approx(1.0 + 0.75 * debt / cfg.bank_debt_spread)
