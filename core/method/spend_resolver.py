"""Feed-forward pacing: the dual price that makes the greedy policy spend the budget, solved
over a window of recent contexts.

The integral pacer reacts to realised overspend after the fact, so it either oscillates (a
fast step against heavy-tailed costs) or lags (a slow step after a price change). Here the
dual nu is re-solved from the model itself: over the last W contexts, the policy
argmax_a q_a(x) - nu * c_a / B spends, in expectation, mean_x c[argmax]; spend is
non-increasing in nu, so the smallest nu with spend <= target is found on a log grid, then
refined. Costs are per-arm expected costs, so a re-price moves nu at the next solve.
"""

from __future__ import annotations

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
