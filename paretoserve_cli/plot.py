"""PNG of one replay: spend against budget, model mix and reward over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.replay.metrics import trailing_mean  # noqa: E402
from core.replay.protocol import SeedRun  # noqa: E402


def plot_run(run: SeedRun, budget: float, out: Path, title: str = "") -> None:
    log = run.log
    starts = [(name, start) for name, start, _ in run.phases[1:]]
    _draw(
        log.models,
        log.rewards,
        log.costs,
        log.spend_ema,
        log.budgets,
        starts,
        out,
        title or f"budget {budget:.3g} $/request",
        "spend EMA (pacer)",
    )


def plot_live(report: dict, out: Path) -> None:
    """The live replay's series; the spend EMA is the pacer's rule applied to observed costs."""
    s = report["series"]
    costs = np.asarray(s["costs"], dtype=float)
    ema, e = np.empty_like(costs), report["budget_usd"]
    for i, c in enumerate(costs):  # cbar <- 0.95 cbar + 0.05 c, cbar starting at the budget
        e = ema[i] = 0.95 * e + 0.05 * c
    rewards = [np.nan if r is None else r for r in s["rewards"]]
    starts = [(name, start) for name, start, _ in s["phases"][1:]]
    title = (
        f"live {report['scenario']}, budget {report['budget_usd']:.3g} $/request, "
        f"concurrency {report.get('concurrency')}"
    )
    _draw(
        s["models"],
        rewards,
        costs,
        ema,
        [report["budget_usd"]] * len(costs),
        starts,
        out,
        title,
        "spend EMA (observed costs)",
    )


def _draw(models, rewards, costs, spend_ema, budgets, phase_starts, out, title, ema_label):
    steps = np.arange(1, len(models) + 1)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax = axes[0]
    ax.plot(steps, spend_ema, label=ema_label)
    ax.plot(
        steps, trailing_mean(np.asarray(costs, dtype=float)), alpha=0.5, label="trailing-100 cost"
    )
    ax.plot(steps, budgets, "k--", label="budget")
    ax.set_yscale("log")
    ax.set_ylabel("US$ / request")
    ax.legend(loc="upper right")
    ax = axes[1]
    for m in sorted(set(models)):
        ax.plot(steps, trailing_mean(np.array([x == m for x in models])), label=m.split("/")[-1])
    ax.set_ylabel("trailing-100 share")
    ax.legend(loc="upper right")
    ax = axes[2]
    r = np.asarray(rewards, dtype=float)
    ax.plot(
        steps,
        trailing_mean(np.nan_to_num(r, nan=float(np.nanmean(r)))),
        label="trailing-100 reward",
    )
    ax.set_ylabel("reward")
    ax.set_xlabel("evaluation request")
    for a in axes:
        for name, start in phase_starts:
            a.axvline(start, color="grey", lw=0.8)
            a.text(start, a.get_ylim()[1], f" {name}", va="top", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_tenants(plan, logs: dict, out: Path) -> None:
    """One tenants replay seed: per tenant with a period budget, cumulative spend against the
    budget over the period, the target per request, and the request rate."""
    budgeted = [t for t in plan.tenants if t.budget_usd is not None]
    if not budgeted:
        budgeted = list(plan.tenants)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    start = plan.start
    for t in budgeted:
        log = logs[t.id]
        hours = (np.asarray(log.times) - start) / 3600.0
        spent = np.cumsum(log.costs)
        axes[0].plot(hours, spent, label=f"{t.id}: spend")
        if t.budget_usd is not None:
            axes[0].axhline(t.budget_usd, ls="--", color="k", lw=0.8, label=f"{t.id}: budget")
        axes[1].plot(hours, log.targets, label=f"{t.id}: target $/request")
        per_hour = np.histogram(hours, bins=np.arange(0, np.ceil(hours.max()) + 1))[0]
        axes[2].step(np.arange(len(per_hour)) + 1, per_hour, label=f"{t.id}: requests/hour")
    axes[0].set_ylabel("cumulative spend, US$")
    axes[1].set_ylabel("target, US$/request")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("requests/hour")
    axes[2].set_xlabel("hours since the period started")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("period pacing: spend against a daily budget, traffic rate changing mid-period")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
