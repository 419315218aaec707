"""Where a chat's time goes: CPU per process under load, and each hop's sequential latency.

    python -m benchmarks.path_profile [--clients 16] [--seconds 15] [--calls 300]
        [--embedder-backend static] [--json docs/bench/path_profile.json]

Starts the fake OpenAI upstream and paretoserve over it (as benchmarks.vs_litellm does), then:
- a closed loop of `--clients` clients sending one repeated prompt for `--seconds`: each Ray
  process's CPU time per answered request (user + system), so a change to one deployment shows
  in its own row;
- from a driver joined to the cluster, `--calls` sequential calls of each hop the Ingress makes,
  through the same Serve handles: the Embedder on a cached prompt (a hop whose callee does
  almost nothing: Serve's own floor), the Router's `route` and `charge`, and the Provider's
  `complete` with the SDK call's own latency as the replica measured it (`latency_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

from benchmarks.vs_litellm import PROMPT, cpu_seconds, fake_upstream, machine, measure
from benchmarks.vs_litellm import paretoserve_args as over_upstream
from core.service.settings import Backend
from loadtest.server import ray_env, serve_app

APP = "paretoserve"


def process_name(pid: int) -> str:
    """A Ray process's title (`ray::ServeReplica:paretoserve:Router`), else its command."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[:80]
    return "?"


async def hop_latencies(calls: int) -> dict[str, float]:
    """Sequential p50 (ms) of each hop, through the handles the Ingress uses (driver side)."""
    import uuid

    from ray import serve

    from core.service.protocol import ChatCompletionRequest, ProviderRequest

    router = serve.get_deployment_handle("Router", APP)
    provider = serve.get_deployment_handle("Provider_openai", APP)
    embedder = serve.get_deployment_handle("Embedder", APP)
    body = ChatCompletionRequest(model="auto", messages=[{"role": "user", "content": PROMPT}])
    x = await embedder.embed.remote(body.prompt_text())
    seen: dict[str, list[float]] = {h: [] for h in ("embed_cached", "route", "provider", "sdk")}
    seen["charge"] = []

    async def timed(hop: str, call):
        start = time.perf_counter()
        out = await call
        seen[hop].append((time.perf_counter() - start) * 1000)
        return out

    for _ in range(calls + 20):  # the first 20 warm up
        rid = uuid.uuid4().hex
        await timed("embed_cached", embedder.embed.remote(body.prompt_text()))
        d = await timed("route", router.route.remote(x, {}, None, rid, None))
        req = ProviderRequest.from_chat(rid, body, d.spec)
        resp = await timed("provider", provider.complete.remote(req))
        seen["sdk"].append(resp.latency_s * 1000)
        await timed("charge", router.charge.remote(rid, 1e-6, d.model, x, d.forced, None))
    return {hop: statistics.median(ms[20:]) for hop, ms in seen.items()}


def driver_main(calls: int) -> None:
    """Run inside the cluster's environment (a subprocess): print the hops' p50 as JSON."""
    import ray

    ray.init(address="auto", logging_level="ERROR")
    print(json.dumps(asyncio.run(hop_latencies(calls))))


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="path-profile-"))
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        upstream, _ = stack.enter_context(fake_upstream(workdir))
        os.environ.setdefault("OPENAI_API_KEY", "fake")
        served = over_upstream(upstream, workdir, args.embedder_backend)
        app = stack.enter_context(serve_app(served, workdir / "ps"))
        url = f"{app.base_url}/v1/chat/completions"
        asyncio.run(measure(url, "auto", False, 100, 3, [args.clients], app.ray_pids))  # warm
        pids = app.ray_pids()
        before = {pid: cpu_seconds([pid]) for pid in pids}
        loop = asyncio.run(
            measure(url, "auto", False, 1, args.seconds, [args.clients], lambda: pids)
        )
        answered = loop[f"c{args.clients}"]["answered"]
        per_process = {}
        for pid in pids:
            ms = 1000 * (cpu_seconds([pid]) - before[pid]) / answered
            if ms >= 0.05:
                name = process_name(pid)
                per_process[name] = per_process.get(name, 0.0) + ms
        driver = [sys.executable, "-m", "benchmarks.path_profile", "--driver", str(args.calls)]
        out = subprocess.run(
            driver, env=ray_env(app.ray_dir), capture_output=True, text=True, check=True
        )
        hops = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "command": " ".join(["python -m benchmarks.path_profile", *sys.argv[1:]]),
        "machine": machine(load_before),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loop": loop[f"c{args.clients}"] | {"clients": args.clients},
        "cpu_ms_per_request_by_process": dict(sorted(per_process.items(), key=lambda kv: -kv[1])),
        "sequential_hop_p50_ms": hops,
    }


def main() -> None:
    p = argparse.ArgumentParser(description="CPU per process and per-hop latency of a chat")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--embedder-backend", choices=get_args(Backend))
    p.add_argument("--json", type=Path)
    p.add_argument("--driver", type=int, help=argparse.SUPPRESS)  # internal: the hop driver
    args = p.parse_args()
    if args.driver is not None:
        driver_main(args.driver)
        return
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
