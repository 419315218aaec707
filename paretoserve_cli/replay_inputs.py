"""A replay's inputs from its arguments: reward files and halves, prices, model specs, priors.

`paretoserve replay` (offline) and `paretoserve loadtest replay` (through HTTP) resolve them
the same way (DESIGN.md): the warm-up stream is --warmup, else with --holdout-split the data
file's other half; without --prices, the prices.json next to the warm-up file (else the data
file); without --priors, priors built from the warm-up stream.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.encoding.features import Projection
from core.method.priors import Priors, build_priors
from core.method.registry import ModelSpec
from core.replay.data import RewardData, half_rows, load_reward_file
from core.replay.stream import Outcomes
from paretoserve_cli.contexts import contexts_for, default_prices_path, load_specs


@dataclass(frozen=True)
class ReplayInputs:
    """The files of one replay, resolved; contexts are computed only when asked for."""

    data: RewardData
    data_rows: np.ndarray  # the evaluated rows: all, or the second half with a split seed
    warm: RewardData | None  # the warm-up file, if there is a warm-up stream
    warm_rows: np.ndarray | None  # its rows: all, or the first half with a split seed
    prices: Path
    specs: dict[str, ModelSpec]
    _outcomes: dict = field(default_factory=dict, repr=False, compare=False)

    def data_outcomes(self, projection: Projection, encoder: str = "torch") -> Outcomes:
        """The evaluated rows as outcomes (contexts from `encoder` + `projection`)."""
        return self._rows_as_outcomes("data", projection, encoder)

    def warm_outcomes(self, projection: Projection, encoder: str = "torch") -> Outcomes | None:
        """The warm-up rows as outcomes; None without a warm-up stream."""
        if self.warm is None:
            return None
        return self._rows_as_outcomes("warm", projection, encoder)

    def _rows_as_outcomes(self, which: str, projection: Projection, encoder: str) -> Outcomes:
        key = (which, projection.fingerprint, encoder)
        if key not in self._outcomes:
            data, rows = self.data, self.data_rows
            if which == "warm":
                data, rows = self.warm, self.warm_rows
            # contexts of the whole file: the embedding cache is shared by both halves
            contexts = contexts_for(data, projection, encoder)
            self._outcomes[key] = Outcomes(
                contexts[rows], data.rewards[rows], data.costs[rows], tuple(data.models)
            )
        return self._outcomes[key]


def resolve_inputs(
    data: Path, warmup: Path | None, holdout_split: int | None, prices: Path | None
) -> ReplayInputs:
    """Load the data file and the warm-up file (--warmup, else the data file with a split
    seed), take their halves, find the prices file and the specs of every model they name."""
    data_file = load_reward_file(data)
    warm_path = warmup or (data if holdout_split is not None else None)
    warm_file = load_reward_file(warm_path) if warm_path else None
    prices_path = prices or default_prices_path(warmup, data)
    needed = sorted({*data_file.models, *(warm_file.models if warm_file else ())})
    return ReplayInputs(
        data=data_file,
        data_rows=half_rows(data_file, holdout_split, first=False),
        warm=warm_file,
        warm_rows=half_rows(warm_file, holdout_split, first=True) if warm_file else None,
        prices=prices_path,
        specs=load_specs(prices_path, needed),
    )


@dataclass(frozen=True)
class PriorsChoice:
    """The priors a replay starts from: a priors file (`path`), priors built from the warm-up
    stream (`built`), or neither; `desc` says which."""

    path: Path | None
    built: Priors | None
    desc: str

    def load(self) -> Priors | None:
        return Priors.load(self.path) if self.path is not None else self.built


def resolve_priors(
    priors: str | None, inputs: ReplayInputs, projection: Projection, encoder: str = "torch"
) -> PriorsChoice:
    """--priors FILE, 'none', or (by default) priors built from the warm-up rows' outcomes."""
    if priors == "none":
        return PriorsChoice(None, None, "none")
    if priors:
        return PriorsChoice(Path(priors), None, str(priors))
    warm = inputs.warm_outcomes(projection, encoder)
    if warm is None:
        return PriorsChoice(None, None, "none (no warm-up stream)")
    built = build_priors(
        warm.contexts,
        warm.rewards,
        warm.models,
        projection_fingerprint=projection.fingerprint,
        source=f"{Path(inputs.warm.path).name} warm-up rows ({len(warm.contexts)})",
        costs=warm.costs,
    )
    return PriorsChoice(None, built, f"built from the warm-up stream ({len(warm.contexts)} rows)")


# ---- argument types shared by the replay commands ----------------------------------------------


def priors_arg(value: str) -> str:
    """--priors: an existing file, or 'none'."""
    if value != "none" and not Path(value).exists():
        raise argparse.ArgumentTypeError(f"priors file {value} does not exist (or say 'none')")
    return value


def positive(value: str) -> float:
    """A finite number > 0 (--budget and friends)."""
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return v
