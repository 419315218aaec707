"""Warm-start priors: full-information sufficient statistics from a reward file.

Every arm is updated with every prompt's recorded reward, scaled by a plasticity p, and
loaded mean-preservingly so that the prior's estimate theta_off is kept exactly while its
weight equals n_eff observations. Given the recorded costs too, each arm also carries its mean
realised cost per request, which seeds the router's usage estimate (see Router.load_priors).

A priors file records how it was made (`command`, `source`, `n_rows`), the projection its
contexts went through (`projection_fingerprint`) and a fingerprint of its own numbers
(`fingerprint`: an edited or truncated file is refused). The embedded default ships one,
`core/artifacts/priors.json` (numbers only, no prompt), made by DEFAULT_PRIORS_COMMAND;
`fits` says whether a file suits a service (core/service/warm_start.py decides what a misfit
costs: an error for an operator's file, a warning and a cold start for the default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.persistence import write_atomic

PRIORS_FORMAT = "paretoserve.priors/1"
DEFAULT_PRIORS_PATH = Path(__file__).parent.parent / "artifacts" / "priors.json"
# Run from the repository root; the file records the command that made it (`command`).
DEFAULT_PRIORS_COMMAND = (
    "paretoserve priors build --data ../shared/data/val.jsonl --out core/artifacts/priors.json"
)


class StalePriors(ValueError):
    """Priors that do not fit the service they would warm-start; the message says why and
    which command re-makes them."""


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
    # How the file was made, to re-make it ("" in files written before it was recorded).
    command: str = ""
    # Short sha256 of the numbers (models, A, b, mean costs); None in older files.
    fingerprint: str | None = None
    arms: dict[str, ArmPrior]

    @model_validator(mode="after")
    def _numbers_match_fingerprint(self) -> Priors:
        for model_id, arm in self.arms.items():
            if np.shape(arm.A) != (self.dim, self.dim) or len(arm.b) != self.dim:
                raise ValueError(f"priors of {model_id!r}: A must be {self.dim}x{self.dim}")
        if self.fingerprint is not None and self.fingerprint != self.numbers_fingerprint():
            raise ValueError(
                f"priors fingerprint mismatch: file says {self.fingerprint}, numbers give "
                f"{self.numbers_fingerprint()} (edited or corrupted?)"
            )
        return self

    @property
    def models(self) -> list[str]:
        return list(self.arms)

    def numbers_fingerprint(self) -> str:
        """Short sha256 over each arm's id, A, b and mean cost, in file order."""
        h = hashlib.sha256(np.asarray([self.dim, len(self.arms)], dtype="<i8").tobytes())
        for model_id, arm in self.arms.items():
            name = model_id.encode()
            h.update(len(name).to_bytes(8, "little") + name)
            cost = np.nan if arm.mean_cost_usd is None else arm.mean_cost_usd
            for a in (arm.A, arm.b, [cost]):
                h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def remake_hint(self) -> str:
        return f"re-make them with: {self.command}" if self.command else "rebuild them"

    def fits(
        self,
        dim: int,
        projection_fingerprint: str | None,
        models: Sequence[str],
        *,
        same_models: bool,
    ) -> None:
        """Raise StalePriors unless these priors suit a router of `dim` whose contexts go
        through the projection `projection_fingerprint`, with the table `models`: exactly
        those models (`same_models`), else at least one of them."""
        why = None
        if self.dim != dim:
            why = f"have dimension {self.dim}, the router {dim}"
        elif (
            projection_fingerprint
            and self.projection_fingerprint
            and self.projection_fingerprint != projection_fingerprint
        ):
            why = (
                f"were built for the feature projection {self.projection_fingerprint}, "
                f"the service uses {projection_fingerprint}"
            )
        elif same_models and sorted(self.arms) != sorted(models):
            why = f"are for the models {sorted(self.arms)}, the router has {sorted(models)}"
        elif not same_models and not set(self.arms) & set(models):
            why = f"are for {sorted(self.arms)}, none of the router's models {sorted(models)}"
        if why is not None:
            source = self.source or "of unknown source"
            raise StalePriors(f"priors ({source}) {why}; {self.remake_hint()}")

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self.model_dump_json().encode())

    @classmethod
    def load(cls, path: Path) -> Priors:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != PRIORS_FORMAT:
                raise ValueError(f"not a priors file of format {PRIORS_FORMAT}")
            return cls.model_validate(data)
        except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError included
            raise ValueError(f"{path}: invalid priors file: {exc}") from exc


def build_priors(
    contexts: np.ndarray,
    rewards: np.ndarray,
    models: list[str] | tuple[str, ...],
    plasticity: float = 0.1,
    projection_fingerprint: str | None = None,
    source: str = "",
    costs: np.ndarray | None = None,
    command: str = "",
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
    unsigned = Priors(
        dim=d,
        plasticity=plasticity,
        n_rows=n,
        arms=arms,
        projection_fingerprint=projection_fingerprint,
        source=source,
        command=command,
    )
    return unsigned.model_copy(update={"fingerprint": unsigned.numbers_fingerprint()})


def mean_preserving_load(
    prior: ArmPrior, ridge: float, n_eff: float = 1163.9
) -> tuple[np.ndarray, np.ndarray]:
    """s = n_eff / A_off[bias,bias]; A = s*A_off + l0*I; b = s*b_off + l0*theta_off."""
    A_off, b_off = np.asarray(prior.A), np.asarray(prior.b)
    theta_off = np.linalg.solve(A_off, b_off)
    s = n_eff / A_off[-1, -1]  # the bias term is the last feature
    return s * A_off + ridge * np.eye(len(b_off)), s * b_off + ridge * theta_off
