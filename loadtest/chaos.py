"""Chaos run: steady traffic with delayed feedback while the Router replica is SIGKILLed every
K seconds and the simulated provider injects faults; then an audit of what was lost.

The audit compares what clients saw with the Router's own state (GET /admin/state) before and
after the run:
- feedback: every request id that got a 200 from /v1/feedback (applied, or duplicate after a
  retry) must be applied exactly once, so per model the bandit's `updates` must grow by
  exactly the number of such ids answered by that model. `lost` sums the shortfalls,
  `double_applied` the excesses. Feedback that failed in flight is retried at the end, as a
  client with retries would.
- spend: the Router's charge count must cover every answered chat (a chat is answered only
  after its charge is journalled); compliance = mean realised cost per answered chat / budget.
- memory: resident memory of each deployment's replicas at the start and the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass

from loadtest.live_replay import Answer, LiveDriver, percentiles_ms
from loadtest.server import ServedApp, replica_pids, replica_rss_mib


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float
    kill_every_s: float
    fault_rate: float  # share of provider attempts that fail (errors, 429s, timeouts)
    concurrency: int = 16
    feedback_delay_ms: float = 2000.0
    seed: int = 0


def fault_behaviour(rate: float) -> dict:
    """Half 5xx, a quarter 429 (Retry-After 1 s), a quarter timeouts; plus latency spikes."""
    return {
        "error_rate": rate / 2,
        "rate_limit_rate": rate / 4,
        "retry_after_s": 1.0,
        "timeout_rate": rate / 4,
        "timeout_s": 2.0,
        "latency_spike_rate": min(1.0, rate / 2),
        "latency_spike_s": 1.0,
    }


async def _kill_router_every(app: ServedApp, every_s: float, stop: asyncio.Event) -> list[float]:
    kills: list[float] = []
    start = time.monotonic()
    if every_s <= 0:  # a soak: no kills
        await stop.wait()
        return kills
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            break
        except TimeoutError:
            pass
        pids = (await asyncio.to_thread(replica_pids, app)).get("Router", [])
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        if pids:
            kills.append(round(time.monotonic() - start, 1))
    return kills


async def _sample_memory(app: ServedApp, every_s: float, stop: asyncio.Event) -> list[dict]:
    """Resident memory of each deployment every `every_s` seconds until `stop`."""
    samples: list[dict] = []
    start = time.monotonic()
    while True:
        rss = await asyncio.to_thread(replica_rss_mib, app)
        samples.append({"t_s": round(time.monotonic() - start, 1), "mib": rss})
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return samples
        except TimeoutError:
            pass


async def _state_when_up(driver: LiveDriver, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await driver.admin("GET", "/admin/state")
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(2.0)


def _audit(before: dict, after: dict, answers: list[Answer], driver: LiveDriver) -> dict:
    model_of = {a.request_id: a.model for a in answers if a.status == 200}
    acked = Counter(model_of[rid] for rid in driver.feedback.acked if rid in model_of)
    lost = double = 0
    for m, st in after["models"].items():
        grew = st["updates"] - before["models"].get(m, {}).get("updates", 0)
        lost += max(0, acked.get(m, 0) - grew)
        double += max(0, grew - acked.get(m, 0))
    return {"lost": lost, "double_applied": double}


async def run_chaos(app: ServedApp, prompts: list[str], cfg: ChaosConfig) -> dict:
    driver = LiveDriver(
        app.base_url,
        app.admin_key,
        concurrency=cfg.concurrency,
        feedback_delay_ms=(0.0, cfg.feedback_delay_ms),
        seed=cfg.seed,
    )
    try:
        before = await _state_when_up(driver)
        memory_start = replica_rss_mib(app)
        models = [m["id"] for m in await driver.admin("GET", "/admin/models")]
        if cfg.fault_rate > 0:
            for m in models:
                body = {"simulation": fault_behaviour(cfg.fault_rate)}
                await driver.admin("PATCH", f"/admin/models/{m}", body)
        stop = asyncio.Event()
        killer = asyncio.create_task(_kill_router_every(app, cfg.kill_every_s, stop))
        sampler = asyncio.create_task(_sample_memory(app, 60.0, stop))
        start = time.perf_counter()
        answers = await driver.run_for(prompts, cfg.seconds, "chaos")
        elapsed = time.perf_counter() - start
        stop.set()
        kills = await killer
        memory_timeline = await sampler
        await driver.drain_feedback()
        await _state_when_up(driver)  # the Router is back before the retries
        await driver.retry_failed_feedback()
        after = await _state_when_up(driver)
        memory_end = replica_rss_mib(app)
    finally:
        await driver.aclose()
    ok = [a for a in answers if a.status == 200]
    budget = after["budget_usd_per_request"]
    spend = sum(a.cost for a in ok)
    fb = driver.feedback
    return {
        "seconds": cfg.seconds,
        "kill_every_s": cfg.kill_every_s,
        "fault_rate": cfg.fault_rate,
        "concurrency": cfg.concurrency,
        "router_kills": kills,
        "requests": {
            "sent": len(answers),
            "answered": len(ok),
            "failed": len(answers) - len(ok),
            "answered_share": len(ok) / len(answers) if answers else None,
            "errors": dict(Counter(str(a.status) for a in answers if a.status != 200)),
            "answered_by": dict(Counter(a.model for a in ok)),
        },
        "feedback": {
            "sent": fb.sent,
            "acknowledged": len(fb.acked),
            "never_acknowledged": len(fb.failed),
            "statuses": dict(fb.statuses),
            **_audit(before, after, answers, driver),
        },
        "spend": {
            "answered_cost_usd": spend,
            "mean_cost_usd": spend / len(ok) if ok else None,
            "budget_usd": budget,
            "compliance": spend / len(ok) / budget if ok else None,
            "router_charges": after["charges"] - before["charges"],
            "router_spend_usd": after["total_spend_usd"] - before["total_spend_usd"],
        },
        "latency_ms": percentiles_ms([a.latency_s for a in ok]),
        "throughput_rps": len(ok) / elapsed if elapsed > 0 else None,
        "memory_mib": {"start": memory_start, "end": memory_end, "every_60s": memory_timeline},
    }
