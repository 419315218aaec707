"""`paretoserve priors build`: warm-start priors from a reward file.

The embedded default's priors, `core/artifacts/priors.json`, are this command's output for
`../shared/data/val.jsonl` (core.method.priors.DEFAULT_PRIORS_COMMAND, run from the repository
root); the file records the command, the data file and its row count, the projection's
fingerprint, the models and a fingerprint of its numbers. Re-make it after re-fitting the
projection (`paretoserve features fit`) or changing serve_config.yaml's models.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from core.encoding.features import Projection, load_projection
from core.method.priors import Priors, build_priors
from core.replay.data import RewardData, load_reward_file
from paretoserve_cli.contexts import contexts_for

DEFAULT_PLASTICITY = 0.1


def priors_from(
    data: RewardData, projection: Projection, plasticity: float = 0.1, command: str = ""
) -> Priors:
    return build_priors(
        contexts_for(data, projection),
        data.rewards,
        data.models,
        plasticity=plasticity,
        projection_fingerprint=projection.fingerprint,
        source=f"{Path(data.path).name} ({len(data)} rows)",
        costs=data.costs,
        command=command,
    )


def build_command(data: Path, out: Path, plasticity: float = DEFAULT_PLASTICITY) -> str:
    """The command line that makes these priors again (paths as given, so run it from the
    same folder)."""
    words = ["paretoserve", "priors", "build", "--data", str(data), "--out", str(out)]
    if plasticity != DEFAULT_PLASTICITY:
        words += ["--plasticity", repr(plasticity)]
    return shlex.join(words)


def _build(args: argparse.Namespace) -> int:
    data = load_reward_file(args.data)
    command = build_command(args.data, args.out, args.plasticity)
    priors = priors_from(data, load_projection(), args.plasticity, command)
    priors.save(args.out)
    print(
        f"wrote priors for {len(priors.arms)} models from {priors.source} to {args.out} "
        f"(projection {priors.projection_fingerprint}, numbers {priors.fingerprint})"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("priors", help="warm-start priors")
    psub = p.add_subparsers(dest="priors_command", required=True)
    b = psub.add_parser(
        "build",
        help="build priors from a reward file (full information); the embedded default's: "
        "--data ../shared/data/val.jsonl --out core/artifacts/priors.json",
    )
    b.add_argument("--data", type=Path, required=True, help="reward file (.jsonl)")
    b.add_argument("--out", type=Path, required=True, help="priors file to write (.json)")
    b.add_argument(
        "--plasticity", type=float, default=DEFAULT_PLASTICITY, help="p in A_off = p*(I + XtX)"
    )
    b.set_defaults(func=_build)
