"""Recorded routing outcomes (reward files) and list prices; format: ../shared/data/README.md.

A reward file is JSON lines, one prompt each: `{"prompt", "source", "arms": {model: {"reward",
"cost", ...}}, ...}`. Every row is validated on load, so a replay never meets a NaN or a
missing arm halfway through.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)  # shared between subsets and callers: nobody edits it in place
    return a


@dataclass(frozen=True, eq=False)
class RewardData:
    """n prompts x K models; column j of `rewards`/`costs` belongs to `models[j]`."""

    prompts: tuple[str, ...]
    models: tuple[str, ...]
    rewards: np.ndarray  # (n, K) in [0, 1]
    costs: np.ndarray  # (n, K) realised US$, >= 0
    sources: tuple[str, ...]
    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewards", _readonly(self.rewards))
        object.__setattr__(self, "costs", _readonly(self.costs))
        shape = (len(self.prompts), len(self.models))
        if self.rewards.shape != shape or self.costs.shape != shape:
            raise ValueError(
                f"rewards {self.rewards.shape} and costs {self.costs.shape} must be {shape}"
            )
        if len(self.sources) != len(self.prompts):
            raise ValueError("sources must have one entry per prompt")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> RewardData:
        """Rows by index (or boolean mask), in the order given."""
        sel = np.asarray(indices)
        if sel.size == 0:
            sel = sel.astype(np.intp)  # np.asarray([]) is float, which numpy won't index with
        elif sel.dtype != bool and not np.issubdtype(sel.dtype, np.integer):
            raise TypeError(f"indices must be integers or a boolean mask, got {sel.dtype}")
        idx = np.arange(len(self))[sel]
        return RewardData(
            prompts=tuple(self.prompts[i] for i in idx),
            models=self.models,
            rewards=self.rewards[idx],
            costs=self.costs[idx],
            sources=tuple(self.sources[i] for i in idx),
            path=self.path,
        )

    def select_models(self, models: Sequence[str]) -> RewardData:
        """Columns for `models`, in that order."""
        if isinstance(models, str):
            raise TypeError("select_models() takes a sequence of model ids, not a str")
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise ValueError(f"{self.path}: unknown models {unknown}; have {list(self.models)}")
        if len(set(models)) != len(models):
            raise ValueError(f"duplicate models in {list(models)}")
        cols = [self.models.index(m) for m in models]
        return RewardData(
            prompts=self.prompts,
            models=tuple(models),
            rewards=self.rewards[:, cols],
            costs=self.costs[:, cols],
            sources=self.sources,
            path=self.path,
        )

    def mean_reward(self) -> dict[str, float]:
        return dict(zip(self.models, map(float, self.rewards.mean(axis=0)), strict=True))

    def mean_cost(self) -> dict[str, float]:
        return dict(zip(self.models, map(float, self.costs.mean(axis=0)), strict=True))


def _number(value: object, what: str) -> float:
    # bool is an int subclass; a reward of `true` is a bug in the file, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return x


def _parse_row(
    line: str, models: tuple[str, ...] | None
) -> tuple[str, str, tuple[str, ...], list[float], list[float]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    source = row.get("source", "unknown")
    if not isinstance(source, str):
        raise ValueError("'source' must be a string")
    arms = row.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ValueError("'arms' must be a non-empty object")
    names = tuple(arms) if models is None else models
    if set(arms) != set(names):
        missing, extra = sorted(set(names) - set(arms)), sorted(set(arms) - set(names))
        raise ValueError(f"arms differ from the first row's: missing {missing}, extra {extra}")
    rewards, costs = [], []
    for m in names:
        arm = arms[m]
        if not isinstance(arm, dict):
            raise ValueError(f"arms[{m!r}] must be an object")
        r = _number(arm.get("reward"), f"arms[{m!r}].reward")
        c = _number(arm.get("cost"), f"arms[{m!r}].cost")
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"arms[{m!r}].reward must be in [0, 1], got {r}")
        if c < 0.0:
            raise ValueError(f"arms[{m!r}].cost must be >= 0, got {c}")
        rewards.append(r)
        costs.append(c)
    return prompt, source, names, rewards, costs


def load_reward_file(path: Path | str) -> RewardData:
    """Load and validate a reward file; errors name the file and line."""
    path = Path(path)
    models: tuple[str, ...] | None = None
    prompts, sources, rewards, costs = [], [], [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                prompt, source, models, r, c = _parse_row(line, models)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            prompts.append(prompt)
            sources.append(source)
            rewards.append(r)
            costs.append(c)
    if models is None:
        raise ValueError(f"{path}: no rows")
    return RewardData(
        prompts=tuple(prompts),
        models=models,
        rewards=np.asarray(rewards),
        costs=np.asarray(costs),
        sources=tuple(sources),
        path=str(path),
    )


def in_first_half(prompt: str, seed: int = 0) -> bool:
    """Which half a prompt belongs to: a pure function of (seed, prompt), so files agree."""
    return hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[0] % 2 == 0


def half_rows(data: RewardData, split: int | None, first: bool) -> np.ndarray:
    """Row indices of one half of a file by prompt hash (`first` or not); all rows without a
    split seed."""
    if split is None:
        return np.arange(len(data))
    return np.flatnonzero([in_first_half(p, split) == first for p in data.prompts])


class PriceEntry(BaseModel):
    """One model's list prices, US$ per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    input_per_m: float = Field(gt=0.0, allow_inf_nan=False)
    output_per_m: float = Field(gt=0.0, allow_inf_nan=False)
    context_length: int = Field(128_000, gt=0)
    speed: Literal["fast", "balanced", "slow"] = "balanced"


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = None
    models: list[PriceEntry] = Field(min_length=1)


def load_prices(path: Path | str) -> dict[str, PriceEntry]:
    """prices.json -> {model id: PriceEntry}; errors name the file and the bad field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = _PriceFile.model_validate(raw).models
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(f"{path}: invalid prices: {errs}") from None
    prices: dict[str, PriceEntry] = {}
    for e in entries:
        if e.id in prices:
            raise ValueError(f"{path}: model {e.id!r} listed twice")
        prices[e.id] = e
    return prices
