"""How much of issue 15's price-cut and loosest-ceiling targets any router could reach here.

    .venv/bin/python docs/research/headroom.py [--split 0]

On each half of the split as the evaluation (warm-up on the other, as method_eval.py), with
the recorded rewards and realised costs, prints for the price cut's P2 prices (gemini-2.5-pro
x 0.1/5.625) at the tight and moderate ceilings, and for the loosest ceiling:
- the best context-free mix of models within the budget (no router can do worse by design);
- the full-information ridge policy: a ridge fit of every arm's reward on the warm-up half's
  contexts (the bandit's features, every arm observed), then argmax q(x) - lam * mean cost / B
  on the evaluation half with the largest reward whose realised spend is <= the budget: what a
  linear router on these features reaches with perfect exploration and pacing;
- the per-benchmark pick: each benchmark's best model on the warm-up half, used for all of
  its prompts on the evaluation half (a router that knew each prompt's benchmark);
- the per-prompt oracle within the budget (same Lagrangian on the true rewards);
- the most a router could spend: each prompt sent to its dearest model;
- with `--predictors`, the same full-information policy with other quality models fitted on
  the warm-up half: ridge on 10 / 50 / 100 PCA components of the raw MiniLM embedding (fitted
  on the warm-up half), ridge on the raw 384-d embedding, and a kNN regression (cosine,
  softmax-weighted, k = 30 / 100) on it: whether a richer or nonlinear model of the same
  prompt would lift the bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from method_eval import DATA, halves  # noqa: E402

from core.encoding.embedding_cache import cached_encode  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402
from core.replay.protocol import paper_ceilings  # noqa: E402
from paretoserve_cli.contexts import LazyMiniLM  # noqa: E402

CUT_MODEL, CUT = "google/gemini-2.5-pro", 0.1 / 5.625
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-4, 1e5, 600)])


def best_within(scores: np.ndarray, rewards: np.ndarray, costs: np.ndarray, budget: float):
    """(reward, spend / budget) of the best argmax(scores - lam * mean cost / B) policy whose
    realised spend is within the budget."""
    rows = np.arange(len(rewards))
    mean = costs.mean(axis=0) / budget
    best = (float("nan"), float("nan"))
    for lam in LAMBDAS:
        pick = np.argmax(scores - lam * mean[None, :], axis=1)
        spend = costs[rows, pick].mean() / budget
        if spend <= 1.0 and not rewards[rows, pick].mean() <= best[0]:
            best = (float(rewards[rows, pick].mean()), float(spend))
    return best


def context_free(rewards: np.ndarray, costs: np.ndarray, budget: float) -> float:
    """The best mix of at most two models (the upper hull) whose mean cost is <= the budget."""
    m, c = rewards.mean(axis=0), costs.mean(axis=0)
    best = max((m[i] for i in range(len(m)) if c[i] <= budget), default=float("nan"))
    for i in range(len(m)):
        for j in range(len(m)):
            if c[i] < budget < c[j]:
                w = (budget - c[i]) / (c[j] - c[i])
                best = max(best, (1 - w) * m[i] + w * m[j])
    return float(best)


def _ridge(w: np.ndarray, y: np.ndarray, x: np.ndarray, lam: float = 1.0) -> np.ndarray:
    return x @ np.linalg.solve(w.T @ w + lam * np.eye(w.shape[1]), w.T @ y)


def _with_bias(a: np.ndarray) -> np.ndarray:
    return np.hstack([a, np.ones((len(a), 1))])


def other_predictors(emb_w: np.ndarray, y_w: np.ndarray, emb_e: np.ndarray) -> dict:
    """Quality predictions on the evaluation half from richer or nonlinear models (see above)."""
    out = {}
    mu = emb_w.mean(axis=0)
    _, sv, vt = np.linalg.svd(emb_w - mu, full_matrices=False)
    for k in (10, 50, 100):
        proj = lambda a, k=k: _with_bias((a - mu) @ vt[:k].T / (sv[:k] / np.sqrt(len(a))))  # noqa: E731
        out[f"ridge, {k} PCA comps"] = _ridge(proj(emb_w), y_w, proj(emb_e))
    out["ridge, raw 384-d (lam 10)"] = _ridge(_with_bias(emb_w), y_w, _with_bias(emb_e), 10.0)
    sims = emb_e @ emb_w.T
    for k in (30, 100):
        idx = np.argsort(-sims, axis=1)[:, :k]
        wts = np.exp(10.0 * np.take_along_axis(sims, idx, axis=1))
        wts /= wts.sum(axis=1, keepdims=True)
        out[f"kNN-{k}"] = np.einsum("nk,nkm->nm", wts, y_w[idx])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--predictors", action="store_true", help="also the other quality models")
    args = ap.parse_args()
    pairs, models = halves(args.split)
    data = load_reward_file(DATA / "val.jsonl")
    emb = cached_encode(data.prompts, LazyMiniLM("torch")) if args.predictors else None
    first = np.array([in_first_half(p, args.split) for p in data.prompts])
    sources = np.array([s.split("/")[0] for s in data.sources])
    src = {"AB": (sources[first], sources[~first]), "BA": (sources[~first], sources[first])}
    cut_col = list(models).index(CUT_MODEL)
    for half, (warm, ev) in pairs.items():
        X, W = ev.contexts, warm.contexts
        theta = np.linalg.solve(W.T @ W + np.eye(W.shape[1]), W.T @ warm.rewards)
        ridge, R = X @ theta, ev.rewards
        ceilings = paper_ceilings(warm)
        cut = ev.costs.copy()
        cut[:, cut_col] *= CUT
        print(f"\n[{half}] evaluation half: {len(R)} prompts")
        w_rows = first if half == "AB" else ~first
        others = {} if emb is None else other_predictors(emb[w_rows], warm.rewards, emb[~w_rows])
        for label, costs, budget in (
            ("price cut P2, tight", cut, ceilings[2]),
            ("price cut P2, moderate", cut, ceilings[3]),
            ("stationary, tight", ev.costs, ceilings[2]),
            ("stationary, loosest", ev.costs, ceilings[6]),
        ):
            lin = best_within(ridge, R, costs, budget)
            orc = best_within(R, R, costs, budget)
            print(
                f"  {label} (B={budget:.3g}): context-free {context_free(R, costs, budget):.4f} | "
                f"full-information ridge {lin[0]:.4f} (spend {lin[1]:.3f}) | oracle "
                f"{orc[0]:.4f} | dearest-model spend {costs.max(axis=1).mean() / budget:.3f}"
            )
            for name, q in others.items():
                print(f"    full-information {name}: {best_within(q, R, costs, budget)[0]:.4f}")
        warm_src, ev_src = src[half]
        picked = 0.0
        for s in np.unique(ev_src):
            col = int(np.argmax(warm.rewards[warm_src == s].mean(axis=0)))
            picked += R[ev_src == s, col].sum()
        print(
            f"  loosest: best single model {R.mean(axis=0).max():.4f}, per-benchmark pick "
            f"{picked / len(R):.4f} ({picked / len(R) - R.mean(axis=0).max():+.4f})"
        )


if __name__ == "__main__":
    main()
