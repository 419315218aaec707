"""Detecting a drop in an arm's quality, and its recovery.

Geometric forgetting adapts every arm at one slow rate (gamma 0.997 is a memory of ~330
requests shared by all arms): a model whose answers get worse keeps its old estimate, and its
traffic, for hundreds of requests. Per arm, S <- max(0, S + clip(predicted - reward) - drift);
when S passes the threshold the arm's evidence is cut to a small share (LinUCB.shrink), so its
estimate follows the new rewards within a few pulls, and S starts again. Clipping keeps a single
bad answer (a reward of 0 where 0.9 was expected) from looking like a drop.

Before the cut, the arm's statistics go on a shelf with the size of the drop (the mean clipped
residual since S last left 0). A cut arm relearns only from the traffic its low estimate still
wins, so a model that comes back would win back little of its old share; instead, each reward of
a shelved arm feeds a second CUSUM, of the log-likelihood ratio "the shelf predicts these rewards"
against "they sit one drop-size below it": R <- max(0, R + mu (mu/2 - e)), e = clip(shelf's
prediction - reward). Past its threshold the shelf's statistics come back (forgetting then
decays them by the time they were away). A drop that was noise is undone the same way. (A
two-sided CUSUM on the relearning arm's own residuals, the first try, fired on its own estimate's
swings: docs/results.md.)
"""

from __future__ import annotations

import numpy as np

from core.method.config import BanditConfig

# Columns of the per-arm shelf table.
_HELD, _RIDGE, _UPDATED, _LEVEL, _EVIDENCE = range(5)


class Shelf:
    """An arm's statistics from before a drop was signalled, as LinUCB.arm_state gave them."""

    __slots__ = ("Ab", "ridge_floor", "last_update")

    def __init__(self, Ab: np.ndarray, ridge_floor: float, last_update: int) -> None:
        self.Ab, self.ridge_floor, self.last_update = Ab, ridge_floor, last_update


class ShiftDetector:
    def __init__(self, config: BanditConfig) -> None:
        self.threshold, self.drift = config.shift_threshold, config.shift_drift
        self.clip = config.shift_clip
        self.restore_threshold = config.shift_restore
        self.dim = config.dim
        self.cusum = np.zeros(0)
        self.signals = np.zeros(0, dtype=np.int64)
        self.restores = np.zeros(0, dtype=np.int64)
        # The clipped residuals since S last left 0: their mean is the drop's size at a signal.
        self.run = np.zeros((0, 2))
        self.shelf_Ab = np.zeros((0, self.dim, self.dim + 1))
        self.shelf_theta = np.zeros((0, self.dim))
        self.shelf = np.zeros((0, 5))

    @property
    def enabled(self) -> bool:
        return self.threshold > 0.0

    def _grow(self, slot: int) -> None:
        if slot >= len(self.cusum):
            extra = slot + 1 - len(self.cusum)
            d = self.dim
            self.cusum = np.append(self.cusum, np.zeros(extra))
            self.signals = np.append(self.signals, np.zeros(extra, dtype=np.int64))
            self.restores = np.append(self.restores, np.zeros(extra, dtype=np.int64))
            self.run = np.concatenate([self.run, np.zeros((extra, 2))])
            self.shelf_Ab = np.concatenate([self.shelf_Ab, np.zeros((extra, d, d + 1))])
            self.shelf_theta = np.concatenate([self.shelf_theta, np.zeros((extra, d))])
            self.shelf = np.concatenate([self.shelf, np.zeros((extra, 5))])

    def _clipped(self, residual: float) -> float:
        c = self.clip
        return -c if residual < -c else c if residual > c else residual

    def observe(self, slot: int, residual: float) -> bool:
        """One update's residual (predicted - reward); True when it signals a drop."""
        self._grow(slot)
        r = self._clipped(residual)
        s = self.cusum.item(slot) + r - self.drift
        if s <= self.threshold:
            if s > 0.0:
                self.cusum[slot] = s
                self.run[slot] += (r, 1.0)
            else:
                self.cusum[slot] = 0.0
                self.run[slot] = 0.0
            return False
        total, n = self.run[slot]
        self.cusum[slot] = 0.0
        self.run[slot] = 0.0
        self.signals[slot] += 1
        if not self.shelved(slot):  # a second drop keeps the older, good state
            self.shelf[slot, _LEVEL] = (total + r) / (n + 1.0)
        return True

    def shelved(self, slot: int) -> bool:
        return slot < len(self.shelf) and self.shelf[slot, _HELD] > 0.0

    def shelve(self, slot: int, shelf: Shelf) -> None:
        """Keep the arm's statistics from before the drop just signalled (if none are kept)."""
        if self.restore_threshold <= 0.0 or self.shelved(slot):
            return
        d = self.dim
        self.shelf_Ab[slot] = shelf.Ab
        self.shelf_theta[slot] = np.linalg.solve(shelf.Ab[:, :d], shelf.Ab[:, d])
        row = self.shelf[slot]
        row[_HELD], row[_RIDGE], row[_UPDATED] = 1.0, shelf.ridge_floor, shelf.last_update
        row[_EVIDENCE] = 0.0

    def recovered(self, slot: int, x: np.ndarray, reward: float) -> Shelf | None:
        """One reward of the arm: its shelf, taken off, once the rewards fit it again."""
        if not self.shelved(slot):
            return None
        row = self.shelf[slot]
        mu = row.item(_LEVEL)
        e = self._clipped(float(self.shelf_theta[slot].dot(x)) - reward)
        evidence = row.item(_EVIDENCE) + mu * (0.5 * mu - e)
        if evidence <= self.restore_threshold:
            row[_EVIDENCE] = evidence if evidence > 0.0 else 0.0
            return None
        row[_HELD] = 0.0
        self.restores[slot] += 1
        self.cusum[slot] = 0.0
        self.run[slot] = 0.0
        return Shelf(self.shelf_Ab[slot].copy(), row.item(_RIDGE), int(row.item(_UPDATED)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "shift_cusum": self.cusum,
            "shift_signals": self.signals,
            "shift_restores": self.restores,
            "shift_run": self.run,
            "shift_shelf_Ab": self.shelf_Ab,
            "shift_shelf_theta": self.shelf_theta,
            "shift_shelf": self.shelf,
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """A snapshot's detector state (absent in snapshots made before it: zeros)."""
        if "shift_cusum" in arrays:
            self.cusum = np.array(arrays["shift_cusum"], dtype=float)
            self.signals = np.array(arrays["shift_signals"], dtype=np.int64)
            k = len(self.cusum)
            self.restores = np.zeros(k, dtype=np.int64)
            self.run = np.zeros((k, 2))
            self.shelf_Ab = np.zeros((k, self.dim, self.dim + 1))
            self.shelf_theta = np.zeros((k, self.dim))
            self.shelf = np.zeros((k, 5))
        if "shift_shelf" in arrays:
            self.restores = np.array(arrays["shift_restores"], dtype=np.int64)
            self.run = np.array(arrays["shift_run"], dtype=float)
            self.shelf_Ab = np.array(arrays["shift_shelf_Ab"], dtype=float)
            self.shelf_theta = np.array(arrays["shift_shelf_theta"], dtype=float)
            self.shelf = np.array(arrays["shift_shelf"], dtype=float)
