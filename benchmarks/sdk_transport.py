"""The openai SDK's CPU per call over its two HTTP transports, in one run, in process.

    python -m benchmarks.sdk_transport [--calls 2000] [--rounds 3] [--json F]

Against the instant fake upstream (benchmarks/fake_openai.py), the Provider deployment's client
(deployments/clients/openai_client.py) with `http_transport` "httpx" and "aiohttp", in
interleaved rounds: `--calls` completions over 8 concurrent tasks, this process's CPU time per
call (the upstream runs in its own process), and the sequential p50 of 300 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.vs_litellm import PROMPT, fake_upstream
from core.method.registry import ModelSpec
from core.service.protocol import ProviderRequest
from deployments.clients.openai_client import OpenAIClient

TRANSPORTS = ("httpx", "aiohttp")


def _request(base_url: str) -> ProviderRequest:
    spec = ModelSpec(
        id="m", provider="openai", input_per_m=1.0, output_per_m=1.0, base_url=base_url
    )
    messages = [{"role": "user", "content": PROMPT}]
    return ProviderRequest(
        request_id="r", model_id="m", upstream_model="m", spec=spec, messages=messages,
        prompt_text=PROMPT,
    )  # fmt: skip


async def _round(transport: str, base_url: str, calls: int) -> dict[str, float]:
    client = OpenAIClient(api_key_env="UNSET_KEY", http_transport=transport)
    req = _request(base_url)
    try:
        for _ in range(50):  # warm-up: connections open
            await client.complete(req)

        async def worker(n: int) -> None:
            for _ in range(n):
                await client.complete(req)

        cpu = time.process_time()
        await asyncio.gather(*(worker(calls // 8) for _ in range(8)))
        cpu_ms = 1000 * (time.process_time() - cpu) / (calls // 8 * 8)
        seq = []
        for _ in range(300):
            start = time.perf_counter()
            await client.complete(req)
            seq.append(1000 * (time.perf_counter() - start))
        return {"cpu_ms_per_call": cpu_ms, "sequential_p50_ms": statistics.median(seq)}
    finally:
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description="the openai SDK's CPU per call by HTTP transport")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
    with tempfile.TemporaryDirectory() as tmp, fake_upstream(Path(tmp)) as (url, _):
        for _ in range(args.rounds):
            for transport in TRANSPORTS:
                rounds[transport].append(asyncio.run(_round(transport, f"{url}/v1", args.calls)))
    report = {
        t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"rounds": rs}
        for t, rs in rounds.items()
    }
    ratio = report["aiohttp"]["cpu_ms_per_call"] / report["httpx"]["cpu_ms_per_call"]
    for t in TRANSPORTS:
        cpu, p50 = report[t]["cpu_ms_per_call"], report[t]["sequential_p50_ms"]
        print(f"{t:8s} CPU {cpu:.3f} ms/call, sequential p50 {p50:.3f} ms")
    print(f"aiohttp / httpx CPU per call: {ratio:.2f}")
    if args.json:
        report["command"] = "python -m benchmarks.sdk_transport"
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
