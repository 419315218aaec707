"""Disjoint LinUCB with lazy geometric forgetting, staleness-inflated bonus and ridge re-add."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.method.bandit import LinUCB
from core.method.config import BanditConfig, PacerConfig, RouterConfig
from core.method.registry import ModelSpec
from core.method.router import Router

GAMMA = 0.997
ALPHA = 0.01


def _ctx(rng: np.random.Generator, d: int = 26, scale: float = 1.0) -> np.ndarray:
    return np.append(scale * rng.normal(size=d - 1), 1.0)


class _RefArm:
    """A straightforward, independent reference: A, b kept explicitly, inverted with numpy."""

    def __init__(self, d: int, t0: int, l0: float = 1.0, gamma: float = GAMMA) -> None:
        self.A = l0 * np.eye(d)
        self.b = np.zeros(d)
        self.floor = l0
        self.l0 = l0
        self.gamma = gamma
        self.last_update = t0
        self.last_pull = t0
        self.readds = 0

    def update(self, t: int, x: np.ndarray, r: float) -> None:
        decay = self.gamma ** min(t - self.last_update, 1000)
        self.A = decay * self.A
        self.b = decay * self.b
        self.floor *= decay
        if self.floor < 0.1 * self.l0:
            self.A = self.A + (self.l0 - self.floor) * np.eye(len(self.b))
            self.floor = self.l0
            self.readds += 1
        self.A = self.A + np.outer(x, x)
        self.b = self.b + r * x
        self.last_update = t

    @property
    def theta(self) -> np.ndarray:
        return np.linalg.solve(self.A, self.b)

    def bonus(self, t: int, x: np.ndarray, alpha: float = ALPHA, floor: float = 1 / 200) -> float:
        dt = t - max(self.last_update, self.last_pull)
        shrink = max(self.gamma ** min(dt, 1000), floor)
        return alpha * math.sqrt(x @ np.linalg.solve(self.A, x) / shrink)


def test_config_defaults_are_the_papers() -> None:
    c = BanditConfig()
    assert (c.dim, c.alpha, c.ridge, c.gamma) == (26, 0.01, 1.0, 0.997)
    assert (c.max_decay_steps, c.min_staleness_divisor, c.ridge_floor_fraction) == (
        1000,
        1 / 200,
        0.1,
    )
    assert c.cost_weight == 0.0


def test_new_arm_starts_at_ridge_identity_and_zero() -> None:
    bandit = LinUCB(BanditConfig(ridge=2.0), n_arms=2)
    bandit.t = 7
    slot = bandit.add_arm()
    assert slot == 2 and bandit.n_arms == 3
    np.testing.assert_array_equal(bandit.A[slot], 2.0 * np.eye(26))
    np.testing.assert_array_equal(bandit.A_inv[slot], 0.5 * np.eye(26))
    np.testing.assert_array_equal(bandit.b[slot], np.zeros(26))
    np.testing.assert_array_equal(bandit.theta[slot], np.zeros(26))
    assert bandit.last_update[slot] == 7 and bandit.last_pull[slot] == 7
    assert bandit.pulls[slot] == 0 and bandit.updates[slot] == 0


def test_inverse_stays_exact_over_10000_updates_with_forgetting() -> None:
    """A^-1 within 1e-8 (max abs) of inv(A) at every one of 10,000 updates, 3 arms, random gaps.

    The gaps include long ones (800, 1500: the decay cap of 1000 steps) that push the decayed
    ridge below 0.1*l0 and trigger the ridge re-add; A and b are checked against a reference.
    """
    rng = np.random.default_rng(20240601)
    bandit = LinUCB(BanditConfig(), n_arms=3)
    refs = [_RefArm(26, 0) for _ in range(3)]
    gaps = np.array([0, 1, 1, 2, 3, 10, 50, 800, 1500])
    probs = np.array([0.1, 0.35, 0.2, 0.1, 0.1, 0.07, 0.05, 0.02, 0.01])
    worst_inv = worst_A = worst_theta = 0.0
    for _ in range(10_000):
        bandit.t += int(rng.choice(gaps, p=probs))
        slot = int(rng.integers(3))
        x = _ctx(rng, scale=float(rng.choice([0.3, 1.0, 3.0])))
        r = float(rng.random())
        bandit.update(slot, x, r)
        refs[slot].update(bandit.t, x, r)
        assert bandit.ridge_floor[slot] == pytest.approx(refs[slot].floor, rel=1e-12)
        worst_inv = max(worst_inv, np.abs(bandit.A_inv[slot] - np.linalg.inv(bandit.A[slot])).max())
        worst_A = max(worst_A, np.abs(bandit.A[slot] - refs[slot].A).max())
        worst_theta = max(worst_theta, np.abs(bandit.theta[slot] - refs[slot].theta).max())
    assert worst_inv < 1e-8
    assert worst_A < 1e-8
    assert worst_theta < 1e-8
    for slot in range(3):
        np.testing.assert_allclose(bandit.b[slot], refs[slot].b, atol=1e-9)
    assert sum(ref.readds for ref in refs) >= 50  # the ridge re-add really was exercised
    assert int(bandit.updates.sum()) == 10_000


def test_sherman_morrison_alone_keeps_inverse_exact_without_refresh() -> None:
    """With the periodic exact refresh switched off and no decay, rank-1 updates stay accurate."""
    rng = np.random.default_rng(3)
    bandit = LinUCB(BanditConfig(refresh_every=10**9, gamma=1.0), n_arms=1)
    for _ in range(3000):
        bandit.update(0, _ctx(rng), float(rng.random()))
    assert bandit.since_refresh[0] == 3000  # never fell back to a full inverse
    assert np.abs(bandit.A_inv[0] - np.linalg.inv(bandit.A[0])).max() < 1e-10


def test_forgetting_and_bonus_match_hand_computation_d2() -> None:
    """d = 2, e1/e2 contexts: every quantity in closed form."""
    g = GAMMA
    bandit = LinUCB(BanditConfig(dim=2), n_arms=1)
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])

    # t=0: x=e1, r=1 -> A = diag(2, 1), b = (1, 0), theta = (0.5, 0).
    bandit.update(0, e1, 1.0)
    np.testing.assert_allclose(bandit.A[0], np.diag([2.0, 1.0]), atol=1e-15)
    np.testing.assert_allclose(bandit.theta[0], [0.5, 0.0], atol=1e-15)

    # t=10: decay D = g^10 (floor D = 0.970 stays > 0.1), then x=e2, r=1.
    bandit.t = 10
    bandit.update(0, e2, 1.0)
    D = g**10
    np.testing.assert_allclose(bandit.A[0], np.diag([2 * D, D + 1]), atol=1e-14)
    np.testing.assert_allclose(bandit.b[0], [D, 1.0], atol=1e-14)
    np.testing.assert_allclose(bandit.theta[0], [0.5, 1 / (D + 1)], atol=1e-14)
    assert bandit.ridge_floor[0] == pytest.approx(D, rel=1e-14)

    # Bonus at t=110 for e2: dt = 100 since the last update; v = A^-1[1,1] / g^100.
    bandit.t = 110
    _, bonus = bandit.estimates(e2)
    assert bonus[0] == pytest.approx(ALPHA * math.sqrt(1 / (D + 1) / g**100), rel=1e-12)
    # A pull resets staleness (dt counts from max(last update, last pull)).
    bandit.mark_pull(0)
    _, bonus = bandit.estimates(e2)
    assert bonus[0] == pytest.approx(ALPHA * math.sqrt(1 / (D + 1)), rel=1e-12)
    assert bandit.pulls[0] == 1

    # t=2110: the decay exponent is capped at 1000: D2 = g^1000 (not g^2100).
    # Floor D*D2 < 0.1 -> add (1 - D*D2) I, then x=e1, r=0.
    bandit.t = 2110
    bandit.update(0, e1, 0.0)
    D2 = g**1000
    A_expected = np.diag([2 + D * D2, 1 + D2])
    b_expected = np.array([D * D2, D2])
    np.testing.assert_allclose(bandit.A[0], A_expected, atol=1e-13)
    np.testing.assert_allclose(bandit.b[0], b_expected, atol=1e-14)
    np.testing.assert_allclose(bandit.theta[0], [D * D2 / (2 + D * D2), D2 / (1 + D2)], atol=1e-14)
    np.testing.assert_allclose(bandit.A_inv[0], np.diag(1 / np.diag(A_expected)), atol=1e-14)
    assert bandit.ridge_floor[0] == 1.0
    assert bandit.updates[0] == 3

    # Staleness beyond the cap: g^min(5000, 1000) = 0.0496 > 1/200, so the floor is unused.
    bandit.t = 2110 + 5000
    quality, bonus = bandit.estimates(e2)
    assert quality[0] == pytest.approx(D2 / (1 + D2), rel=1e-12)
    assert bonus[0] == pytest.approx(ALPHA * math.sqrt(1 / (1 + D2) / D2), rel=1e-12)


def test_staleness_divisor_floor_of_one_over_200() -> None:
    # With gamma = 0.99, gamma^1000 = 4.3e-5 < 1/200, so the divisor is floored at 1/200.
    bandit = LinUCB(BanditConfig(dim=2, gamma=0.99), n_arms=1)
    x = np.array([0.0, 1.0])
    bandit.t = 300  # 0.99^300 = 0.049 > 0.005
    assert bandit.estimates(x)[1][0] == pytest.approx(ALPHA * math.sqrt(1 / 0.99**300), rel=1e-12)
    bandit.t = 600  # 0.99^600 = 0.0024 < 0.005
    assert bandit.estimates(x)[1][0] == pytest.approx(ALPHA * math.sqrt(200), rel=1e-12)


def test_forgetting_and_bonus_match_reference_through_the_router() -> None:
    """d = 26 through Router: t counts routed requests; rewards arrive late, with known gaps."""
    rng = np.random.default_rng(11)
    cfg = RouterConfig(pacer=PacerConfig(budget_usd=1.0), seed=1)
    specs = [
        ModelSpec(id="a", input_per_m=0.1, output_per_m=0.1),
        ModelSpec(id="b", input_per_m=0.5, output_per_m=1.5),
    ]
    router = Router(cfg, models=specs)
    refs = {"a": _RefArm(26, 0), "b": _RefArm(26, 0)}
    # (routes to do first, then rewards to deliver); the gaps include a 1200-request lull.
    schedule = [3, 1, 0, 7, 1200, 2, 40, 0, 950, 5]
    waiting: list[tuple[str, str, np.ndarray, float]] = []
    for n_routes in schedule:
        for _ in range(n_routes):
            x = _ctx(rng)
            model = "a" if rng.random() < 0.5 else "b"
            d = router.route(x, model=model)
            refs[model].last_pull = router.t
            waiting.append((d.request_id, model, x, float(rng.random())))
        # Deliver the oldest two rewards now, at the current t.
        for rid, model, x, r in waiting[:2]:
            router.feedback(rid, r)
            refs[model].update(router.t, x, r)
        waiting = waiting[2:]
    assert refs["a"].readds + refs["b"].readds >= 2
    x = _ctx(rng)
    explain = router.explain(x)
    for i, m in enumerate(router.arms.slot_models):
        np.testing.assert_allclose(router.bandit.A[i], refs[m].A, atol=1e-10)
        np.testing.assert_allclose(router.bandit.b[i], refs[m].b, atol=1e-10)
        np.testing.assert_allclose(router.bandit.theta[i], refs[m].theta, atol=1e-10)
        assert explain[m]["quality"] == pytest.approx(refs[m].theta @ x, abs=1e-10)
        assert explain[m]["bonus"] == pytest.approx(refs[m].bonus(router.t + 1, x), rel=1e-9)


def test_denominator_check_falls_back_to_a_full_inverse() -> None:
    rng = np.random.default_rng(5)
    bandit = LinUCB(BanditConfig(), n_arms=1)
    for _ in range(5):
        bandit.update(0, _ctx(rng), 0.5)
    # Corrupt A^-1 so that it is no longer positive definite: 1 + x^T A^-1 x < 0.
    bandit.A_inv[0] = -10.0 * np.eye(26)
    x = _ctx(rng)
    bandit.update(0, x, 1.0)
    np.testing.assert_allclose(bandit.A_inv[0], np.linalg.inv(bandit.A[0]), atol=1e-12)
    np.testing.assert_allclose(
        bandit.theta[0], np.linalg.solve(bandit.A[0], bandit.b[0]), atol=1e-10
    )
    assert bandit.since_refresh[0] == 0


def test_periodic_exact_refresh() -> None:
    rng = np.random.default_rng(6)
    bandit = LinUCB(BanditConfig(refresh_every=4, gamma=1.0), n_arms=1)
    counts = []
    for _ in range(9):
        bandit.update(0, _ctx(rng), 0.5)
        counts.append(int(bandit.since_refresh[0]))
    assert counts == [1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_no_forgetting_when_gamma_is_one() -> None:
    rng = np.random.default_rng(8)
    bandit = LinUCB(BanditConfig(gamma=1.0), n_arms=1)
    xs = [_ctx(rng) for _ in range(20)]
    for i, x in enumerate(xs):
        bandit.t = 500 * i
        bandit.update(0, x, 0.25)
    A = np.eye(26) + sum(np.outer(x, x) for x in xs)
    np.testing.assert_allclose(bandit.A[0], A, atol=1e-10)
    np.testing.assert_allclose(bandit.b[0], 0.25 * sum(xs), atol=1e-12)


def test_arms_are_disjoint() -> None:
    rng = np.random.default_rng(9)
    bandit = LinUCB(BanditConfig(), n_arms=3)
    bandit.update(1, _ctx(rng), 1.0)
    for slot in (0, 2):
        np.testing.assert_array_equal(bandit.A[slot], np.eye(26))
        np.testing.assert_array_equal(bandit.b[slot], np.zeros(26))
    assert bandit.updates.tolist() == [0, 1, 0]


def test_estimates_are_theta_x_and_alpha_sqrt_v() -> None:
    rng = np.random.default_rng(10)
    bandit = LinUCB(BanditConfig(), n_arms=2)
    for i in range(30):
        bandit.t = i
        bandit.update(i % 2, _ctx(rng), float(rng.random()))
    bandit.t = 40
    x = _ctx(rng)
    quality, bonus = bandit.estimates(x)
    for a in range(2):
        dt = 40 - max(bandit.last_update[a], bandit.last_pull[a])
        v = x @ np.linalg.solve(bandit.A[a], x) / max(GAMMA**dt, 1 / 200)
        assert quality[a] == pytest.approx(np.linalg.solve(bandit.A[a], bandit.b[a]) @ x, abs=1e-12)
        assert bonus[a] == pytest.approx(ALPHA * math.sqrt(v), rel=1e-10)


def test_A_and_b_are_views_of_one_block_that_round_trips() -> None:
    rng = np.random.default_rng(11)
    bandit = LinUCB(BanditConfig(refresh_every=7), n_arms=3)
    for i in range(60):
        bandit.t = 3 * i
        bandit.update(i % 3, _ctx(rng), float(rng.random()))
    assert np.shares_memory(bandit.A, bandit.Ab) and np.shares_memory(bandit.b, bandit.Ab)
    np.testing.assert_array_equal(bandit.Ab[:, :, :26], bandit.A)
    np.testing.assert_array_equal(bandit.Ab[:, :, 26], bandit.b)
    copy = LinUCB(BanditConfig(refresh_every=7))
    copy.load_arrays({k: v.copy() for k, v in bandit.arrays().items()}, bandit.t)
    x, r = _ctx(rng), 0.3
    for b in (bandit, copy):  # the same next step from the original and from the round trip
        b.t += 5
        b.update(1, x, r)
    for name, arr in bandit.arrays().items():
        np.testing.assert_array_equal(copy.arrays()[name], arr, err_msg=name)
    assert copy.add_arm() == 3 and copy.A.shape == (4, 26, 26) and copy.b.shape == (4, 26)


def test_float32_and_float64_contexts_take_the_same_steps_as_np_outer() -> None:
    """update() has a scratch-buffer path for float64 contexts and a general one for others;
    both equal the textbook A += x x^T, b += r x, A^-1 by Sherman-Morrison."""
    rng = np.random.default_rng(12)
    # float32: np.outer rounds x x^T to float32 in A, which the float64 Sherman-Morrison step
    # does not see, hence the looser tolerance on A^-1.
    for dtype, atol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        bandit = LinUCB(BanditConfig(gamma=1.0), n_arms=1)
        A, b = np.eye(26), np.zeros(26)
        for _ in range(5):
            x = _ctx(rng).astype(dtype)
            r = float(rng.random())
            bandit.update(0, x, r)
            A = A + np.outer(x, x)
            b = b + r * x
        np.testing.assert_array_equal(bandit.A[0], A)
        np.testing.assert_array_equal(bandit.b[0], b)
        np.testing.assert_allclose(bandit.A_inv[0], np.linalg.inv(A), atol=atol)
        np.testing.assert_allclose(bandit.theta[0], np.linalg.solve(A, b), atol=100 * atol)
