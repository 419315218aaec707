"""Feed-forward pacing: the resolver finds the dual that makes the greedy policy spend B."""

from __future__ import annotations

import numpy as np
import pytest

from core.method.spend_resolver import SpendResolver


def _resolver(rng: np.random.Generator, n: int = 200, d: int = 4) -> SpendResolver:
    r = SpendResolver(d, window=256)
    for _ in range(n):
        r.observe(np.append(rng.normal(size=d - 1), 1.0))
    return r


def test_no_context_or_no_arm_means_no_price() -> None:
    r = SpendResolver(4)
    assert r.solve(np.zeros((2, 4)), np.array([0.1, 2.0]), np.ones(2, bool)) == (0.0, 0.0, 0.0)


def test_an_affordable_greedy_policy_needs_no_price() -> None:
    r = _resolver(np.random.default_rng(0))
    theta = np.zeros((2, 4))
    theta[:, -1] = [0.5, 0.9]  # the better arm costs 0.8 budgets: affordable
    assert r.solve(theta, np.array([0.1, 0.8]), np.ones(2, bool)) == (0.0, 0.0, 0.0)


def test_the_bracket_and_mix_spend_exactly_the_target() -> None:
    rng = np.random.default_rng(1)
    r = _resolver(rng)
    theta = np.zeros((3, 4))
    theta[:, -1] = [0.6, 0.8, 0.85]
    theta[:, :3] = rng.normal(scale=0.1, size=(3, 3))
    cost = np.array([0.1, 2.0, 30.0])  # cost / budget
    nu_hi, nu_lo, share = r.solve(theta, cost, np.ones(3, bool), target_ratio=1.0)
    quality = r.buffer[: r.size] @ theta.T
    hi, lo = r.spend(quality, cost, np.array([nu_hi, nu_lo]))
    assert nu_lo < nu_hi and lo > 1.0 >= hi  # the two duals bracket the target
    assert share * lo + (1 - share) * hi == pytest.approx(1.0)
    # A lower target needs a higher price.
    assert r.solve(theta, cost, np.ones(3, bool), target_ratio=0.5)[0] > nu_hi


def test_ineligible_arms_are_left_out() -> None:
    r = _resolver(np.random.default_rng(2))
    theta = np.zeros((2, 4))
    theta[:, -1] = [0.5, 0.9]
    # Only the expensive arm is eligible: nothing can bring spend under B, the price maxes out.
    nu_hi, _, _ = r.solve(theta, np.array([0.1, 5.0]), np.array([False, True]))
    assert nu_hi == r.nu_max
