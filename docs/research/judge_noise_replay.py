"""The offline replay learning from the simulated judge's scores instead of the recorded rewards.

    .venv/bin/python docs/research/judge_noise_replay.py [--seeds 20] [--split 0]

The simulated judge (core/replay/simulator.py, `Simulator._verdict`) scores each of the rubric's
three criteria as the recorded reward plus noise of sd 0.03 x min(1, 2 min(r, 1 - r)) on the
0-1 scale, and the reward is their weighted mean. Here the warm-up and evaluation streams carry
such scores (one draw per prompt and model, seeded) as the rewards the router learns from, with
the priors built from the recorded rewards (as the live service's are). Compliance depends on
costs only; the reported reward is the mean judged score, within the noise's standard error of
the recorded reward. Prints, per budget, the recorded-reward replay and the judged one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.encoding.features import load_projection  # noqa: E402
from core.method.priors import build_priors  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402
from core.replay.protocol import ReplaySpec, run_replay  # noqa: E402
from core.replay.stream import Outcomes  # noqa: E402
from core.service.judge_rubric import RUBRIC  # noqa: E402
from paretoserve_cli.contexts import contexts_for, load_specs  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NOISE_SD = 0.03  # SimulatorConfig.judge_noise_sd's default


def judged(rewards: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sd = NOISE_SD * np.minimum(1.0, 2.0 * np.minimum(rewards, 1.0 - rewards))
    weights = np.array(list(RUBRIC.values()))
    z = rng.standard_normal((*rewards.shape, len(weights)))
    scores = np.clip(rewards[..., None] + sd[..., None] * z, 0.0, 1.0)
    return scores @ weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.35e-4, 6.64e-4, 1.88e-3])
    args = ap.parse_args()
    d = load_reward_file(DATA / "val.jsonl")
    X = contexts_for(d, load_projection())
    first = np.array([in_first_half(p, args.split) for p in d.prompts])
    noisy = judged(d.rewards, seed=7)
    gap = noisy - d.rewards
    print(f"judged - recorded: mean {np.mean(gap):+.5f}, sd {np.std(gap):.4f}")
    specs = load_specs(DATA / "prices.json", d.models)

    def block(rows: np.ndarray, rewards: np.ndarray) -> Outcomes:
        return Outcomes(X[rows], rewards[rows], d.costs[rows], tuple(d.models))

    warm_true = block(first, d.rewards)
    priors = build_priors(
        warm_true.contexts, warm_true.rewards, warm_true.models, costs=warm_true.costs
    )
    for budget in args.budgets:
        spec = ReplaySpec(budget_usd=budget, seeds=args.seeds)
        out = {}
        for name, rewards in (("recorded", d.rewards), ("judged", noisy)):
            rep, _ = run_replay(spec, specs, block(~first, rewards), block(first, rewards), priors)
            out[name] = rep["summary"]
        r, j = out["recorded"], out["judged"]
        print(
            f"budget {budget:.3g}: recorded reward {r['mean_reward']:.4f} compliance "
            f"{r['compliance']:.4f} | judged {j['mean_reward']:.4f} / {j['compliance']:.4f} | "
            f"difference {j['mean_reward'] - r['mean_reward']:+.4f} / "
            f"{j['compliance'] - r['compliance']:+.4f}"
        )


if __name__ == "__main__":
    main()
