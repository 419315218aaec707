"""Compare pacer variants on the offline replay across the paper's ceilings and several splits.

    .venv/bin/python docs/research/pacer_sweep.py [--seeds 10] [--splits 0 1 2]

Prints, per variant and ceiling, mean reward and compliance averaged over splits, next to the
best single model and the best context-free random mix (the hull) at the router's cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.encoding.features import load_projection  # noqa: E402
from core.method.priors import build_priors  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402
from core.replay.protocol import ReplaySpec, paper_ceilings, run_replay  # noqa: E402
from core.replay.stream import Outcomes  # noqa: E402
from paretoserve_cli.contexts import contexts_for, load_specs  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def streams(split: int):
    d = load_reward_file(DATA / "val.jsonl")
    X = contexts_for(d, load_projection())
    m = np.array([in_first_half(p, split) for p in d.prompts])
    mk = lambda r: Outcomes(X[r], d.rewards[r], d.costs[r], tuple(d.models))  # noqa: E731
    return mk(m), mk(~m), d.models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", type=str, default="")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = (
        json.loads(args.variants)
        if args.variants
        else {
            "paper": {},
            "expected": {"cost_signal": "expected-cost"},
        }
    )
    table: dict = {}
    for split in args.splits:
        warm, evals, models = streams(split)
        specs = load_specs(DATA / "prices.json", models)
        priors = build_priors(warm.contexts, warm.rewards, warm.models, costs=warm.costs)
        for i, budget in enumerate(paper_ceilings(warm)):
            for name, pacer in variants.items():
                spec = ReplaySpec(budget_usd=budget, seeds=args.seeds, pacer=pacer)
                rep, _ = run_replay(spec, specs, evals, warm, priors)
                s = rep["summary"]
                table.setdefault((name, i), []).append(
                    (
                        s["mean_reward"],
                        s["compliance"],
                        rep["baselines"]["random_at_equal_cost"],
                        budget,
                    )
                )
    out = {}
    for (name, i), rows in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        r, c, h, b = (float(np.mean(v)) for v in zip(*rows, strict=True))
        out[f"{name}@{i}"] = {"reward": r, "compliance": c, "hull": h, "budget": b}
        print(
            f"ceiling {i} B={b:.3g} {name:>12}: reward={r:.4f} compliance={c:.4f} "
            f"hull@cost={h:.4f} reward-hull={r - h:+.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
