"""Chaos run: steady traffic with delayed feedback while the Router replica is SIGKILLed every
K seconds and the simulated provider injects faults; then an audit of what was lost. With
`kill_node`, the whole node hosting the Router fails instead (its raylet is SIGKILLed, once:
on a multi-node cluster, loadtest/cluster.py), and the Router must come back on another node.

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
- recovery, per kill: seconds until the killed Router process was gone and until a new one
  answered /admin/state, and the Router's charges, spend and updates just before the kill
  and just after it came back (nothing acknowledged may be missing from the second).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass

from loadtest.live_replay import Answer, LiveDriver, percentiles_ms
from loadtest.server import ServedApp, raylet_of, replica_pids, replica_rss_mib


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float
    kill_every_s: float
    fault_rate: float  # share of provider attempts that fail (errors, 429s, timeouts)
    concurrency: int = 16
    feedback_delay_ms: float = 2000.0
    seed: int = 0
    kill_node: bool = False  # SIGKILL the raylet of the Router's node (once), not the replica
    # Half the clients send with the key of a tenant hard-capped at this many US$ a day, half
    # with an uncapped tenant's key (None: no tenants, the service's budget).
    tenant_cap_usd: float | None = None


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


def _ledger(state: dict | None) -> dict | None:
    """What the Router has been told for good: charges, spend and feedback updates."""
    if state is None:
        return None
    return {
        "charges": state["charges"],
        "total_spend_usd": state["total_spend_usd"],
        "updates": sum(m["updates"] for m in state["models"].values()),
    }


async def _recovery(
    app: ServedApp,
    driver: LiveDriver,
    kill: dict,
    before: dict | None,
    timeout_s: float,
) -> dict:
    """After the `kill` just made: when the old Router processes were gone, when a new one
    answered /admin/state, and the Router's ledger before and after."""
    old = set(kill["router_pids"])
    start = time.monotonic()
    gone_s = recovered_s = None
    after = None
    while time.monotonic() - start < timeout_s:
        now = set((await asyncio.to_thread(replica_pids, app)).get("Router", []))
        if gone_s is None and not now & old:
            gone_s = round(time.monotonic() - start, 2)
        if now - old:  # a new Router process: up once it answers
            with contextlib.suppress(Exception):
                after = await asyncio.wait_for(driver.admin("GET", "/admin/state"), timeout_s)
                recovered_s = round(time.monotonic() - start, 2)
                break
        await asyncio.sleep(0.25)
    return kill | {
        "old_router_gone_s": gone_s,
        "recovered_s": recovered_s,
        "before": _ledger(before),
        "after": _ledger(after),
    }


async def _kill_router_every(
    app: ServedApp,
    driver: LiveDriver,
    cfg: ChaosConfig,
    stop: asyncio.Event,
    recovery_timeout_s: float = 180.0,
) -> tuple[list[float], list[dict]]:
    kills: list[float] = []
    recoveries: list[asyncio.Task] = []
    start = time.monotonic()
    if cfg.kill_every_s <= 0:  # a soak: no kills
        await stop.wait()
        return kills, []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), cfg.kill_every_s)
            break
        except TimeoutError:
            pass
        router = (await asyncio.to_thread(replica_pids, app)).get("Router", [])
        before = None
        with contextlib.suppress(Exception):
            before = await asyncio.wait_for(driver.admin("GET", "/admin/state"), 10.0)
        if cfg.kill_node:
            targets = {r for r in map(raylet_of, router) if r is not None}
        else:
            targets = set(router)
        killed = []
        for pid in sorted(targets):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                continue
        if killed:
            at = round(time.monotonic() - start, 1)
            kills.append(at)
            kill = {"at_s": at, "killed": "node" if cfg.kill_node else "replica",
                    "pids": killed, "router_pids": router}  # fmt: skip
            recoveries.append(
                asyncio.create_task(_recovery(app, driver, kill, before, recovery_timeout_s))
            )
            if cfg.kill_node:  # a node does not come back; the next would be another node
                break
    if cfg.kill_node:
        await stop.wait()
    return kills, [await t for t in recoveries]


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


CAPPED, OPEN = "chaos-capped", "chaos-open"


async def _tenant_keys(driver: LiveDriver, cap_usd: float, budget: float) -> list[tuple[str, str]]:
    """The two chaos tenants (the capped one paced at the service's target, so that only its
    cap holds it back) and a key of each."""
    specs = [
        {"id": CAPPED, "budget_usd": cap_usd, "hard_cap": True, "pace_period": False},
        {"id": OPEN, "usd_per_request": budget},
    ]
    keys = []
    for spec in specs:
        await driver.admin("POST", "/admin/tenants", spec)
        key = await driver.admin("POST", f"/admin/tenants/{spec['id']}/keys")
        keys.append((spec["id"], key["api_key"]))
    return keys


def _refused_by_cap(a: Answer) -> bool:
    return a.status == 429 and "tenant_budget_exhausted" in (a.error or "")


async def _tenant_audit(driver: LiveDriver, answers: list[Answer], cap_usd: float) -> dict:
    """Per tenant: what its clients were answered and charged against the Router's account.
    No spend lost: the Router's spend covers every answer's cost header; none counted twice:
    its charges are at most the answered plus the failed (a chat may be charged and its
    answer lost on the way back); the cap: spend this period <= cap."""
    out = {}
    for tenant in (CAPPED, OPEN):
        mine = [a for a in answers if a.tenant == tenant]
        ok = [a for a in mine if a.status == 200]
        failed = [a for a in mine if a.status != 200 and not _refused_by_cap(a)]
        acct = await driver.admin("GET", f"/admin/tenants/{tenant}")
        answered_cost = sum(a.cost for a in ok)
        out[tenant] = {
            "sent": len(mine),
            "answered": len(ok),
            "refused_by_cap": sum(map(_refused_by_cap, mine)),
            "failed": len(failed),
            "answered_cost_usd": answered_cost,
            "router_spend_usd": acct["spend_usd"],
            "router_charges": acct["charges"],
            "spend_lost": acct["spend_usd"] < answered_cost - 1e-9,
            "charges_lost": acct["charges"] < len(ok),
            "charged_twice": acct["charges"] > len(ok) + len(failed),
            "reserved_usd_left": acct["reserved_usd"],
        }
    out[CAPPED]["cap_usd"] = cap_usd
    out[CAPPED]["within_cap"] = out[CAPPED]["router_spend_usd"] <= cap_usd + 1e-12
    return out


def _audit(before: dict, after: dict, answers: list[Answer], driver: LiveDriver) -> dict:
    model_of = {a.request_id: a.model for a in answers if a.status == 200}
    acked = Counter(model_of[rid] for rid in driver.feedback.acked if rid in model_of)
    lost = double = 0
    for m, st in after["models"].items():
        grew = st["updates"] - before["models"].get(m, {}).get("updates", 0)
        lost += max(0, acked.get(m, 0) - grew)
        double += max(0, grew - acked.get(m, 0))
    return {"lost": lost, "double_applied": double}


async def run_chaos(
    app: ServedApp, prompts: list[str], cfg: ChaosConfig, *, with_ids: bool = False
) -> dict:
    """The run's report; `with_ids` adds the request ids of the answered chats and of the
    acknowledged feedback (to check against the state store)."""
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
        keys = None
        if cfg.tenant_cap_usd is not None:
            keys = await _tenant_keys(driver, cfg.tenant_cap_usd, before["budget_usd_per_request"])
        stop = asyncio.Event()
        killer = asyncio.create_task(_kill_router_every(app, driver, cfg, stop))
        sampler = asyncio.create_task(_sample_memory(app, 60.0, stop))
        start = time.perf_counter()
        answers = await driver.run_for(prompts, cfg.seconds, "chaos", keys)
        elapsed = time.perf_counter() - start
        stop.set()
        kills, recoveries = await killer
        memory_timeline = await sampler
        await driver.drain_feedback()
        await _state_when_up(driver)  # the Router is back before the retries
        await driver.retry_failed_feedback()
        after = await _state_when_up(driver)
        tenants = None
        if cfg.tenant_cap_usd is not None:
            tenants = await _tenant_audit(driver, answers, cfg.tenant_cap_usd)
        memory_end = replica_rss_mib(app)
    finally:
        await driver.aclose()
    ok = [a for a in answers if a.status == 200]
    refused = sum(map(_refused_by_cap, answers))  # a capped tenant's 429s: the cap working
    counted = len(answers) - refused
    errors = [a for a in answers if a.status != 200 and not _refused_by_cap(a)]
    budget = after["budget_usd_per_request"]
    spend = sum(a.cost for a in ok)
    fb = driver.feedback
    report = {
        "seconds": cfg.seconds,
        "kill_every_s": cfg.kill_every_s,
        "fault_rate": cfg.fault_rate,
        "concurrency": cfg.concurrency,
        "router_kills": kills,
        "router_recoveries": recoveries,
        "requests": {
            "sent": len(answers),
            "answered": len(ok),
            "refused_by_cap": refused,
            "failed": len(answers) - len(ok) - refused,
            "answered_share": len(ok) / counted if counted else None,
            "errors": dict(Counter(str(a.status) for a in errors)),
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
    if tenants is not None:
        report["tenants"] = tenants
    if with_ids:
        report["ids"] = {"answered": [a.request_id for a in ok], "acknowledged": sorted(fb.acked)}
    return report
