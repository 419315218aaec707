"""The paper's replay protocol: warm up on one stream, evaluate on another, per seed, per scenario.

Scenarios (the evaluation stream is shuffled per seed and, for the phased ones, cut in three:
P1 = the first third, P2 = the next third, P3 = P1's prompts reshuffled):
- stationary: one phase over the whole evaluation stream.
- price-cut: in P2 one model's list prices and realised costs are multiplied by a factor.
- regression: in P2 one model's reward is a constant on every prompt.
- onboarding: the router starts with the warm-up stream's models; the data's extra model is
  added at the start of P2 (forced exploration included), optionally with scaled rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.method.config import BanditConfig, PacerConfig, PacerMode, RouterConfig
from core.method.priors import Priors
from core.method.registry import ModelSpec
from core.method.router import Router
from core.replay import metrics
from core.replay.stream import Outcomes, StreamLog, run_stream


class Scenario(str, Enum):
    STATIONARY = "stationary"
    PRICE_CUT = "price-cut"
    REGRESSION = "regression"
    ONBOARDING = "onboarding"


class ReplaySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scenario: Scenario = Scenario.STATIONARY
    budget_usd: float = Field(..., gt=0.0)
    seeds: int = Field(20, ge=1)
    seed_offset: int = 0
    bandit: BanditConfig = BanditConfig()
    pacer_mode: PacerMode = PacerMode.ADAPTIVE
    pacer: dict = Field(default_factory=dict, description="other PacerConfig fields")
    forced_exploration_pulls: int = Field(20, ge=0)
    price_cut_model: str = "google/gemini-2.5-pro"
    price_cut_factor: float = Field(0.1 / 5.625, gt=0.0)
    regression_model: str = "mistralai/mistral-large-2512"
    regression_reward: float = Field(0.75, ge=0.0, le=1.0)
    newcomer_reward_scale: float = Field(1.0, ge=0.0)


@dataclass
class Phase:
    name: str
    rows: np.ndarray
    block: Outcomes


@dataclass
class SeedRun:
    seed: int
    log: StreamLog  # the evaluation stream only
    phases: list[tuple[str, int, int]]  # name, start, end in the log
    newcomer: str | None


def _edited(
    block: Outcomes,
    model: str,
    *,
    cost_factor: float = 1.0,
    reward_value: float | None = None,
    reward_scale: float = 1.0,
) -> Outcomes:
    if model not in block.models:
        raise ValueError(f"model {model!r} is not in the data ({', '.join(block.models)})")
    j = block.column(model)
    costs, rewards = block.costs.copy(), block.rewards.copy()
    costs[:, j] *= cost_factor
    rewards[:, j] = reward_value if reward_value is not None else rewards[:, j] * reward_scale
    return Outcomes(block.contexts, np.clip(rewards, 0.0, 1.0), costs, block.models)


def phase_rows(scenario: Scenario, order: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    """(name, rows) of each phase of a shuffled evaluation stream (see the module docstring).
    Shared with the live replay, which must walk the same rows in the same order."""
    if scenario == Scenario.STATIONARY:
        return [("all", order)]
    third = len(order) // 3
    p1, p2 = order[:third], order[third : 2 * third]
    return [("P1", p1), ("P2", p2), ("P3", rng.permutation(p1))]


def stream_orders(
    n_warmup: int | None, n_data: int, scenario: Scenario, seed: int
) -> tuple[np.ndarray | None, list[tuple]]:
    """The warm-up order (None without a warm-up stream) and the evaluation phases of a seed."""
    rng = np.random.default_rng(seed)
    warm = rng.permutation(n_warmup) if n_warmup is not None else None
    order = rng.permutation(n_data)
    return warm, phase_rows(scenario, order, rng)


def start_models(scenario: Scenario, data_models, warmup_models) -> tuple[list[str], str | None]:
    """The models the router starts with, and the newcomer (onboarding only)."""
    start = list(warmup_models if warmup_models is not None else data_models)
    if scenario != Scenario.ONBOARDING:
        return [m for m in start if m in data_models], None
    extra = [m for m in data_models if m not in start]
    if not extra:
        raise ValueError("onboarding needs a model in --data that the warm-up stream lacks")
    return start, extra[0]


def _phases(spec: ReplaySpec, data: Outcomes, rows: list[tuple], newcomer: str | None):
    changed = data
    if spec.scenario == Scenario.PRICE_CUT:
        changed = _edited(data, spec.price_cut_model, cost_factor=spec.price_cut_factor)
    elif spec.scenario == Scenario.REGRESSION:
        changed = _edited(data, spec.regression_model, reward_value=spec.regression_reward)
    elif spec.scenario == Scenario.ONBOARDING and spec.newcomer_reward_scale != 1.0:
        data = changed = _edited(data, newcomer, reward_scale=spec.newcomer_reward_scale)
    if spec.scenario == Scenario.STATIONARY:
        return [Phase(name, r, data) for name, r in rows]
    later = changed if spec.scenario == Scenario.ONBOARDING else data
    return [Phase(name, r, b) for (name, r), b in zip(rows, (data, changed, later), strict=True)]


def _enter_phase(
    router: Router, spec: ReplaySpec, name: str, specs: dict[str, ModelSpec], newcomer: str | None
) -> None:
    """Operator actions at a phase boundary, as an admin would apply them."""
    if spec.scenario == Scenario.PRICE_CUT and name in ("P2", "P3"):
        base = specs[spec.price_cut_model]
        f = spec.price_cut_factor if name == "P2" else 1.0
        router.reprice(spec.price_cut_model, base.input_per_m * f, base.output_per_m * f)
    elif spec.scenario == Scenario.ONBOARDING and name == "P2" and newcomer:
        router.add_model(specs[newcomer], explore=True)


def run_seed(
    spec: ReplaySpec,
    specs: dict[str, ModelSpec],
    data: Outcomes,
    warmup: Outcomes | None,
    priors: Priors | None,
    seed: int,
) -> SeedRun:
    first_models, newcomer = start_models(
        spec.scenario, data.models, warmup.models if warmup is not None else None
    )
    warm_order, rows = stream_orders(
        len(warmup.contexts) if warmup is not None else None,
        len(data.contexts),
        spec.scenario,
        seed,
    )
    config = RouterConfig(
        bandit=spec.bandit,
        pacer=PacerConfig(budget_usd=spec.budget_usd, mode=spec.pacer_mode, **spec.pacer),
        forced_exploration_pulls=spec.forced_exploration_pulls,
        seed=seed,
    )
    router = Router(config, [specs[m] for m in first_models])
    if priors is not None:
        router.load_priors(priors)
    if warmup is not None:
        run_stream(router, warmup, warm_order)
    log, bounds = StreamLog(), []
    for phase in _phases(spec, data, rows, newcomer):
        _enter_phase(router, spec, phase.name, specs, newcomer)
        start = len(log.models)
        log.extend(run_stream(router, phase.block, phase.rows))
        bounds.append((phase.name, start, len(log.models)))
    return SeedRun(seed=seed, log=log, phases=bounds, newcomer=newcomer)


def _adaptation(spec: ReplaySpec, run: SeedRun) -> dict:
    log = run.log
    if len(run.phases) < 2:
        return {}
    p2_start, p2_end = run.phases[1][1], run.phases[1][2]
    if spec.scenario == Scenario.PRICE_CUT:
        r = log.rewards
        p1 = np.mean(r[run.phases[0][1] : run.phases[0][2]])
        return {"quality_lift": float(np.mean(r[p2_start:p2_end]) - p1)}
    if spec.scenario == Scenario.REGRESSION:
        return {
            "reroute_steps": metrics.reroute_steps(
                log.models, spec.regression_model, p2_start, p2_end
            )
        }
    steps = metrics.adoption_steps(log.models, log.forced, run.newcomer, p2_start)
    return {"adoption_steps": steps}


def seed_figures(spec: ReplaySpec, run: SeedRun) -> dict:
    log, budget = run.log, spec.budget_usd
    return {
        "seed": run.seed,
        "summary": metrics.phase_figures(log.models, log.rewards, log.costs, budget),
        "phases": [
            {
                "name": name,
                **metrics.phase_figures(log.models[a:b], log.rewards[a:b], log.costs[a:b], budget),
            }
            for name, a, b in run.phases
        ]
        if len(run.phases) > 1
        else [],
        **_adaptation(spec, run),
    }


def _average(figs: list[dict]) -> dict:
    """Mean over seeds of phase_figures dicts (mix shares averaged per model)."""
    models = sorted({m for f in figs for m in f["mix"]})
    out = {
        k: float(np.mean([f[k] for f in figs])) for k in ("mean_reward", "mean_cost", "compliance")
    }
    out["steps"] = int(np.mean([f["steps"] for f in figs]))
    out["mix"] = {m: float(np.mean([f["mix"].get(m, 0.0) for f in figs])) for m in models}
    out["std"] = {k: float(np.std([f[k] for f in figs])) for k in ("mean_reward", "compliance")}
    return out


def aggregate(spec: ReplaySpec, per_seed: list[dict], data: Outcomes) -> dict:
    summary = _average([s["summary"] for s in per_seed])
    phases = []
    if per_seed[0]["phases"]:
        for i, p in enumerate(per_seed[0]["phases"]):
            phases.append({"name": p["name"], **_average([s["phases"][i] for s in per_seed])})
    adapt = {}
    for key in ("quality_lift", "reroute_steps", "adoption_steps"):
        if key in per_seed[0]:
            stats = metrics.mean_over_seeds([s[key] for s in per_seed])
            adapt[key] = stats["mean"]
            adapt[f"{key}_stats"] = stats
    summary.update(adapt)
    points = {
        m: (float(data.costs[:, j].mean()), float(data.rewards[:, j].mean()))
        for j, m in enumerate(data.models)
    }
    return {
        "scenario": spec.scenario.value,
        "budget_usd": spec.budget_usd,
        "seeds": spec.seeds,
        "seed_offset": spec.seed_offset,
        "summary": summary,
        "phases": phases,
        **adapt,
        "baselines": {
            "models": {m: {"mean_cost": c, "mean_reward": r} for m, (c, r) in points.items()},
            "random_at_equal_cost": metrics.upper_hull_reward(points, summary["mean_cost"]),
        },
        "per_seed": per_seed,
    }


def paper_ceilings(warmup: Outcomes, n: int = 7) -> list[float]:
    """geomspace(cheapest arm's mean cost, dearest arm's mean cost, 7) over the warm-up file."""
    means = warmup.costs.mean(axis=0)
    return [float(v) for v in np.geomspace(means.min(), means.max(), n)]


def run_replay(
    spec: ReplaySpec,
    specs: dict[str, ModelSpec],
    data: Outcomes,
    warmup: Outcomes | None,
    priors: Priors | None,
) -> tuple[dict, list[SeedRun]]:
    runs = [
        run_seed(spec, specs, data, warmup, priors, spec.seed_offset + s) for s in range(spec.seeds)
    ]
    report = aggregate(spec, [seed_figures(spec, r) for r in runs], data)
    if warmup is not None:
        report["paper_ceilings"] = paper_ceilings(warmup)
    return report, runs
