"""Warm-start priors: full-information sufficient statistics from a reward file.

Every arm is updated with every prompt's recorded reward, scaled by a plasticity p, and
loaded mean-preservingly so that the prior's estimate theta_off is kept exactly while its
weight equals n_eff observations. Given the recorded costs too, each arm also carries its mean
realised cost per request, which seeds the router's usage estimate (see Router.load_priors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.persistence import write_atomic

PRIORS_FORMAT = "paretoserve.priors/1"


class ArmPrior(BaseModel):
    model_config = ConfigDict(frozen=True)

    A: list[list[float]]
    b: list[float]
    # Mean realised cost of a request in the reward file, US$ (None: not recorded).
    mean_cost_usd: float | None = Field(None, gt=0.0, allow_inf_nan=False)


class Priors(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str = PRIORS_FORMAT
    dim: int
    plasticity: float = Field(0.1, gt=0.0)
    n_rows: int
    projection_fingerprint: str | None = None
    source: str = ""
    arms: dict[str, ArmPrior]

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self.model_dump_json().encode())

    @classmethod
    def load(cls, path: Path) -> Priors:
        data = json.loads(Path(path).read_text())
        if data.get("format") != PRIORS_FORMAT:
            raise ValueError(f"{path}: not a priors file of format {PRIORS_FORMAT}")
        return cls.model_validate(data)


def build_priors(
    contexts: np.ndarray,
    rewards: np.ndarray,
    models: list[str] | tuple[str, ...],
    plasticity: float = 0.1,
    projection_fingerprint: str | None = None,
    source: str = "",
    costs: np.ndarray | None = None,
) -> Priors:
    """A_off = p*(I + sum x x^T) (shared by all arms), b_off,a = p * sum r_a x; with `costs`
    (n, K) in US$, each arm's mean realised cost."""
    n, d = contexts.shape
    if rewards.shape != (n, len(models)):
        raise ValueError(f"rewards shape {rewards.shape} does not match ({n}, {len(models)})")
    if costs is not None and costs.shape != rewards.shape:
        raise ValueError(f"costs shape {costs.shape} does not match rewards {rewards.shape}")
    A_off = plasticity * (np.eye(d) + contexts.T @ contexts)
    b_off = plasticity * (contexts.T @ rewards)  # (d, K)
    mean_cost = [None] * len(models) if costs is None else [float(c) for c in costs.mean(axis=0)]
    arms = {
        m: ArmPrior(A=A_off.tolist(), b=b_off[:, k].tolist(), mean_cost_usd=mean_cost[k] or None)
        for k, m in enumerate(models)
    }
    return Priors(
        dim=d,
        plasticity=plasticity,
        n_rows=n,
        arms=arms,
        projection_fingerprint=projection_fingerprint,
        source=source,
    )


def mean_preserving_load(
    prior: ArmPrior, ridge: float, n_eff: float = 1163.9
) -> tuple[np.ndarray, np.ndarray]:
    """s = n_eff / A_off[bias,bias]; A = s*A_off + l0*I; b = s*b_off + l0*theta_off."""
    A_off, b_off = np.asarray(prior.A), np.asarray(prior.b)
    theta_off = np.linalg.solve(A_off, b_off)
    s = n_eff / A_off[-1, -1]  # the bias term is the last feature
    return s * A_off + ridge * np.eye(len(b_off)), s * b_off + ridge * theta_off
