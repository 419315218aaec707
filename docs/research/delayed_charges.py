"""The offline replay with each charge and reward delayed by D requests, as under concurrency.

    .venv/bin/python docs/research/delayed_charges.py [--budget 6.64e-4] [--delays 0 16 32]

Prints, per delay, the warm-up's reward, compliance and largest pacer dual, and the evaluation's
reward and compliance, averaged over seeds (split 0, default pacer, priors with costs). A live
service answers 16 requests at a time and its charges arrive a provider round trip after the
route: this is that, without the service.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pacer_sweep import DATA, streams  # noqa: E402

from core.method.config import PacerConfig, RouterConfig  # noqa: E402
from core.method.priors import build_priors  # noqa: E402
from core.method.router import Router  # noqa: E402
from core.replay.protocol import stream_orders  # noqa: E402
from core.replay.stream import Outcomes  # noqa: E402
from paretoserve_cli.contexts import load_specs  # noqa: E402


def run(router: Router, block: Outcomes, order: np.ndarray, delay: int, budget: float) -> tuple:
    """(mean reward, compliance, max dual) of one stream, charges `delay` requests late."""
    col = {m: i for i, m in enumerate(block.models)}
    queue: deque = deque()
    rewards, costs, duals = [], [], []
    for i in order:
        d = router.route(block.contexts[i])
        j = col[d.model]
        queue.append((d.request_id, float(block.costs[i, j]), float(block.rewards[i, j])))
        rewards.append(block.rewards[i, j])
        costs.append(block.costs[i, j])
        duals.append(router.pacer.dual)
        while len(queue) > delay:
            rid, cost, reward = queue.popleft()
            router.charge(rid, cost)
            router.feedback(rid, reward)
    while queue:
        rid, cost, reward = queue.popleft()
        router.charge(rid, cost)
        router.feedback(rid, reward)
    return float(np.mean(rewards)), float(np.mean(costs)) / budget, max(duals)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=6.64e-4)
    ap.add_argument("--delays", type=int, nargs="+", default=[0, 16, 32])
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    warm, evals, models = streams(0)
    specs = load_specs(DATA / "prices.json", models)
    priors = build_priors(warm.contexts, warm.rewards, warm.models, costs=warm.costs)
    for delay in args.delays:
        rows = []
        for seed in range(args.seeds):
            config = RouterConfig(pacer=PacerConfig(budget_usd=args.budget), seed=seed)
            router = Router(config, [specs[m] for m in models])
            router.load_priors(priors)
            warm_order, phases = stream_orders(
                len(warm.contexts), len(evals.contexts), "stationary", seed
            )
            w = run(router, warm, warm_order, delay, args.budget)
            e = run(router, evals, phases[0][1], delay, args.budget)
            rows.append((*w, *e))
        m = np.mean(rows, axis=0)
        print(
            f"delay {delay:3d}: warm-up reward {m[0]:.4f} compliance {m[1]:.3f} max dual "
            f"{m[2]:.2f} | evaluation reward {m[3]:.4f} compliance {m[4]:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
