"""`paretoserve replay`: the paper's offline protocol on recorded rewards (contract: DESIGN.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from core.encoding.features import Projection, load_projection
from core.method.priors import Priors, build_priors
from core.replay.data import half_rows, load_reward_file
from core.replay.protocol import ReplaySpec, Scenario, run_replay
from core.replay.stream import Outcomes
from paretoserve_cli.contexts import ENCODERS, contexts_for, default_prices_path, load_specs


def _stream(
    path: Path, projection: Projection, split: int | None, first: bool, encoder: str = "torch"
) -> Outcomes:
    """A reward file as outcomes; with a split seed, only one half of it (by prompt hash).
    Contexts are computed on the whole file so the embedding cache is shared by both halves."""
    data = load_reward_file(path)
    contexts = contexts_for(data, projection, encoder)
    rows = half_rows(data, split, first)
    return Outcomes(contexts[rows], data.rewards[rows], data.costs[rows], tuple(data.models))


def run(args: argparse.Namespace) -> int:
    projection = load_projection()
    split = args.holdout_split
    data = _stream(args.data, projection, split, first=False, encoder=args.encoder)
    warm_path = args.warmup or (args.data if split is not None else None)
    warm = (
        _stream(warm_path, projection, split, first=True, encoder=args.encoder)
        if warm_path
        else None
    )
    prices = args.prices or default_prices_path(args.warmup, args.data)
    specs = load_specs(prices, sorted({*data.models, *(warm.models if warm else ())}))
    if args.priors == "none":
        priors, priors_desc = None, "none"
    elif args.priors:
        priors, priors_desc = Priors.load(Path(args.priors)), str(args.priors)
    elif warm is not None:
        priors = build_priors(
            warm.contexts,
            warm.rewards,
            warm.models,
            projection_fingerprint=projection.fingerprint,
            costs=warm.costs,
        )
        priors_desc = f"built from the warm-up stream ({len(warm.contexts)} rows)"
    else:
        priors, priors_desc = None, "none (no warm-up stream)"
    spec = ReplaySpec(
        scenario=args.scenario,
        budget_usd=args.budget,
        seeds=args.seeds,
        seed_offset=args.seed_offset,
        pacer_mode=args.pacer_mode,
        pacer={"cost_signal": args.cost_signal, "feedforward": args.feedforward},
        newcomer_reward_scale=args.newcomer_reward_scale,
    )
    report, runs = run_replay(spec, specs, data, warm, priors)
    report["inputs"] = {
        "data": str(args.data),
        "warmup": str(args.warmup) if args.warmup else None,
        "holdout_split": args.holdout_split,
        "prices": str(prices),
        "priors": priors_desc,
        "warmup_rows": len(warm.contexts) if warm else 0,
        "data_rows": len(data.contexts),
        "encoder": args.encoder,
        "projection": projection.fingerprint + (" (fallback)" if projection.fallback else ""),
    }
    print_summary(report, f"{args.scenario} budget={args.budget:.3g} seeds={args.seeds}")
    write_json(args.json, report)
    if args.plot:
        from paretoserve_cli.plot import plot_run

        plot_run(runs[0], args.budget, args.plot, title=f"{args.scenario}, seed {runs[0].seed}")
    return 0


def print_summary(report: dict, title: str) -> None:
    """The replay report's headline: reward, cost, compliance, mix, phases, adaptation."""
    s = report["summary"]
    print(
        f"{title}: reward={s['mean_reward']:.4f} cost={s['mean_cost']:.3g} "
        f"compliance={s['compliance']:.4f} mix="
        + ", ".join(f"{m.split('/')[-1]}:{v:.2f}" for m, v in s["mix"].items())
    )
    for p in report["phases"]:
        print(f"  {p['name']}: reward={p['mean_reward']:.4f} compliance={p['compliance']:.4f}")
    for key in ("quality_lift", "reroute_steps", "adoption_steps"):
        if key in report:
            print(f"  {key} = {report[key]}")


def write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def _priors_arg(value: str) -> str:
    if value != "none" and not Path(value).exists():
        raise argparse.ArgumentTypeError(f"priors file {value} does not exist (or say 'none')")
    return value


def _positive(value: str) -> float:
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="offline replay of the paper's experiments")
    p.add_argument("--data", type=Path, required=True, help="evaluation reward file")
    p.add_argument("--warmup", type=Path, help="warm-up reward file (learned on first)")
    p.add_argument(
        "--priors",
        type=_priors_arg,
        help="priors file, or 'none' (default: built from the warm-up stream)",
    )
    p.add_argument(
        "--prices",
        type=Path,
        help="prices.json (default: next to the warm-up file, else next to the data file)",
    )
    p.add_argument("--scenario", choices=[s.value for s in Scenario], default="stationary")
    p.add_argument("--budget", type=_positive, required=True, help="US$ per request")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument(
        "--holdout-split",
        type=int,
        metavar="SEED",
        help="warm up on one half of the warm-up file (default: the data file) and "
        "evaluate on the other half of the data file, split by prompt hash",
    )
    p.add_argument("--pacer-mode", choices=["hard", "soft", "adaptive"], default="adaptive")
    p.add_argument(
        "--cost-signal",
        choices=["expected-cost", "list-price"],
        default="expected-cost",
        help="what the pacer's dual prices: expected realised cost (default) or the "
        "paper's normalised log list price",
    )
    p.add_argument(
        "--feedforward",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="expected-cost mode: re-solve the dual over recent contexts (default; see "
        "docs/results.md); --no-feedforward keeps only the integral dual",
    )
    p.add_argument(
        "--newcomer-reward-scale",
        type=float,
        default=1.0,
        help="onboarding: multiply the newcomer's rewards (0.5 = a bad newcomer)",
    )
    p.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="torch",
        help="prompt encoder for the contexts, as EmbedderArgs.backend (default torch, the "
        "reference); the embedding disk cache keys on it",
    )
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="write a PNG of spend, mix and reward over time")
    p.set_defaults(func=run)
