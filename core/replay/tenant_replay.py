"""The replay with tenants: one stream, each request sent by one tenant, one shared bandit.

A tenants file (JSON) lists the tenants (core.method.tenants.TenantSpec fields plus `share`,
the part of the traffic each sends) and, optionally, a `traffic` schedule: segments of the
period, each with its rate (`{"until_h": 12, "per_hour": 100}`). Requests are spread evenly
over each segment from `start` (UTC; default the start of a day), the seed's evaluation
order cycled as often as the schedule needs; without a schedule the evaluation stream is
sent once, a request a second. The warm-up stream, when given, is sent first (an hour before
`start`, same tenant draws), so each tenant's pacer starts as warm as the single-tenant
replay's. Each tenant is judged against its own target: mean cost / `usd_per_request`, or
spend / `budget_usd` at the period's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.method.config import PacerConfig, RouterConfig
from core.method.priors import Priors
from core.method.registry import ModelSpec
from core.method.router import Router
from core.method.tenants import TenantSpec
from core.replay import metrics
from core.replay.protocol import ReplaySpec, Scenario, stream_orders
from core.replay.stream import Outcomes

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC


class ReplayTenant(TenantSpec):
    share: float = Field(1.0, gt=0.0, description="relative part of the traffic it sends")


class TrafficSegment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    until_h: float = Field(..., gt=0.0, description="end of the segment, hours from start")
    per_hour: float = Field(..., gt=0.0, description="requests per hour in the segment")


class TenantPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tenants: list[ReplayTenant] = Field(..., min_length=1)
    traffic: list[TrafficSegment] | None = None
    start: float = Field(DEFAULT_START, description="unix seconds of the first request")

    @model_validator(mode="after")
    def _ordered(self) -> TenantPlan:
        ids = [t.id for t in self.tenants]
        if len(ids) != len(set(ids)):
            raise ValueError("tenants: ids must be unique")
        if self.traffic:
            ends = [s.until_h for s in self.traffic]
            if ends != sorted(ends) or len(set(ends)) != len(ends):
                raise ValueError("traffic: until_h must increase")
        return self

    def times(self, n_data: int) -> np.ndarray:
        """The send time of each request (unix seconds)."""
        if not self.traffic:
            return self.start + np.arange(n_data, dtype=float)
        out, begin = [], 0.0
        for seg in self.traffic:
            n = int(round((seg.until_h - begin) * seg.per_hour))
            out.append(begin * 3600.0 + np.arange(n) * 3600.0 / seg.per_hour)
            begin = seg.until_h
        return self.start + np.concatenate(out)


@dataclass
class TenantLog:
    models: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)


def _send(
    router: Router,
    block: Outcomes,
    rows: np.ndarray,
    who: np.ndarray,
    times: np.ndarray,
    ids: list[str],
    logs: dict[str, TenantLog] | None,
) -> None:
    col = {m: i for i, m in enumerate(block.models)}
    for i, k, now in zip(rows, who, times, strict=True):
        tenant = ids[k]
        d = router.route(block.contexts[i], tenant=tenant, now=float(now))
        j = col[d.model]
        cost, reward = float(block.costs[i, j]), float(block.rewards[i, j])
        router.charge(d.request_id, cost, now=float(now))
        router.feedback(d.request_id, reward)
        if logs is not None:
            log = logs[tenant]
            log.models.append(d.model)
            log.rewards.append(reward)
            log.costs.append(cost)
            log.times.append(float(now))
            log.targets.append(router.tenant_report(tenant, float(now))["target_usd_per_request"])


def run_tenant_seed(
    spec: ReplaySpec,
    plan: TenantPlan,
    specs: dict[str, ModelSpec],
    data: Outcomes,
    warmup: Outcomes | None,
    priors: Priors | None,
    seed: int,
) -> dict[str, TenantLog]:
    n_warm = len(warmup.contexts) if warmup is not None else None
    warm_order, phases = stream_orders(n_warm, len(data.contexts), Scenario.STATIONARY, seed)
    rows = phases[0][1]
    config = RouterConfig(
        bandit=spec.bandit,
        pacer=PacerConfig(budget_usd=spec.budget_usd, mode=spec.pacer_mode, **spec.pacer),
        forced_exploration_pulls=spec.forced_exploration_pulls,
        seed=seed,
    )
    router = Router(config, [specs[m] for m in data.models])
    if priors is not None:
        router.load_priors(priors)
    ids = [t.id for t in plan.tenants]
    for t in plan.tenants:
        router.add_tenant(TenantSpec(**t.model_dump(exclude={"share"})), plan.start - 3600.0)
    shares = np.array([t.share for t in plan.tenants])
    rng = np.random.default_rng([seed, 7])  # tenant draws: their own stream
    if warmup is not None:
        who = rng.choice(len(ids), size=len(warm_order), p=shares / shares.sum())
        warm_times = plan.start - 3600.0 + np.linspace(0.0, 3599.0, len(warm_order))
        _send(router, warmup, warm_order, who, warm_times, ids, None)
    times = plan.times(len(rows))
    order = np.resize(rows, len(times))  # the evaluation order, cycled as the schedule needs
    who = rng.choice(len(ids), size=len(order), p=shares / shares.sum())
    logs = {t: TenantLog() for t in ids}
    _send(router, data, order, who, times, ids, logs)
    return logs


def tenant_figures(plan: TenantPlan, logs: dict[str, TenantLog]) -> dict[str, dict]:
    out = {}
    for t in plan.tenants:
        log = logs[t.id]
        target = t.usd_per_request if t.usd_per_request is not None else np.mean(log.targets)
        figs = metrics.phase_figures(log.models, log.rewards, log.costs, float(target))
        if t.budget_usd is not None:
            spent = float(np.sum(log.costs))
            figs["period_spend_usd"] = spent
            figs["period_compliance"] = spent / t.budget_usd
        out[t.id] = figs
    return out


def run_tenant_replay(
    spec: ReplaySpec,
    plan: TenantPlan,
    specs: dict[str, ModelSpec],
    data: Outcomes,
    warmup: Outcomes | None,
    priors: Priors | None,
) -> tuple[dict, list[dict[str, TenantLog]]]:
    runs = [
        run_tenant_seed(spec, plan, specs, data, warmup, priors, spec.seed_offset + s)
        for s in range(spec.seeds)
    ]
    per_seed = [tenant_figures(plan, logs) for logs in runs]
    tenants = {}
    for t in plan.tenants:
        figs = [s[t.id] for s in per_seed]
        keys = ("mean_reward", "mean_cost", "compliance", "period_spend_usd", "period_compliance")
        agg = {k: float(np.mean([f[k] for f in figs])) for k in keys if k in figs[0]}
        agg["compliance_max"] = float(np.max([f["compliance"] for f in figs]))
        agg["requests"] = int(np.mean([f["steps"] for f in figs]))
        models = sorted({m for f in figs for m in f["mix"]})
        agg["mix"] = {m: float(np.mean([f["mix"].get(m, 0.0) for f in figs])) for m in models}
        tenants[t.id] = {**t.model_dump(mode="json"), "summary": agg}
    report = {
        "seeds": spec.seeds,
        "seed_offset": spec.seed_offset,
        "plan": plan.model_dump(mode="json"),
        "tenants": tenants,
        "per_seed": per_seed,
    }
    return report, runs
