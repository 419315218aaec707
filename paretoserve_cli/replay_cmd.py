"""`paretoserve replay`: the paper's offline protocol on recorded rewards (contract: DESIGN.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.encoding.features import load_projection
from core.method.config import BanditConfig, PacerConfig
from core.replay.protocol import ReplaySpec, Scenario, run_replay
from core.replay.tenant_replay import TenantPlan, run_tenant_replay
from paretoserve_cli.contexts import ENCODERS
from paretoserve_cli.replay_inputs import positive, priors_arg, resolve_inputs, resolve_priors


def run(args: argparse.Namespace) -> int:
    projection = load_projection()
    inputs = resolve_inputs(args.data, args.warmup, args.holdout_split, args.prices)
    data = inputs.data_outcomes(projection, args.encoder)
    warm = inputs.warm_outcomes(projection, args.encoder)
    priors = resolve_priors(args.priors, inputs, projection, args.encoder)
    spec = ReplaySpec(
        scenario=args.scenario,
        budget_usd=args.budget,
        seeds=args.seeds,
        seed_offset=args.seed_offset,
        pacer_mode=args.pacer_mode,
        pacer={
            "cost_signal": args.cost_signal,
            "feedforward": args.feedforward,
            "bank_memory": args.bank_memory,
            "bank_pick_share": args.bank_pick_share,
        },
        bandit=BanditConfig(shift_threshold=args.shift_threshold, shift_restore=args.shift_restore),
        newcomer_reward_scale=args.newcomer_reward_scale,
    )
    if args.tenants:
        return _run_tenants(args, spec, inputs, data, warm, priors)
    report, runs = run_replay(spec, inputs.specs, data, warm, priors.load())
    report["inputs"] = {
        "data": str(args.data),
        "warmup": str(args.warmup) if args.warmup else None,
        "holdout_split": args.holdout_split,
        "prices": str(inputs.prices),
        "priors": priors.desc,
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


def _run_tenants(args, spec, inputs, data, warm, priors) -> int:
    """`--tenants FILE`: the stream sent by the file's tenants (core/replay/tenant_replay.py)."""
    plan = TenantPlan.model_validate_json(args.tenants.read_text())
    report, runs = run_tenant_replay(spec, plan, inputs.specs, data, warm, priors.load())
    report["inputs"] = {"data": str(args.data), "tenants": str(args.tenants)}
    for tenant_id, t in report["tenants"].items():
        s = t["summary"]
        line = (
            f"tenant {tenant_id}: reward={s['mean_reward']:.4f} cost={s['mean_cost']:.3g} "
            f"compliance={s['compliance']:.4f} (max over seeds {s['compliance_max']:.4f})"
        )
        if "period_compliance" in s:
            line += f" period spend / budget={s['period_compliance']:.4f}"
        print(line + f" requests={s['requests']}")
    write_json(args.json, report)
    if args.plot:
        from paretoserve_cli.plot import plot_tenants

        plot_tenants(plan, runs[0], args.plot)
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="offline replay of the paper's experiments")
    p.add_argument("--data", type=Path, required=True, help="evaluation reward file")
    p.add_argument("--warmup", type=Path, help="warm-up reward file (learned on first)")
    p.add_argument(
        "--priors",
        type=priors_arg,
        help="priors file, or 'none' (default: built from the warm-up stream)",
    )
    p.add_argument(
        "--prices",
        type=Path,
        help="prices.json (default: next to the warm-up file, else next to the data file)",
    )
    p.add_argument("--scenario", choices=[s.value for s in Scenario], default="stationary")
    p.add_argument("--budget", type=positive, required=True, help="US$ per request")
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
        "--bank-memory",
        type=int,
        default=PacerConfig.model_fields["bank_memory"].default,
        help="requests the budget's running balance remembers (a pick must fit it; "
        "core/method/pacer.py); 0 = off, as in the paper",
    )
    p.add_argument(
        "--bank-pick-share",
        type=float,
        default=PacerConfig.model_fields["bank_pick_share"].default,
        help="the largest share of the balance's savings one pick may spend (1 = all)",
    )
    p.add_argument(
        "--shift-threshold",
        type=float,
        default=BanditConfig.model_fields["shift_threshold"].default,
        help="CUSUM level at which a drop in a model's quality cuts its evidence "
        "(core/method/shift.py); 0 = off, as in the paper",
    )
    p.add_argument(
        "--shift-restore",
        type=float,
        default=BanditConfig.model_fields["shift_restore"].default,
        help="CUSUM level at which a cut model whose rewards fit its statistics from before the "
        "drop gets them back (core/method/shift.py); 0 = never",
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
    p.add_argument(
        "--tenants",
        type=Path,
        help="a tenants file (JSON; core/replay/tenant_replay.py): the stationary stream sent "
        "by these tenants, each paced (and capped) on its own, one shared bandit",
    )
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="write a PNG of spend, mix and reward over time")
    p.set_defaults(func=run)
