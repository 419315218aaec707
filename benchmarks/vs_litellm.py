"""paretoserve beside LiteLLM's proxy, over the same instant upstream, in one run.

    python -m benchmarks.vs_litellm [--sequential 300] [--seconds 15] [--concurrency 16 64]
        [--litellm-venv .venv-litellm] [--json docs/bench/vs_litellm.json]

Starts, on free ports of this machine:
- the fake upstream (benchmarks/fake_openai.py: an instant OpenAI-compatible server);
- LiteLLM's proxy (`litellm[proxy]==1.80.0`, in a virtual environment of its own, made on
  first use: its pins clash with ours), one worker, `simple-shuffle` over three deployments of
  the fake upstream under the name `auto`;
- paretoserve (`serve run` of serve_config.yaml with the three models on an `openai` provider
  whose base URL is the fake upstream, the Judge off, state in a temp dir), with the Serve
  settings of the environment (the Makefile's exports apply when run through `make`).

Then, per target, with aiohttp (httpx's client tops out near 400 req/s here): `--sequential`
requests one at a time (p50 / p99 latency, and added p50 = p50 - the upstream's own), and for
each `--concurrency` C a closed loop of C workers for `--seconds` (req/s, errors, and the
target's own CPU time per answered request: user + system time of its processes, which a
loaded machine inflates far less than latency). Targets:
the upstream itself (`direct`), LiteLLM, paretoserve with one repeated prompt (its context
comes from the Embedder's cache) and with unique prompts (each one runs the encoder). The
JSON records the machine (cores, load averages before and after) and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import get_args

import aiohttp
import numpy as np
import yaml

from core.net import free_port
from core.service.settings import Backend
from loadtest.server import REPO, base_config, serve_app

LITELLM = "litellm[proxy]==1.80.0"
PROMPT = "Summarise in one sentence why the sky is blue."


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen, what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} in {timeout_s:.0f}s")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@contextlib.contextmanager
def fake_upstream(workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The instant fake OpenAI upstream on a free port: (its base URL, its process)."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    cmd = [sys.executable, "-m", "benchmarks.fake_openai", "--port", str(port)]
    with _process(cmd, workdir / "upstream.log") as proc:
        _wait_http(f"{url}/v1/models", 30, proc, "the fake upstream")
        yield url, proc


def litellm_bin(venv: Path) -> Path:
    """The proxy's executable, installing LITELLM into `venv` on first use."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    return exe


def litellm_config(upstream: str, models: list[str]) -> dict:
    return {
        "model_list": [
            {
                "model_name": "auto",
                "litellm_params": {
                    "model": f"openai/{m}",
                    "api_base": f"{upstream}/v1",
                    "api_key": "fake",
                },
            }
            for m in models
        ],
        "router_settings": {"routing_strategy": "simple-shuffle"},
        "litellm_settings": {"telemetry": False, "set_verbose": False},
    }


def paretoserve_args(upstream: str, workdir: Path, embedder_backend: str | None = None) -> dict:
    args = base_config()["applications"][0]["args"]
    if embedder_backend:
        args["embedder"] = {**args.get("embedder", {}), "backend": embedder_backend}
    for m in args["models"]:
        m["provider"] = "openai"
    # The simulated provider stays (serve_config.yaml configures its deployment), unused.
    args["providers"]["openai"] = {
        "kind": "openai",
        "options": {"default_base_url": f"{upstream}/v1"},
    }
    args["judge"] = {**args.get("judge", {}), "enabled": False}
    args["state_path"] = str(workdir / "state" / "paretoserve.db")
    return args


# ---- the load ------------------------------------------------------------------------------


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        async with session.post(url, json=body) as r:
            await r.read()
            ok = r.status == 200
    except aiohttp.ClientError:
        ok = False
    return ok, time.perf_counter() - start


def _body(model: str, unique: bool, i: int) -> dict:
    text = f"{PROMPT} (request {i})" if unique else PROMPT
    return {"model": model, "messages": [{"role": "user", "content": text}]}


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (those that exited: not counted)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * _TICK_S


def group_pids(leader: int) -> list[int]:
    """The processes of `leader`'s process group (a target started in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == leader:
                    found.append(int(entry.name))
    return found


async def measure(
    url: str,
    model: str,
    unique: bool,
    sequential: int,
    seconds: float,
    concurrency: list[int],
    pids: Callable[[], list[int]],
) -> dict:
    counter = iter(range(1 << 40))
    headers = {"authorization": "Bearer fake"}
    out: dict = {}
    conn = aiohttp.TCPConnector(limit=max(concurrency) + 8)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        for _ in range(20):  # warm-up
            await _one(session, url, _body(model, unique, next(counter)))
        lat, errors = [], 0
        for _ in range(sequential):
            ok, s = await _one(session, url, _body(model, unique, next(counter)))
            errors += not ok
            lat.append(s)
        ms = np.array(lat) * 1000
        out["sequential"] = {
            "n": sequential,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "errors": errors,
        }
        for c in concurrency:
            done, errors = 0, 0

            async def worker(deadline: float) -> None:
                nonlocal done, errors
                while time.monotonic() < deadline:
                    ok, _ = await _one(session, url, _body(model, unique, next(counter)))
                    done += ok
                    errors += not ok

            procs = pids()
            cpu = cpu_seconds(procs)
            start = time.perf_counter()
            until = time.monotonic() + seconds
            await asyncio.gather(*(worker(until) for _ in range(c)))
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(procs) - cpu
            out[f"c{c}"] = {
                "rps": done / elapsed,
                "answered": done,
                "errors": errors,
                # the target's own CPU per answer: comparable on a loaded machine, unlike req/s
                "cpu_ms_per_request": 1000 * cpu / done if done else None,
            }
    return out


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="vs-litellm-"))
    load_before = os.getloadavg()
    models = [m["id"] for m in base_config()["applications"][0]["args"]["models"]]
    ll_port = free_port()
    results: dict = {}
    targets = []
    with contextlib.ExitStack() as stack:
        upstream, up = stack.enter_context(fake_upstream(workdir))
        targets.append(("direct", f"{upstream}/v1/chat/completions", models[0], False, up.pid))

        cfg = workdir / "litellm.yaml"
        cfg.write_text(yaml.safe_dump(litellm_config(upstream, models)))
        exe = litellm_bin(Path(args.litellm_venv).resolve())
        env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
        cmd = [str(exe), "--config", str(cfg), "--port", str(ll_port), "--num_workers", "1"]
        ll = stack.enter_context(_process(cmd, workdir / "litellm.log", env))
        _wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", 180, ll, "LiteLLM")
        ll_chat = f"http://127.0.0.1:{ll_port}/v1/chat/completions"
        targets.append(("litellm", ll_chat, "auto", False, ll.pid))

        os.environ.setdefault("OPENAI_API_KEY", "fake")
        ps_args = paretoserve_args(upstream, workdir, args.embedder_backend)
        app = stack.enter_context(serve_app(ps_args, workdir / "ps"))
        chat = f"{app.base_url}/v1/chat/completions"
        targets.append(("paretoserve_repeated", chat, "auto", False, None))
        targets.append(("paretoserve_unique", chat, "auto", True, None))

        for name, url, model, unique, leader in targets:
            print(f"measuring {name} ...", flush=True)
            # paretoserve: every process of its Ray cluster; the others: their process group
            pids = app.ray_pids if leader is None else partial(group_pids, leader)
            results[name] = asyncio.run(
                measure(url, model, unique, args.sequential, args.seconds, args.concurrency, pids)
            )
    direct = results["direct"]["sequential"]["p50_ms"]
    for r in results.values():
        r["sequential"]["added_p50_ms"] = r["sequential"]["p50_ms"] - direct
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "command": " ".join(["python -m benchmarks.vs_litellm", *sys.argv[1:]]),
        "machine": machine(load_before),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "litellm": LITELLM,
        "results": results,
    }


SERVE_FAST_PATHS = (
    "RAY_SERVE_THROUGHPUT_OPTIMIZED",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT",
    "RAY_SERVE_ENABLE_HA_PROXY",
)


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine of a run: cores, load averages before and now, Serve's fast-path settings."""
    return {
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "serve_env": {k: os.environ.get(k) for k in SERVE_FAST_PATHS},
    }


def table(report: dict) -> str:
    cs = [k for k in next(iter(report["results"].values())) if k.startswith("c")]
    head = "| target | p50 ms | p99 ms | added p50 ms | " + " | ".join(
        f"req/s at {c[1:]} | CPU ms/req at {c[1:]}" for c in cs
    )
    rows = [head + " |", "|" + " --- |" * (4 + 2 * len(cs))]
    for name, r in report["results"].items():
        s = r["sequential"]
        rows.append(
            f"| {name} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['added_p50_ms']:+.2f} | "
            + " | ".join(
                f"{r[c]['rps']:.0f} ({r[c]['errors']} err) | {r[c]['cpu_ms_per_request']:.1f}"
                for c in cs
            )
            + " |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description="paretoserve beside LiteLLM's proxy, one run")
    p.add_argument("--sequential", type=int, default=300)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--litellm-venv", default=str(REPO / ".venv-litellm"))
    p.add_argument(
        "--embedder-backend",
        choices=get_args(Backend),
        help="paretoserve's embedder.backend (default: serve_config.yaml's)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    report = run(args)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
