"""Prices and the normalised cost term c~ of the score."""

from __future__ import annotations

import math

import numpy as np

from core.method.config import CostScaleConfig


def blended_price_per_1k(input_per_m: float, output_per_m: float) -> float:
    """The paper's list price p_a: mean of input and output price, in $ per 1k tokens."""
    return (input_per_m + output_per_m) / 2.0 / 1000.0


def cost_term(price_per_1k: np.ndarray, scale: CostScaleConfig) -> np.ndarray:
    """c~_a = clip((ln p - ln lo) / (ln hi - ln lo), 0, 1)."""
    lo, hi = math.log(scale.price_lo), math.log(scale.price_hi)
    return np.clip((np.log(price_per_1k) - lo) / (hi - lo), 0.0, 1.0)


def realised_cost_usd(
    prompt_tokens: int, completion_tokens: int, input_per_m: float, output_per_m: float
) -> float:
    """Usage tokens times list prices, the cost charged to the pacer."""
    return (prompt_tokens * input_per_m + completion_tokens * output_per_m) / 1e6
