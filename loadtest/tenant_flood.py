"""A capped tenant flooded until refused, beside a second tenant, on the real service.

`paretoserve loadtest tenants` starts the embedded default (simulated provider, the committed
priors), creates two tenants through the admin API, `capped` (a period budget with
`hard_cap: true`) and `steady` (a per-request target, no cap), gives each a key, then floods
`capped` at `--concurrency` requests in flight until it has been refused `--refusals` times,
while `steady` sends at a low concurrency throughout. It reports what `capped` was charged
(the sum of the answers' `x-paretoserve-cost-usd` headers, and the Router's own figure), the
cheapest model's share per tenth of its answered requests, the 429s and their `Retry-After`,
and `steady`'s answers and errors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from core.replay.prompts import load_prompts
from loadtest.server import base_config, serve_app


@dataclass
class Sent:
    tenant: str
    at: float
    status: int
    model: str | None = None
    cost_usd: float = 0.0
    retry_after: str | None = None
    error: str | None = None


@dataclass
class Flood:
    base_url: str
    admin_key: str
    prompts: list[str]
    log: list[Sent] = field(default_factory=list)

    async def admin(self, session: aiohttp.ClientSession, method: str, path: str, body=None):
        headers = {"authorization": f"Bearer {self.admin_key}"}
        async with session.request(
            method, self.base_url + path, json=body, headers=headers
        ) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    async def chat(self, session: aiohttp.ClientSession, tenant: str, key: str, i: int) -> Sent:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": self.prompts[i % len(self.prompts)]}],
            "max_tokens": 512,
        }
        headers = {"authorization": f"Bearer {key}"}
        at = time.monotonic()
        try:
            async with session.post(
                self.base_url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                data = await resp.json()
                sent = Sent(tenant, at, resp.status)
                if resp.status == 200:
                    sent.model = data["model"]
                    sent.cost_usd = float(resp.headers["x-paretoserve-cost-usd"])
                else:
                    sent.retry_after = resp.headers.get("retry-after")
                    sent.error = data.get("error", {}).get("code")
        except aiohttp.ClientError as exc:
            sent = Sent(tenant, at, 0, error=repr(exc))
        self.log.append(sent)
        return sent


def _tenths(answered: list[Sent]) -> list[list[Sent]]:
    n = len(answered)
    return [answered[i * n // 10 : (i + 1) * n // 10] for i in range(10)]


def _share_by_tenth(answered: list[Sent], model: str) -> list[float]:
    return [
        round(sum(s.model == model for s in t) / len(t), 3) if t else 0.0 for t in _tenths(answered)
    ]


async def run_flood(
    base_url: str,
    admin_key: str,
    prompts: list[str],
    cap_usd: float,
    capped_usd_per_request: float,
    steady_usd_per_request: float,
    concurrency: int,
    refusals: int,
    max_requests: int,
) -> dict[str, Any]:
    flood = Flood(base_url, admin_key, prompts)
    timeout = aiohttp.ClientTimeout(total=120)
    conn = aiohttp.TCPConnector(limit=concurrency + 8)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        await flood.admin(
            session,
            "POST",
            "/admin/tenants",
            # Paced at a fixed target, not the period's: only the cap moves it to cheaper models.
            {
                "id": "capped",
                "budget_usd": cap_usd,
                "period": "day",
                "hard_cap": True,
                "pace_period": False,
                "usd_per_request": capped_usd_per_request,
            },
        )
        await flood.admin(
            session,
            "POST",
            "/admin/tenants",
            {"id": "steady", "usd_per_request": steady_usd_per_request},
        )
        keys = {
            t: (await flood.admin(session, "POST", f"/admin/tenants/{t}/keys"))["api_key"]
            for t in ("capped", "steady")
        }
        models = await flood.admin(session, "GET", "/admin/models")
        cheapest = min(models, key=lambda m: m["input_per_m"] + m["output_per_m"])["id"]
        done = asyncio.Event()
        counter = iter(range(max_requests))
        refused = 0

        async def capped_worker() -> None:
            nonlocal refused
            while not done.is_set():
                i = next(counter, None)
                if i is None:
                    done.set()
                    return
                sent = await flood.chat(session, "capped", keys["capped"], i)
                if sent.status == 429:
                    refused += 1
                    if refused >= refusals:
                        done.set()

        async def steady_worker(offset: int) -> None:
            i = offset
            while not done.is_set():
                await flood.chat(session, "steady", keys["steady"], i)
                i += 4

        start = time.monotonic()
        await asyncio.gather(
            *(capped_worker() for _ in range(concurrency)),
            *(steady_worker(k) for k in range(4)),
        )
        seconds = time.monotonic() - start
        await asyncio.sleep(1.0)  # charges land in detached tasks just after the answers
        report = {
            t: await flood.admin(session, "GET", f"/admin/tenants/{t}")
            for t in ("capped", "steady")
        }
    log = sorted(flood.log, key=lambda s: s.at)
    capped = [s for s in log if s.tenant == "capped"]
    steady = [s for s in log if s.tenant == "steady"]
    answered = [s for s in capped if s.status == 200]
    first_429 = next((i for i, s in enumerate(capped) if s.status == 429), None)
    return {
        "seconds": round(seconds, 1),
        "concurrency": concurrency,
        "cap_usd": cap_usd,
        "cheapest_model": cheapest,
        "capped": {
            "sent": len(capped),
            "answered": len(answered),
            "refused_429": sum(s.status == 429 for s in capped),
            "other_errors": sorted(
                {f"{s.status} {s.error}" for s in capped if s.status not in (200, 429)}
            ),
            "retry_after_s": sorted({s.retry_after for s in capped if s.retry_after}),
            "charged_by_headers_usd": sum(s.cost_usd for s in answered),
            "answered_after_first_429": sum(
                s.status == 200 for s in capped[first_429:] if first_429 is not None
            ),
            "cheapest_share_by_tenth": _share_by_tenth(answered, cheapest),
            "share_by_tenth": {
                m: _share_by_tenth(answered, m) for m in sorted({s.model for s in answered})
            },
            "mix": {
                m: sum(s.model == m for s in answered) for m in sorted({s.model for s in answered})
            },
            "router": report["capped"],
        },
        "steady": {
            "sent": len(steady),
            "answered": sum(s.status == 200 for s in steady),
            "errors": sorted({f"{s.status} {s.error}" for s in steady if s.status != 200}),
            "charged_by_headers_usd": sum(s.cost_usd for s in steady),
            "router": report["steady"],
        },
    }


def tenant_flood(
    workdir: Path,
    data: Path,
    cap_usd: float,
    capped_usd_per_request: float,
    steady_usd_per_request: float,
    concurrency: int,
    refusals: int,
    max_requests: int,
    time_scale: float,
) -> dict[str, Any]:
    args = base_config()["applications"][0]["args"]
    args["state_path"] = str(workdir / "state" / "paretoserve.db")
    sim = args["providers"]["simulated"]["options"]
    sim.update(replay_file=str(data.resolve()), time_scale=time_scale)
    args["judge"] = {**args.get("judge", {}), "enabled": False}
    prompts = load_prompts(data)
    with serve_app(args, workdir) as app:
        return asyncio.run(
            run_flood(
                app.base_url,
                app.admin_key,
                prompts,
                cap_usd,
                capped_usd_per_request,
                steady_usd_per_request,
                concurrency,
                refusals,
                max_requests,
            )
        )
