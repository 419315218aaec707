"""`paretoserve priors build`: warm-start priors from a reward file."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.encoding.features import Projection, load_projection
from core.method.priors import Priors, build_priors
from core.replay.data import RewardData, load_reward_file
from paretoserve_cli.contexts import contexts_for


def priors_from(data: RewardData, projection: Projection, plasticity: float = 0.1) -> Priors:
    return build_priors(
        contexts_for(data, projection),
        data.rewards,
        data.models,
        plasticity=plasticity,
        projection_fingerprint=projection.fingerprint,
        source=f"{Path(data.path).name} ({len(data)} rows)",
        costs=data.costs,
    )


def _build(args: argparse.Namespace) -> int:
    data = load_reward_file(args.data)
    priors = priors_from(data, load_projection(), args.plasticity)
    priors.save(args.out)
    print(f"wrote priors for {len(priors.arms)} models from {priors.source} to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("priors", help="warm-start priors")
    psub = p.add_subparsers(dest="priors_command", required=True)
    b = psub.add_parser("build", help="build priors from a reward file (full information)")
    b.add_argument("--data", type=Path, required=True, help="reward file (.jsonl)")
    b.add_argument("--out", type=Path, required=True, help="priors file to write (.json)")
    b.add_argument("--plasticity", type=float, default=0.1, help="p in A_off = p*(I + XtX)")
    b.set_defaults(func=_build)
