"""Feed-forward pacing: the dual price at which the greedy policy spends the budget.

It is solved over a window of recent contexts. The integral pacer reacts to realised overspend
after the fact, so it either oscillates (a fast step against heavy-tailed costs) or lags (a slow
step after a price change). Here the dual nu is re-solved from the model itself: over the last W
contexts, the policy argmax_a q_a(x) - nu * c_a / B spends, in expectation, mean_x c[argmax];
spend is non-increasing in nu, so the smallest nu with spend <= target is found on a log grid,
then refined. Costs are per-arm expected costs, so a re-price moves nu at the next solve.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class SpendResolver:
    def __init__(
        self, dim: int, window: int = 256, nu_max: float = 5.0, grid: int = 48, nu_min: float = 1e-6
    ) -> None:
        self.buffer = np.zeros((window, dim))
        self._window = window
        self.size = 0
        self.head = 0
        self.nu_max = nu_max
        self._grid = np.concatenate([[0.0], np.geomspace(nu_min, nu_max, grid - 1)])

    def observe(self, x: np.ndarray) -> None:
        head = self.head
        self.buffer[head] = x
        head += 1
        self.head = 0 if head == self._window else head
        if self.size < self._window:
            self.size += 1

    @staticmethod
    def spend(quality: np.ndarray, cost_ratio: np.ndarray, nus: np.ndarray) -> np.ndarray:
        """Expected spend / B of the greedy policy over the window, for each nu in `nus`.
        A running max over arms on (W, G) planes: cheaper than argmax over a 3-d array."""
        best = quality[:, :1] - nus[None, :] * cost_ratio[0]
        cost = np.full_like(best, cost_ratio[0])
        for k in range(1, len(cost_ratio)):
            score = quality[:, k : k + 1] - nus[None, :] * cost_ratio[k]
            better = score > best
            np.copyto(best, score, where=better)
            cost[better] = cost_ratio[k]
        return cost.mean(axis=0)

    def solve(
        self,
        theta: np.ndarray,
        cost_ratio: np.ndarray,
        eligible: np.ndarray,
        target_ratio: float = 1.0,
    ) -> tuple[float, float, float]:
        """(nu_hi, nu_lo, share): nu_hi is the smallest dual in [0, nu_max] whose expected
        spend / B is <= target_ratio (nu_max if none); nu_lo, just below it, spends more.
        Greedy spend jumps as nu crosses a breakpoint, so using nu_lo on `share` of requests
        and nu_hi on the rest spends the target exactly, in expectation (the LP optimum mixes
        two policies the same way). theta: (K, d) reward weights; cost_ratio: (K,) cost / B."""
        if self.size == 0 or not eligible.any():
            return 0.0, 0.0, 0.0
        idx = np.flatnonzero(eligible)
        quality = self.buffer[: self.size] @ theta[idx].T  # (W, K')
        ratio = cost_ratio[idx]
        coarse = self.spend(quality, ratio, self._grid)
        ok = np.flatnonzero(coarse <= target_ratio)
        if not len(ok):
            return self.nu_max, self.nu_max, 0.0
        j = int(ok[0])
        if j == 0:
            return 0.0, 0.0, 0.0
        fine = np.linspace(self._grid[j - 1], self._grid[j], 13)
        spend = self.spend(quality, ratio, fine)
        k = int(np.flatnonzero(spend <= target_ratio)[0])  # >= 1: fine[0] overspends
        hi, lo = spend[k], spend[k - 1]
        share = float((target_ratio - hi) / (lo - hi)) if lo > hi else 0.0
        return float(fine[k]), float(fine[k - 1]), share


class FeedForwardDual:
    """The feed-forward dual in use and its schedule: record each routed context; every
    `every` routes (and at every route while the window fills, or after an arm or budget
    change) re-solve the dual so that the greedy policy over recent contexts spends the
    budget shrunk by the integral dual (which absorbs what the estimates miss). Each request
    then uses the lower dual of the solve for its owed share (error diffusion, deterministic),
    else the higher one."""

    def __init__(self, dim: int, window: int, every: int) -> None:
        self.resolver = SpendResolver(dim, window)
        self.nu = 0.0  # the dual of the latest route
        self._every = every
        self._mix = (0.0, 0.0, 0.0)  # (nu_hi, nu_lo, share of requests that use nu_lo)
        self._credit = 0.0  # error diffusion: the lower dual's owed share
        self._solve_in = 0  # routes until the next solve; 0 = at the next route

    def resolve_soon(self) -> None:
        """Costs, arms or the budget changed: re-solve at the next route."""
        self._solve_in = 0

    def step(
        self,
        x: np.ndarray,
        theta: np.ndarray,
        active: np.ndarray,
        cost_ratio: Callable[[], np.ndarray],
        dual: float,
    ) -> float:
        """Record the context x of a route and return the dual it uses. theta: the bandit's
        (K, d) weights; cost_ratio(): per-arm cost / budget, asked for only when solving;
        dual: the integral pacer's."""
        resolver = self.resolver
        resolver.observe(x)
        # While the window fills (after a start or restart), re-solve at every route, on the
        # safe side (the higher dual, no mixing): a dual solved on the first context or two
        # would otherwise hold for `every` routes, and under concurrency their charges arrive
        # too late for the integral dual to stop an early run of dear picks.
        filling = resolver.size <= self._every
        if self._solve_in > 0 and not filling:
            self._solve_in -= 1
        else:
            mix = resolver.solve(theta, cost_ratio(), active, 1.0 / (1.0 + dual))
            self._mix = (mix[0], mix[0], 0.0) if filling else mix
            self._solve_in = self._every - 1
        nu_hi, nu_lo, share = self._mix
        if share:
            self._credit += share
            if self._credit >= 1.0:
                self._credit -= 1.0
                self.nu = nu_lo
                return nu_lo
        self.nu = nu_hi
        return nu_hi

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, metadata) of a snapshot."""
        r = self.resolver
        meta = {
            "size": r.size,
            "head": r.head,
            "nu": self.nu,
            "solve_in": self._solve_in,
            "mix": list(self._mix),
            "credit": self._credit,
        }
        return {"resolver_buffer": r.buffer}, {"resolver": meta}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Replace the contents with a snapshot's (see to_state)."""
        m = meta["resolver"]
        self.resolver.buffer = arrays["resolver_buffer"].copy()
        self.resolver.size, self.resolver.head = m["size"], m["head"]
        self.nu, self._solve_in = m["nu"], m["solve_in"]
        self._mix, self._credit = tuple(m["mix"]), m["credit"]
