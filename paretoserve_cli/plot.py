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
    steps = np.arange(1, len(log.models) + 1)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax = axes[0]
    ax.plot(steps, log.spend_ema, label="spend EMA (pacer)")
    ax.plot(steps, trailing_mean(np.array(log.costs)), alpha=0.5, label="trailing-100 cost")
    ax.plot(steps, log.budgets, "k--", label="budget")
    ax.set_yscale("log")
    ax.set_ylabel("US$ / request")
    ax.legend(loc="upper right")
    ax = axes[1]
    for m in sorted(set(log.models)):
        ax.plot(
            steps, trailing_mean(np.array([x == m for x in log.models])), label=m.split("/")[-1]
        )
    ax.set_ylabel("trailing-100 share")
    ax.legend(loc="upper right")
    ax = axes[2]
    ax.plot(steps, trailing_mean(np.array(log.rewards)), label="trailing-100 reward")
    ax.set_ylabel("reward")
    ax.set_xlabel("evaluation request")
    for a in axes:
        for name, start, _ in run.phases[1:]:
            a.axvline(start, color="grey", lw=0.8)
            a.text(start, a.get_ylim()[1], f" {name}", va="top", fontsize=8)
    fig.suptitle(title or f"budget {budget:.3g} $/request")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
