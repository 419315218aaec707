"""Figures of a replay: per-phase reward/cost/compliance/mix, baselines, adaptation steps."""

from __future__ import annotations

from collections import Counter

import numpy as np

WINDOW = 100  # trailing window of the adaptation figures, in requests


def phase_figures(
    models: list[str], rewards: list[float], costs: list[float], budget: float
) -> dict:
    n = len(models)
    mean_cost = float(np.mean(costs)) if n else 0.0
    return {
        "steps": n,
        "mean_reward": float(np.mean(rewards)) if n else 0.0,
        "mean_cost": mean_cost,
        "compliance": mean_cost / budget,
        "mix": {m: c / n for m, c in sorted(Counter(models).items())} if n else {},
    }


def trailing_mean(hits: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of the last `window` values (fewer at the very start), per step (of 0/1: a share)."""
    c = np.cumsum(np.concatenate([[0], hits.astype(float)]))
    idx = np.arange(1, len(hits) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / np.minimum(idx, window)


def first_step(condition: np.ndarray, start: int) -> int | None:
    """Steps after `start` until `condition` first holds (1 = the first step of the phase)."""
    hits = np.flatnonzero(condition[start:])
    return int(hits[0]) + 1 if len(hits) else None


def reroute_steps(models: list[str], degraded: str, p2_start: int, p2_end: int) -> int | None:
    """P2 steps until the degraded model's trailing-100 share first falls to half its P1 share."""
    hits = np.array([m == degraded for m in models])
    p1_share = hits[:p2_start].mean() if p2_start else 0.0
    if p1_share == 0:
        return 0
    share = trailing_mean(hits)[:p2_end]
    return first_step(share <= p1_share / 2, p2_start)


def adoption_steps(
    models: list[str], forced: list[bool], newcomer: str, p2_start: int, threshold: float = 0.10
) -> int | None:
    """Steps after onboarding until the newcomer's trailing-100 share, forced pulls excluded,
    first reaches `threshold`."""
    hits = np.array([m == newcomer and not f for m, f in zip(models, forced, strict=True)])
    return first_step(trailing_mean(hits) >= threshold, p2_start)


def upper_hull_reward(points: dict[str, tuple[float, float]], cost: float) -> float:
    """Best reward of any context-free random mix of models with mean cost `cost`:
    the upper concave hull of the (cost, reward) points, evaluated at `cost`."""
    pts = sorted(points.values())
    if cost <= pts[0][0]:
        return max(r for c, r in pts if c <= pts[0][0] + 1e-15)
    best = -np.inf
    for c1, r1 in pts:
        for c2, r2 in pts:
            if c1 <= cost <= c2 and c2 > c1:
                best = max(best, r1 + (r2 - r1) * (cost - c1) / (c2 - c1))
            elif c1 <= cost:
                best = max(best, r1)
    return float(best)


def mean_over_seeds(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(got)) if got else None,
        "std": float(np.std(got)) if got else None,
        "reached": len(got),
        "of": len(values),
    }
