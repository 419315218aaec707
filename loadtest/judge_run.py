"""The default app learning from its Judge alone: chats with no client feedback.

`paretoserve loadtest judge` starts the embedded default (serve_config.yaml's args: simulated
provider, the committed priors, the Judge as configured) with the simulated provider replaying
a reward file, sends N chats (`model: "auto"`) drawn from that file's prompts, posts no
feedback, waits until the Judge has finished, and reports what the Judge did and what the router
learnt: rewards applied (by the Judge, each request once: the router's feedback count moves by
exactly the Judge's applied count), judge spend against its daily cap, and each model's
estimated quality and update count before and after.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.replay.prompts import load_prompts
from loadtest.live_replay import LiveDriver, percentiles_ms
from loadtest.server import base_config, serve_app


def app_args(workdir: Path, data: Path, sample_rate: float, grace_s: float, time_scale: float):
    args = base_config()["applications"][0]["args"]
    args["state_path"] = str(workdir / "state" / "paretoserve.db")
    sim = args["providers"]["simulated"]["options"]
    sim.update(replay_file=str(data.resolve()), time_scale=time_scale)
    args["judge"] = {
        **args.get("judge", {}),
        "enabled": True,
        "sample_rate": sample_rate,
        "client_grace_s": grace_s,
    }
    return args


PROBES = 20  # prompts whose estimated quality per model is read before and after


async def _models(driver: LiveDriver, probes: list[str]) -> tuple[dict[str, Any], float]:
    """Per model: updates and pulls so far, and the mean estimated quality over the probes
    (`/admin/explain`, the router's own estimate for each prompt); and the routing spend."""
    state = await driver.admin("GET", "/admin/state")
    explained = [await driver.admin("POST", "/admin/explain", {"prompt": p}) for p in probes]
    models = {
        m: {
            "updates": v["updates"],
            "pulls": v["pulls"],
            "probe_quality": float(np.mean([e[m]["quality"] for e in explained])),
        }
        for m, v in state["models"].items()
    }
    return models, state["total_spend_usd"]


async def _drive(base_url: str, admin_key: str, prompts: list[str], n: int, concurrency: int):
    driver = LiveDriver(base_url, admin_key, concurrency=concurrency, post_feedback=False)
    probes = prompts[-PROBES:]
    try:
        before, spend_before = await _models(driver, probes)
        start = time.perf_counter()
        answers = await driver.run_block([prompts[i % len(prompts)] for i in range(n)], "judge")
        elapsed = time.perf_counter() - start
        judge = await driver.drain_judge()
        after, spend_after = await _models(driver, probes)
    finally:
        await driver.aclose()
    ok = [a for a in answers if a.status == 200]
    routed_updates = sum(m["updates"] for m in after.values()) - sum(
        m["updates"] for m in before.values()
    )
    return {
        "requests": {"sent": len(answers), "answered": len(ok), "seconds": elapsed},
        "latency_ms": percentiles_ms([a.latency_s for a in ok]),
        "client_feedback_posted": driver.feedback.sent,
        "judge": judge,
        "router_updates_added": routed_updates,
        "applied_once": routed_updates == judge["applied"],
        "spend_within_cap": judge["spend_usd"] <= judge["daily_cap_usd"],
        "models_before": before,
        "models_after": after,
        "routing_spend_usd": spend_after - spend_before,
        "mean_recorded_reward": float(
            np.mean([a.reward for a in ok if a.reward is not None] or [np.nan])
        ),
    }


def run(
    data: Path,
    workdir: Path,
    *,
    requests: int = 2000,
    sample_rate: float = 0.2,
    grace_s: float = 30.0,
    time_scale: float = 0.1,
    concurrency: int = 16,
    seed: int = 0,
) -> dict:
    prompts = load_prompts(data)
    order = np.random.default_rng(seed).permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    args = app_args(workdir, data, sample_rate, grace_s, time_scale)
    with serve_app(args, workdir) as app:
        report = asyncio.run(_drive(app.base_url, app.admin_key, prompts, requests, concurrency))
    report["settings"] = {
        "data": str(data),
        "requests": requests,
        "sample_rate": sample_rate,
        "client_grace_s": grace_s,
        "sim_time_scale": time_scale,
        "concurrency": concurrency,
        "seed": seed,
    }
    return report
