"""Issue 15's targets for method variants, on both halves of a split of val.jsonl.

    .venv/bin/python docs/research/method_eval.py [--seeds 20] [--split 0] \
        [--variants '{"name": {"pacer": {...}, "bandit": {...}}}'] [--json OUT]
    .venv/bin/python docs/research/method_eval.py --tables OUT   # markdown tables of a JSON

Each half of the split is in turn the warm-up (priors, then run first) and the other the
evaluation stream, so every figure is measured twice: `AB` (warm on the first half, evaluate on
the second; what `paretoserve replay --holdout-split S` does) and `BA` (the other way round).
A variant is a dict of ReplaySpec fields (`pacer`: PacerConfig fields, `bandit`: BanditConfig
fields, ...). The default variant `{}` is the shipped method. Prints, per variant and half:

- stationary at the paper's seven ceilings and at the cheapest model's own mean cost on the
  evaluation half: reward and compliance (target <= 1.004);
- the loosest ceiling's reward against the best single model's (target >= +0.003);
- regression at the moderate ceiling: seeds rerouted within 100 steps (>= 18/20), the degraded
  model's P2 share (<= 0.3), P2 reward against always-cheapest, P3/P1 (>= 0.98), the worst phase
  compliance (<= 1.01);
- price cut: the lift at the tight ceiling (>= +0.07); at the moderate ceiling P2's compliance
  (>= 0.9) and lift (> 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.encoding.features import load_projection  # noqa: E402
from core.method.config import BanditConfig  # noqa: E402
from core.method.priors import build_priors  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402
from core.replay.protocol import ReplaySpec, Scenario, paper_ceilings, run_replay  # noqa: E402
from core.replay.stream import Outcomes  # noqa: E402
from paretoserve_cli.contexts import contexts_for, load_specs  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TIGHT, MODERATE = 2, 3  # indices of the paper's ceilings


def halves(split: int, encoder: str = "torch"):
    d = load_reward_file(DATA / "val.jsonl")
    X = contexts_for(d, load_projection(), encoder)
    first = np.array([in_first_half(p, split) for p in d.prompts])
    mk = lambda r: Outcomes(X[r], d.rewards[r], d.costs[r], tuple(d.models))  # noqa: E731
    return {"AB": (mk(first), mk(~first)), "BA": (mk(~first), mk(first))}, d.models


def _spec(variant: dict, **kw) -> ReplaySpec:
    fields = dict(variant)
    if "bandit" in fields:
        fields["bandit"] = BanditConfig(**fields["bandit"])
    return ReplaySpec(**fields, **kw)


def evaluate(variant: dict, warm: Outcomes, evals: Outcomes, specs, seeds: int) -> dict:
    priors = build_priors(warm.contexts, warm.rewards, warm.models, costs=warm.costs)
    ceilings = paper_ceilings(warm)
    cheapest = float(evals.costs.mean(axis=0).min())
    model_rewards = evals.rewards.mean(axis=0)
    cheap_col = int(np.argmin(evals.costs.mean(axis=0)))
    out: dict = {"stationary": []}

    def run(scenario: Scenario, budget: float) -> dict:
        spec = _spec(variant, scenario=scenario, budget_usd=budget, seeds=seeds)
        return run_replay(spec, specs, evals, warm, priors)[0]

    for budget in [*ceilings, cheapest]:
        s = run(Scenario.STATIONARY, budget)["summary"]
        out["stationary"].append(
            {"budget": budget, "reward": s["mean_reward"], "compliance": s["compliance"]}
        )
    out["loosest_minus_best_single"] = out["stationary"][6]["reward"] - float(model_rewards.max())

    reg = run(Scenario.REGRESSION, ceilings[MODERATE])
    p1, p2, p3 = reg["phases"]
    model = ReplaySpec(budget_usd=1.0).regression_model
    stats = reg["reroute_steps_stats"]
    per_seed = [s["reroute_steps"] for s in reg["per_seed"]]
    out["regression"] = {
        "rerouted_within_100": sum(1 for v in per_seed if v is not None and v <= 100),
        "reached": stats.get("reached"),
        "p2_share_degraded": p2["mix"].get(model, 0.0),
        "p2_reward": p2["mean_reward"],
        "always_cheapest": float(model_rewards[cheap_col]),
        "p3_over_p1": p3["mean_reward"] / p1["mean_reward"],
        "worst_phase_compliance": max(p["compliance"] for p in reg["phases"]),
    }
    cut_tight = run(Scenario.PRICE_CUT, ceilings[TIGHT])
    cut_mod = run(Scenario.PRICE_CUT, ceilings[MODERATE])
    out["price_cut"] = {
        "tight_lift": cut_tight["summary"]["quality_lift"],
        "moderate_lift": cut_mod["summary"]["quality_lift"],
        "moderate_p2_compliance": cut_mod["phases"][1]["compliance"],
        "worst_phase_compliance": max(
            p["compliance"] for r in (cut_tight, cut_mod) for p in r["phases"]
        ),
    }
    return out


def show(name: str, half: str, r: dict) -> None:
    st = r["stationary"]
    rew = " ".join(f"{s['reward']:.4f}" for s in st)
    comp = " ".join(f"{s['compliance']:.3f}" for s in st)
    g, c = r["regression"], r["price_cut"]
    print(f"[{name} {half}] reward     {rew}")
    print(f"[{name} {half}] compliance {comp}")
    print(
        f"[{name} {half}] loosest-best {r['loosest_minus_best_single']:+.4f} | regression "
        f"rerouted<=100 {g['rerouted_within_100']}/20 share {g['p2_share_degraded']:.2f} "
        f"P2 {g['p2_reward']:.4f} (cheapest {g['always_cheapest']:.4f}) P3/P1 "
        f"{g['p3_over_p1']:.4f} worst {g['worst_phase_compliance']:.3f} | price-cut tight "
        f"{c['tight_lift']:+.4f} moderate {c['moderate_lift']:+.4f} P2 comp "
        f"{c['moderate_p2_compliance']:.3f} worst {c['worst_phase_compliance']:.3f}",
        flush=True,
    )


def tables(path: Path) -> None:
    """docs/results.md's tables of a --json file: per half, stationary reward / compliance per
    budget, then the targets of the non-stationary scenarios."""
    results = json.loads(path.read_text())["results"]
    for half in ("AB", "BA"):
        runs = {name: r[half] for name, r in results.items() if half in r}
        budgets = [s["budget"] for s in next(iter(runs.values()))["stationary"]]
        print(
            f"\n{half}: reward / compliance per budget ($/request; the last column is the "
            "cheapest model's own mean cost on the evaluation half)\n"
        )
        print("| variant | " + " | ".join(f"{b:.3g}" for b in budgets) + " |")
        print("|---" * (len(budgets) + 1) + "|")
        for name, r in runs.items():
            cells = [f"{s['reward']:.4f} / {s['compliance']:.4f}" for s in r["stationary"]]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print(
            "\n| variant | loosest - best single | regression: rerouted <= 100 | degraded P2 "
            "share | P2 reward (always-cheapest) | P3/P1 | worst phase compliance | price cut: "
            "tight lift | moderate lift | moderate P2 compliance | worst phase compliance |"
        )
        print("|---" * 11 + "|")
        for name, r in runs.items():
            g, c = r["regression"], r["price_cut"]
            print(
                f"| {name} | {r['loosest_minus_best_single']:+.4f} | "
                f"{g['rerouted_within_100']}/20 | {g['p2_share_degraded']:.2f} | "
                f"{g['p2_reward']:.4f} ({g['always_cheapest']:.4f}) | {g['p3_over_p1']:.4f} | "
                f"{g['worst_phase_compliance']:.3f} | {c['tight_lift']:+.4f} | "
                f"{c['moderate_lift']:+.4f} | {c['moderate_p2_compliance']:.3f} | "
                f"{c['worst_phase_compliance']:.3f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--variants", type=str, default='{"default": {}}')
    ap.add_argument(
        "--encoder",
        default="torch",
        help="prompt encoder, as `paretoserve replay --encoder` (static: the committed map, "
        "which saw every prompt; docs/research/static_encoder_eval.py fits it per half)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tables", type=Path, help="print the markdown tables of a --json file")
    args = ap.parse_args()
    if args.tables:
        return tables(args.tables)
    variants = json.loads(args.variants)
    pairs, models = halves(args.split, args.encoder)
    specs = load_specs(DATA / "prices.json", models)
    results: dict = {}
    for half, (warm, evals) in pairs.items():
        for name, variant in variants.items():
            start = time.perf_counter()
            r = evaluate(variant, warm, evals, specs, args.seeds)
            r["seconds"] = time.perf_counter() - start
            results.setdefault(name, {})[half] = r
            show(name, half, r)
    if args.json:
        args.json.write_text(json.dumps({"variants": variants, "results": results}, indent=2))


if __name__ == "__main__":
    main()
