"""The paper's replay through the live HTTP service: concurrent requests, delayed feedback.

The same rows in the same order as the offline replay (`core.replay.protocol.stream_orders`)
are sent as chat requests (`model: "auto"`) by `concurrency` workers. The simulated provider,
in replay mode over the same reward files, answers each recorded prompt with usage that makes
the realised cost the recorded one, and returns the recorded reward in
`paretoserve.recorded_reward`; the driver, acting as the judge, posts that reward to
/v1/feedback after a random delay (or, with `post_feedback=False`, posts nothing and leaves the
learning to the service's own Judge). Scenario changes are made through the admin API at phase
boundaries, after the previous phase's requests have been answered (their feedback may still
be in flight, as in production).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from core.method.registry import ModelSpec
from core.replay import metrics
from core.replay.protocol import ReplaySpec, Scenario


@dataclass
class Answer:
    """One chat request as the client saw it."""

    phase: str
    status: int  # HTTP status; 0 = no response (connection error or timeout)
    latency_s: float
    request_id: str | None = None
    model: str | None = None
    cost: float = 0.0
    reward: float | None = None
    forced: bool = False
    dual: float = 0.0
    error: str | None = None
    tenant: str | None = None  # whose key sent it (LiveDriver.run_for's `keys`)


@dataclass
class FeedbackTally:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)  # "applied" / "duplicate" / HTTP status
    latencies_s: list[float] = field(default_factory=list)
    no_reward: int = 0  # answers without a recorded reward: nothing to post
    acked: dict[str, str] = field(default_factory=dict)  # request id -> "applied"/"duplicate"
    failed: dict[str, float] = field(default_factory=dict)  # request id -> reward, to retry


def _error_text(r: httpx.Response) -> str:
    """An error answer as `code: message` (the code first: the message may be long)."""
    try:
        err = r.json()["error"]
        return f"{err.get('code')}: {str(err.get('message'))[:300]}"
    except (ValueError, KeyError, TypeError):
        return r.text[:300]


class LiveDriver:
    """Sends chat requests and delayed feedback to one service; keeps what it saw."""

    def __init__(
        self,
        base_url: str,
        admin_key: str | None,
        *,
        concurrency: int = 16,
        feedback_delay_ms: tuple[float, float] = (0.0, 2000.0),
        seed: int = 0,
        timeout_s: float = 300.0,
        post_feedback: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.concurrency = concurrency
        self.delay_ms = feedback_delay_ms
        self.post_feedback = post_feedback
        self.rng = np.random.default_rng(seed)
        limits = httpx.Limits(max_connections=concurrency + 64, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, limits=limits)
        self.feedback = FeedbackTally()
        self._feedback_tasks: set[asyncio.Task] = set()
        self.admin_log: list[dict] = []  # every admin call made, for the report

    async def aclose(self) -> None:
        await self.drain_feedback()
        await self.client.aclose()

    # ---- requests ---------------------------------------------------------------------

    async def chat(self, prompt: str, phase: str, key: tuple[str, str] | None = None) -> Answer:
        """One chat; with `key` = (tenant, its API key), sent with that key."""
        body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
        headers = {"authorization": f"Bearer {key[1]}"} if key else None
        tenant = key[0] if key else None
        start = time.perf_counter()
        try:
            r = await self.client.post("/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            return Answer(
                phase, 0, time.perf_counter() - start, error=type(exc).__name__, tenant=tenant
            )
        latency = time.perf_counter() - start
        if r.status_code != 200:
            return Answer(phase, r.status_code, latency, error=_error_text(r), tenant=tenant)
        out = r.json()
        info = out.get("paretoserve") or {}
        answer = Answer(
            phase,
            200,
            latency,
            request_id=r.headers["x-request-id"],
            model=out["model"],
            cost=float(r.headers["x-paretoserve-cost-usd"]),
            reward=info.get("recorded_reward"),
            forced=bool(info.get("forced")),
            dual=float(info.get("dual") or 0.0),
            tenant=tenant,
        )
        if answer.reward is None:
            self.feedback.no_reward += 1
        elif self.post_feedback:
            self._post_feedback_later(r.headers["x-request-id"], answer.reward)
        return answer

    async def run_for(
        self,
        prompts: list[str],
        seconds: float,
        phase: str,
        keys: list[tuple[str, str]] | None = None,
    ) -> list[Answer]:
        """Send prompts (cycling) with `concurrency` workers until `seconds` have passed; with
        `keys` ((tenant, API key) pairs), worker w sends with keys[w % len(keys)]."""
        answers: list[Answer] = []
        deadline = time.monotonic() + seconds
        counter = iter(range(1 << 62))

        async def worker(key: tuple[str, str] | None) -> None:
            for i in counter:
                if time.monotonic() >= deadline:
                    return
                answer = await self.chat(prompts[i % len(prompts)], phase, key)
                answers.append(answer)
                if answer.status == 429:  # as a client would, back off before the next one
                    await asyncio.sleep(0.5)

        await asyncio.gather(
            *(worker(keys[w % len(keys)] if keys else None) for w in range(self.concurrency))
        )
        return answers

    async def run_block(self, prompts: list[str], phase: str) -> list[Answer]:
        """Send `prompts` in order with `concurrency` workers; answers in prompt order."""
        answers: list[Answer | None] = [None] * len(prompts)
        next_index = iter(range(len(prompts)))

        async def worker() -> None:
            for i in next_index:  # shared iterator: each index is taken once, in order
                answers[i] = await self.chat(prompts[i], phase)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return [a for a in answers if a is not None]

    # ---- feedback ---------------------------------------------------------------------

    def _post_feedback_later(self, request_id: str, reward: float) -> None:
        lo, hi = self.delay_ms
        delay = float(self.rng.uniform(lo, hi)) / 1000.0 if hi > 0 else 0.0
        task = asyncio.get_running_loop().create_task(self._feedback(request_id, reward, delay))
        self._feedback_tasks.add(task)
        task.add_done_callback(self._feedback_tasks.discard)

    async def _feedback(self, request_id: str, reward: float, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.feedback.sent += 1
        start = time.perf_counter()
        try:
            r = await self.client.post(
                "/v1/feedback", json={"request_id": request_id, "reward": reward}
            )
        except httpx.HTTPError as exc:
            self.feedback.statuses[type(exc).__name__] += 1
            self.feedback.failed[request_id] = reward
            return
        self.feedback.latencies_s.append(time.perf_counter() - start)
        if r.status_code == 200:
            key = r.json().get("status")
            self.feedback.acked.setdefault(request_id, key)
            self.feedback.failed.pop(request_id, None)
        else:
            key = str(r.status_code)
            self.feedback.failed[request_id] = reward
        self.feedback.statuses[key] += 1

    async def retry_failed_feedback(self, rounds: int = 5, pause_s: float = 2.0) -> None:
        """Post again every feedback that got no 200 (as a client with retries would)."""
        for _ in range(rounds):
            if not self.feedback.failed:
                return
            await asyncio.gather(
                *(self._feedback(rid, r, 0.0) for rid, r in list(self.feedback.failed.items()))
            )
            await asyncio.sleep(pause_s)

    async def drain_feedback(self) -> None:
        while self._feedback_tasks:
            await asyncio.gather(*list(self._feedback_tasks))

    async def drain_judge(self, timeout_s: float = 600.0, every_s: float = 1.0) -> dict:
        """Wait until the service's Judge has nothing waiting or in flight; its figures."""
        deadline = time.monotonic() + timeout_s
        while True:
            judge = (await self.admin("GET", "/admin/state"))["judge"]
            if not judge.get("enabled") or judge["outstanding"] == 0:
                return judge
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Judge still has {judge['outstanding']} outstanding")
            await asyncio.sleep(every_s)

    # ---- admin ------------------------------------------------------------------------

    async def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        r = await self.client.request(method, path, json=body, headers=self.admin_headers)
        if method != "GET":
            self.admin_log.append(
                {"method": method, "path": path, "body": body, "status": r.status_code}
            )
        if r.status_code >= 400:
            raise RuntimeError(f"admin {method} {path} failed: {r.status_code} {r.text[:300]}")
        return r.json()


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    v = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(v.max()),
        "n": len(v),
    }


# ---- the scenarios through the admin API ---------------------------------------------------


@dataclass
class LivePlan:
    """What to send: the warm-up prompts, then the evaluation phases, each in order."""

    scenario: Scenario
    budget_usd: float
    warmup: list[str]
    phases: list[tuple[str, list[str]]]
    specs: dict[str, ModelSpec]  # every model of the files, at their list prices
    spec: ReplaySpec  # the scenario's parameters (which model, what factor)
    newcomer: str | None = None


async def _enter_phase(driver: LiveDriver, plan: LivePlan, name: str) -> None:
    """The operator's action at a phase boundary, as in core.replay.protocol._enter_phase."""
    s = plan.spec
    if plan.scenario == Scenario.PRICE_CUT and name in ("P2", "P3"):
        base = plan.specs[s.price_cut_model]
        f = s.price_cut_factor if name == "P2" else 1.0
        body = {"input_per_m": base.input_per_m * f, "output_per_m": base.output_per_m * f}
        await driver.admin("PATCH", f"/admin/models/{s.price_cut_model}", body)
    elif plan.scenario == Scenario.REGRESSION and name in ("P2", "P3"):
        behaviour = {"reward_value": s.regression_reward} if name == "P2" else None
        body = {"simulation": behaviour}
        await driver.admin("PATCH", f"/admin/models/{s.regression_model}", body)
    elif plan.scenario == Scenario.ONBOARDING and name == "P2" and plan.newcomer:
        body = plan.specs[plan.newcomer].model_dump(mode="json", exclude_none=True)
        if s.newcomer_reward_scale != 1.0:
            body["simulation"] = {"reward_scale": s.newcomer_reward_scale}
        await driver.admin("POST", "/admin/models", body)


async def run_plan(driver: LiveDriver, plan: LivePlan) -> dict:
    """Warm-up, then each phase; returns the report (offline replay schema + service figures)."""
    warmup = await driver.run_block(plan.warmup, "warmup") if plan.warmup else []
    log: list[Answer] = []
    bounds: list[tuple[str, int, int]] = []
    start = time.perf_counter()
    for name, prompts in plan.phases:
        n = len(driver.admin_log)
        await _enter_phase(driver, plan, name)
        for action in driver.admin_log[n:]:
            action["phase"] = name
        first = len(log)
        log.extend(await driver.run_block(prompts, name))
        bounds.append((name, first, len(log)))
    elapsed = time.perf_counter() - start
    await driver.drain_feedback()
    judge = await driver.drain_judge()
    report = live_report(plan, log, bounds, elapsed, driver)
    report["judge"] = judge
    report["warmup"] = warmup_summary(warmup, plan.budget_usd)
    return report


def warmup_summary(answers: list[Answer], budget_usd: float) -> dict:
    """How the warm-up went: its reward, spend and mix, and the pacer's dual it hands to the
    evaluation (a high one means the evaluation starts thrifty)."""
    ok = [a for a in answers if a.status == 200]
    if not ok:
        return {"answered": 0}
    f = _figures(ok, budget_usd)
    return {
        "answered": len(ok),
        "mean_reward": f["mean_reward"],
        "compliance": f["compliance"],
        "mix": f["mix"],
        "max_dual": max(a.dual for a in ok),
        "final_dual": ok[-1].dual,
    }


def _figures(answers: list[Answer], budget_usd: float) -> dict:
    """The offline replay's phase figures of these answered requests; the mean reward is over
    those with a recorded one."""
    rewards = [a.reward if a.reward is not None else np.nan for a in answers]
    models, costs = [a.model or "" for a in answers], [a.cost for a in answers]
    f = metrics.phase_figures(models, rewards, costs, budget_usd)
    f["mean_reward"] = float(np.nanmean(rewards)) if answers else 0.0
    return f


def live_report(
    plan: LivePlan,
    log: list[Answer],
    bounds: list[tuple[str, int, int]],
    elapsed_s: float,
    driver: LiveDriver,
) -> dict:
    ok = [a for a in log if a.status == 200]
    ok_bounds, n = [], 0  # phase bounds over the answered requests only
    for name, a, b in bounds:
        k = sum(1 for x in log[a:b] if x.status == 200)
        ok_bounds.append((name, n, n + k))
        n += k
    models = [a.model or "" for a in ok]
    rewards = [a.reward if a.reward is not None else np.nan for a in ok]
    costs = [a.cost for a in ok]
    summary = _figures(ok, plan.budget_usd)
    phases = (
        [{"name": nm, **_figures(ok[a:b], plan.budget_usd)} for nm, a, b in ok_bounds]
        if len(bounds) > 1
        else []
    )
    adapt: dict[str, Any] = {}
    if len(ok_bounds) > 1:
        _, p2a, p2b = ok_bounds[1]
        if plan.scenario == Scenario.PRICE_CUT:
            adapt["quality_lift"] = phases[1]["mean_reward"] - phases[0]["mean_reward"]
        elif plan.scenario == Scenario.REGRESSION:
            adapt["reroute_steps"] = metrics.reroute_steps(
                models, plan.spec.regression_model, p2a, p2b
            )
        elif plan.scenario == Scenario.ONBOARDING and plan.newcomer:
            forced = [a.forced for a in ok]
            adapt["adoption_steps"] = metrics.adoption_steps(models, forced, plan.newcomer, p2a)
    summary.update(adapt)
    failed = [a for a in log if a.status != 200]
    fb = driver.feedback
    return {
        "mode": "live",
        "scenario": plan.scenario.value,
        "budget_usd": plan.budget_usd,
        "summary": summary,
        "phases": phases,
        **adapt,
        "requests": {
            "warmup": len(plan.warmup),
            "sent": len(log),
            "answered": len(ok),
            "failed": len(failed),
            "errors": dict(Counter(str(a.status) for a in failed)),
            "no_recorded_reward": sum(1 for a in ok if a.reward is None),
        },
        "feedback": {
            "sent": fb.sent,
            "statuses": dict(fb.statuses),
            "latency_ms": percentiles_ms(fb.latencies_s),
        },
        "latency_ms": percentiles_ms([a.latency_s for a in ok]),
        "throughput_rps": len(ok) / elapsed_s if elapsed_s > 0 else None,
        "elapsed_s": elapsed_s,
        "operator_actions": driver.admin_log,
        "series": {  # per answered evaluation request, in send order: for plots
            "models": models,
            "rewards": [None if np.isnan(r) else r for r in rewards],
            "costs": costs,
            "forced": [a.forced for a in ok],
            "duals": [a.dual for a in ok],
            "phases": ok_bounds,
        },
    }
