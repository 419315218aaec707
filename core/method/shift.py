"""Detecting a drop in an arm's quality: a one-sided CUSUM of its prediction residuals.

Geometric forgetting adapts every arm at one slow rate (gamma 0.997 is a memory of ~330
requests shared by all arms): a model whose answers get worse keeps its old estimate, and its
traffic, for hundreds of requests. Per arm, S <- max(0, S + clip(predicted - reward) - drift);
when S passes the threshold the arm's evidence is cut to a small share (LinUCB.shrink), so its
estimate follows the new rewards within a few pulls, and S starts again. Clipping keeps a single
bad answer (a reward of 0 where 0.9 was expected) from looking like a drop. (A two-sided CUSUM,
to bring a recovered model back sooner, did worse in the replay: docs/results.md.)
"""

from __future__ import annotations

import numpy as np

from core.method.config import BanditConfig


class ShiftDetector:
    def __init__(self, config: BanditConfig) -> None:
        self.threshold, self.drift = config.shift_threshold, config.shift_drift
        self.clip = config.shift_clip
        self.cusum = np.zeros(0)
        self.signals = np.zeros(0, dtype=np.int64)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0.0

    def _grow(self, slot: int) -> None:
        if slot >= len(self.cusum):
            extra = slot + 1 - len(self.cusum)
            self.cusum = np.append(self.cusum, np.zeros(extra))
            self.signals = np.append(self.signals, np.zeros(extra, dtype=np.int64))

    def observe(self, slot: int, residual: float) -> bool:
        """One update's residual (predicted - reward); True when it signals a drop."""
        self._grow(slot)
        c = self.clip
        r = -c if residual < -c else c if residual > c else residual
        s = self.cusum.item(slot) + r - self.drift
        if s <= self.threshold:
            self.cusum[slot] = s if s > 0.0 else 0.0
            return False
        self.cusum[slot] = 0.0
        self.signals[slot] += 1
        return True

    def arrays(self) -> dict[str, np.ndarray]:
        return {"shift_cusum": self.cusum, "shift_signals": self.signals}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """A snapshot's detector state (absent in snapshots made before it: zeros)."""
        if "shift_cusum" in arrays:
            self.cusum = np.array(arrays["shift_cusum"], dtype=float)
            self.signals = np.array(arrays["shift_signals"], dtype=np.int64)
