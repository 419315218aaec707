"""`paretoserve bench`: time the in-process decision and update, optionally against paretobandit.

Both routers see the same seeded contexts, rewards and costs. The timed loop runs in blocks that
alternate which router goes first, so that machine noise (a shared, busy CPU) falls on both
alike. Each call is timed on its own with time.perf_counter_ns after an untimed warm-up; the
garbage collector is paused inside a block and run between blocks (as timeit does).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, percentile
from core.method.config import BanditConfig, PacerConfig, RouterConfig
from core.method.registry import ModelSpec
from core.method.router import Router

BASELINE_DIST = "paretobandit"
BLOCK = 100  # iterations per block before the other router takes its turn
INPUT_TOKENS = 600
OUTPUT_TOKENS = 300
METHOD = (
    f"each call timed alone (perf_counter_ns) after an untimed warm-up; blocks of {BLOCK} "
    "requests alternate which router goes first; gc paused inside blocks; ours: route = "
    "Router.route + charge, feedback = Router.feedback; paretobandit: route = BanditRouter.route, "
    "feedback = process_feedback (its pacer observes the cost there)"
)


def _positive_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="time the in-process route and feedback calls",
        description=(
            "Time Router.route (+ charge) and Router.feedback on random contexts, and by "
            "default the paretobandit package on the same contexts, in alternating blocks."
        ),
    )
    parser.add_argument("--arms", type=_positive_int(1), default=3, help="models K (default 3)")
    parser.add_argument(
        "--dim", type=_positive_int(2), default=26, help="context dimension d, bias included"
    )
    parser.add_argument(
        "--iters", type=_positive_int(1), default=5000, help="timed calls of each kind"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of contexts, rewards, costs")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time paretobandit (the bench extra: pip install -e '.[bench]')",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write JSON here")
    parser.set_defaults(func=run)
    return parser


# ---- workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    contexts: np.ndarray  # (n, d): unit-norm features with a bias 1.0 last
    rewards: list[list[float]]  # (n, K): the reward request i gets from arm k
    input_per_m: list[float]  # per arm, US$ per million tokens
    output_per_m: list[float]
    budget_usd: float


def make_workload(arms: int, dim: int, n: int, seed: int) -> Workload:
    """Seeded contexts, and rewards where dearer arms are better on average but each arm is best
    somewhere, with a budget in the middle of the price range so the pacer has work to do."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim - 1))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    contexts = np.ascontiguousarray(np.hstack([z, np.ones((n, 1))]))
    skill = rng.standard_normal((arms, dim - 1))
    skill /= np.linalg.norm(skill, axis=1, keepdims=True)
    base = np.linspace(0.45, 0.75, arms)
    mean = base[None, :] + 0.2 * (z @ skill.T) + rng.normal(0.0, 0.1, (n, arms))
    rewards = np.clip(mean, 0.0, 1.0).tolist()
    # Blended prices spread log-evenly over 0.1 .. 20 $/M; output 4x input.
    blended = np.geomspace(0.1, 20.0, arms) if arms > 1 else np.array([1.0])
    input_per_m = [float(p) * 2.0 / 5.0 for p in blended]
    output_per_m = [float(p) * 8.0 / 5.0 for p in blended]
    mid_in = math.sqrt(input_per_m[0] * input_per_m[-1])
    mid_out = math.sqrt(output_per_m[0] * output_per_m[-1])
    budget = (INPUT_TOKENS * mid_in + OUTPUT_TOKENS * mid_out) / 1e6
    return Workload(contexts, rewards, input_per_m, output_per_m, budget)


def _cost_usd(w: Workload, arm: int) -> float:
    return (INPUT_TOKENS * w.input_per_m[arm] + OUTPUT_TOKENS * w.output_per_m[arm]) / 1e6


# ---- the two contestants ----------------------------------------------------------------------


class _Ours:
    label = "paretoserve"

    def __init__(self, w: Workload, dim: int, seed: int) -> None:
        cfg = RouterConfig(
            bandit=BanditConfig(dim=dim), pacer=PacerConfig(budget_usd=w.budget_usd), seed=seed
        )
        specs = [
            ModelSpec(id=f"model-{i}", input_per_m=w.input_per_m[i], output_per_m=w.output_per_m[i])
            for i in range(len(w.input_per_m))
        ]
        # Added one by one (not passed to the constructor) so that each new arm gets the
        # router's forced exploration pulls, as a model added at run time would.
        self.router = Router(cfg)
        for spec in specs:
            self.router.add_model(spec)
        self.forced = cfg.forced_exploration_pulls
        self.cost = {f"model-{i}": _cost_usd(w, i) for i in range(len(w.input_per_m))}
        self.arm = {f"model-{i}": i for i in range(len(w.input_per_m))}
        self.counts = [0] * len(self.arm)

    def run(self, w: Workload, lo: int, hi: int, route_ns: list[int], fb_ns: list[int]) -> None:
        router, cost, arm, counts = self.router, self.cost, self.arm, self.counts
        clock = time.perf_counter_ns
        contexts, rewards = w.contexts, w.rewards
        for i in range(lo, hi):
            x = contexts[i]
            t0 = clock()
            decision = router.route(x)
            router.charge(decision.request_id, cost[decision.model])
            t1 = clock()
            k = arm[decision.model]
            router.feedback(decision.request_id, rewards[i][k])
            t2 = clock()
            counts[k] += 1
            route_ns.append(t1 - t0)
            fb_ns.append(t2 - t1)


class _Theirs:
    label = BASELINE_DIST

    def __init__(self, w: Workload, dim: int, seed: int) -> None:
        from pareto_bandit import BanditRouter, FeatureService
        from pareto_bandit.budget_pacer import BudgetPacer

        registry = {
            f"model-{i}": {"input_cost_per_m": w.input_per_m[i], "output_cost_per_m": o}
            for i, o in enumerate(w.output_per_m)
        }
        # Package defaults throughout (alpha, gamma, lambda_c, pacer); pre-computed vectors, so
        # no encoder or PCA is loaded, and the default in-memory context store (no disk I/O).
        self.router = BanditRouter(
            registry,
            feature_service=FeatureService.for_precomputed(dim),
            bandit_seed=seed,
            budget_pacer=BudgetPacer(w.budget_usd),
        )
        self.arm = {m: i for i, m in enumerate(registry)}
        self.counts = [0] * len(self.arm)

    def explore(self, w: Workload, pulls: int) -> None:
        """Cold arms at theta = 0 never win against a learnt one at alpha = 0.01, and the package
        has no forced exploration: give each arm `pulls` direct updates, as ours gets at first."""
        for j in range(pulls * len(self.arm)):
            k = j % len(self.arm)
            self.router.update(f"model-{k}", w.contexts[j], w.rewards[j][k])

    def run(self, w: Workload, lo: int, hi: int, route_ns: list[int], fb_ns: list[int]) -> None:
        router, arm, counts, clock = self.router, self.arm, self.counts, time.perf_counter_ns
        contexts, rewards = w.contexts, w.rewards
        for i in range(lo, hi):
            x = contexts[i]
            t0 = clock()
            model, log = router.route(x, input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
            t1 = clock()
            k = arm[model]
            router.process_feedback(log.request_id, rewards[i][k])
            t2 = clock()
            counts[k] += 1
            route_ns.append(t1 - t0)
            fb_ns.append(t2 - t1)


def baseline_version() -> str | None:
    """The installed paretobandit version, or None when the package is absent."""
    try:
        version = metadata.version(BASELINE_DIST)
    except metadata.PackageNotFoundError:
        return None
    try:
        import pareto_bandit  # noqa: F401
    except ImportError:
        return None
    return version


# ---- measurement ------------------------------------------------------------------------------


def _percentiles(ns: list[int]) -> dict[str, float]:
    us = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"p50": round(percentile(us, 50), 3), "p99": round(percentile(us, 99), 3)}


def warmup_iters(iters: int, arms: int, forced: int) -> int:
    """Untimed requests first: forced exploration of every arm, then a tenth of the run."""
    return forced * arms + min(1000, max(50, iters // 10))


def measure(
    arms: int, dim: int, iters: int, seed: int = 0, baseline: bool = True
) -> dict[str, Any]:
    """Run the benchmark and return the JSON-ready result."""
    warm = warmup_iters(iters, arms, RouterConfig.model_fields["forced_exploration_pulls"].default)
    w = make_workload(arms, dim, warm + iters, seed)
    version = baseline_version() if baseline else None
    contestants: list[Any] = [_Ours(w, dim, seed)]
    if version is not None:
        contestants.append(_Theirs(w, dim, seed))
    timings = {c.label: ([], []) for c in contestants}

    for c in contestants:  # untimed warm-up on the first `warm` contexts
        if isinstance(c, _Theirs):
            c.explore(w, contestants[0].forced)
        c.run(w, 0, warm, [], [])
        c.counts = [0] * len(c.counts)  # the mix reported is that of the timed requests
    gc_was_enabled = gc.isenabled()
    try:
        for block, lo in enumerate(range(warm, warm + iters, BLOCK)):
            hi = min(lo + BLOCK, warm + iters)
            for c in contestants if block % 2 == 0 else contestants[::-1]:
                gc.collect()
                gc.disable()
                c.run(w, lo, hi, *timings[c.label])
                if gc_was_enabled:
                    gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()

    ours_route, ours_fb = timings[_Ours.label]

    def mix(c: Any) -> list[float]:
        total = sum(c.counts) or 1
        return [round(n / total, 4) for n in c.counts]

    result: dict[str, Any] = {
        "arms": arms,
        "dim": dim,
        "iters": iters,
        "warmup": warm,
        "seed": seed,
        "route_us": _percentiles(ours_route),
        "feedback_us": _percentiles(ours_fb),
        "mix": mix(contestants[0]),
        "machine": machine_info("numpy"),
        "method": METHOD,
        "baseline": None,
        "ratio": None,
    }
    if version is not None:
        theirs_route, theirs_fb = timings[_Theirs.label]
        base = {
            "package": f"{BASELINE_DIST} {version}",
            "route_us": _percentiles(theirs_route),
            "feedback_us": _percentiles(theirs_fb),
            "mix": mix(contestants[1]),
        }
        result["baseline"] = base
        ours_total = result["route_us"]["p50"] + result["feedback_us"]["p50"]
        theirs_total = base["route_us"]["p50"] + base["feedback_us"]["p50"]
        result["ratio"] = round(ours_total / theirs_total, 4) if theirs_total > 0 else None
    elif baseline:
        result["baseline_note"] = (
            f"{BASELINE_DIST} is not installed; baseline skipped "
            "(it is the bench extra: pip install -e '.[bench]')"
        )
    return result


# ---- output -----------------------------------------------------------------------------------


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"paretoserve bench: K={result['arms']} d={result['dim']} iters={result['iters']} "
        f"(warm-up {result['warmup']}, seed {result['seed']})",
        f"{m['platform']}; Python {m['python']}; numpy {m['numpy']}; {m['cpu_count']} CPUs",
        "",
        f"{'microseconds':<22}{'route p50':>11}{'route p99':>11}"
        f"{'fb p50':>10}{'fb p99':>10}{'total p50':>11}",
    ]

    def row(name: str, r: dict[str, float], f: dict[str, float]) -> str:
        return (
            f"{name:<22}{r['p50']:>11.2f}{r['p99']:>11.2f}"
            f"{f['p50']:>10.2f}{f['p99']:>10.2f}{r['p50'] + f['p50']:>11.2f}"
        )

    lines.append(row("paretoserve", result["route_us"], result["feedback_us"]))
    base = result.get("baseline")
    if base is not None:
        lines.append(row(base["package"], base["route_us"], base["feedback_us"]))
        if result["ratio"] is not None:
            lines.append("")
            lines.append(f"ratio ours/theirs (route+feedback p50): {result['ratio']:.3f}x")
    elif "baseline_note" in result:
        lines.append("")
        lines.append(result["baseline_note"])
    lines.append("route = Router.route + charge; fb = Router.feedback (paretoserve)")
    if base is not None:
        lines.append("       BanditRouter.route; fb = process_feedback (paretobandit)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = measure(args.arms, args.dim, args.iters, seed=args.seed, baseline=args.baseline)
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
