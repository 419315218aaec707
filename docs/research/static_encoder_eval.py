"""Does the static encoder (core/encoding/minilm_static.py) route as well as the torch MiniLM on
prompts its map never saw?

    .venv/bin/python docs/research/static_encoder_eval.py [--seeds 20] [--json OUT]

For each half-split of val.jsonl (splits 0 and 1, each half in turn the warm-up, as
method_eval.py): the static map is fitted on the warm-up half's prompts only (not the committed
map, which saw every prompt), then the stationary replay runs at the paper's seven ceilings with
torch contexts and with static contexts (same projection, priors from each encoder's warm-up
contexts, same seeds). Prints each ceiling's reward for both and the paired per-seed difference
(static - torch) with its standard error; the bar is >= -0.002 at every ceiling (issue 11).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from method_eval import DATA, _spec  # noqa: E402

from core.encoding.embedding_cache import cached_encode  # noqa: E402
from core.encoding.features import load_projection  # noqa: E402
from core.encoding.minilm_static import StaticTokens, fit_map  # noqa: E402
from core.method.priors import build_priors  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402
from core.replay.protocol import Scenario, paper_ceilings, run_replay  # noqa: E402
from core.replay.stream import Outcomes  # noqa: E402
from paretoserve_cli.contexts import LazyMiniLM, load_specs  # noqa: E402


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def stationary(contexts, d, warm_rows, eval_rows, specs, seeds) -> list[dict]:
    mk = lambda r: Outcomes(contexts[r], d.rewards[r], d.costs[r], tuple(d.models))  # noqa: E731
    warm, ev = mk(warm_rows), mk(eval_rows)
    priors = build_priors(warm.contexts, warm.rewards, warm.models, costs=warm.costs)
    out = []
    for budget in paper_ceilings(warm):
        spec = _spec({}, scenario=Scenario.STATIONARY, budget_usd=budget, seeds=seeds)
        report = run_replay(spec, specs, ev, warm, priors)[0]
        out.append(
            {
                "budget": budget,
                "reward": report["summary"]["mean_reward"],
                "compliance": report["summary"]["compliance"],
                "per_seed": [s["summary"]["mean_reward"] for s in report["per_seed"]],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    d = load_reward_file(DATA / "val.jsonl")
    specs = load_specs(DATA / "prices.json", d.models)
    projection = load_projection()
    torch_emb = cached_encode(d.prompts, LazyMiniLM("torch"))
    pooled = StaticTokens().pooled(d.prompts)
    torch_ctx = projection.apply(torch_emb)
    results: dict = {}
    worst = 0.0
    for split in (0, 1):
        first = np.array([in_first_half(p, split) for p in d.prompts])
        for half, (w, e) in {"AB": (first, ~first), "BA": (~first, first)}.items():
            weights = fit_map(pooled[w], torch_emb[w])
            static_emb = _unit(np.hstack([pooled, np.ones((len(pooled), 1))]) @ weights)
            cos = (static_emb[e] * torch_emb[e]).sum(axis=1)
            base = stationary(torch_ctx, d, w, e, specs, args.seeds)
            stat = stationary(projection.apply(static_emb), d, w, e, specs, args.seeds)
            print(
                f"split {split} {half}: cosine to torch on the evaluation half "
                f"min {cos.min():.3f} mean {cos.mean():.3f}"
            )
            rows = []
            for b, s in zip(base, stat, strict=True):
                diff = np.array(s["per_seed"]) - np.array(b["per_seed"])
                delta, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
                worst = min(worst, delta)
                print(
                    f"  {b['budget']:.3g}: torch {b['reward']:.4f} ({b['compliance']:.3f}) | "
                    f"static {s['reward']:.4f} ({s['compliance']:.3f}) | "
                    f"delta {delta:+.4f} (s.e. {se:.4f})"
                )
                rows.append({"torch": b, "static": s, "delta": delta, "se": se})
            results[f"split{split}_{half}"] = {
                "cosine_min": float(cos.min()),
                "cosine_mean": float(cos.mean()),
                "ceilings": rows,
            }
    print(f"worst delta {worst:+.4f} (bar: >= -0.002)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
