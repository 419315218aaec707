"""Service latency and throughput: the real paretoserve app vs a passthrough floor, over HTTP.

    python -m benchmarks.bench_service [--concurrency 16 64] [--requests 400] [--time-scale 0]
        [--hops auto|metrics|handles] [--embed-batch-wait-s S] [--json OUT]

One local Ray (logical CPUs, no dashboard, token auth off unless RAY_AUTH_MODE is set), one
Serve instance with its HTTP proxy on a free port, and on it two applications side by side:

- `router`: graphs.app:build_app with serve_config.yaml's args (the three simulated models,
  the budget, the embedder settings), state in a fresh temp dir, and the simulated provider's
  `time_scale` from `--time-scale`. 0 makes provider latency zero, so the figures are the
  serving overhead itself: HTTP proxy, Ingress, Embedder (MiniLM on CPU), Router, Provider
  and the durable charge.
- `passthrough`: benchmarks/passthrough_app.py, one FastAPI deployment that parses the same
  request, calls the same simulated client in-process (same SimulatorConfig) for a fixed
  model and returns the same response shape. The floor: Serve's proxy + one replica.

For each time scale both apps are deployed (fresh), warmed up, then for each concurrency C
each app is driven by a closed-loop asyncio + httpx load generator (C workers, N requests in
all, prompts from ../shared/data/val.jsonl when present, else the built-in set; the same
prompts, in the same order, for both apps). Which app goes first alternates from one
(time scale, C) pair to the next. Latency is end-to-end at the client (send to parsed JSON).

Requests: at time_scale 0 the router gets `"model": "auto"` (the bandit decides); the
passthrough always answers with its fixed model. At time_scale > 0 the provider's latency
depends on the model, so both apps get the passthrough's model by name: the router still
embeds, records a decision and charges, but the provider plays out exactly the same latency
per prompt in both apps (the simulator is deterministic per seed, model and prompt), so the
ratio is the routing overhead against a realistic provider latency.

Per-hop latency inside the router app comes from the Ingress's `paretoserve_hop_latency_ms`
histogram (hop = embed, route, provider, charge, total), scraped from Ray's Prometheus
export (`ray.init(_metrics_export_port=...)`) before and after each run; the difference of
the cumulative buckets gives that run's histogram, and p50/p99 are interpolated within the
buckets (bounds 1, 2, 5, 10, 25, 50, 100, 250, 500 ms, ...), so read them as approximate.
So is the mean: Ray 2.60 exports a histogram's `_sum` as bucket midpoints, not the observed
values (hop rows carry `"approx": true`). The same scrapes give the Embedder's mean batch
size per run (its `embedded_prompts` counter over its batch count, both exact). If the export
cannot be reached (`--hops auto`) or with `--hops handles`, the hops are instead timed by
calling the deployments through handles (embedder.embed, router.route, provider.complete,
router.charge) at the same concurrency, after the HTTP runs (exact, `"approx": false`). The
JSON's `hop_method` says which was used.

CPU per request: just before and after each timed run the harness reads the CPU time
(/proc/<pid>/stat) of every Serve process of this cluster (proxy, controller, each replica of
both apps; pids from Ray's actor table) and of this process (the client), and reports the
difference per successful request. Unlike latency and throughput, this hardly moves when other
work shares the machine, so it is the steadiest way to compare the two apps' cost.

The load generator runs in this process and shares the machine with the apps (its workers are
spread over httpx clients of 16 connections: one 64-connection pool costs the client several
times more CPU per request). On a small, shared machine the ratios (router / passthrough,
measured in the same run) are the figures to read, not the absolute numbers. Both apps stay
deployed for the whole time scale, so the idle one costs a little background CPU (the Router's
writer tick, Serve's metric pushes); the CPU table shows it in brackets.

`--embed-batch-wait-s` overrides the Embedder's `batch_wait_timeout_s` (serve_config.yaml's
by default). The JSON also records the git commit the apps were built from.

This harness imports graphs and deployments (it benchmarks them); nothing imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import itertools
import json
import math
import os
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.common import REPO, VAL_PROMPTS, machine_info, percentile, val_prompts
from core.net import free_port
from core.replay.prompts import BUILTIN_PROMPTS
from loadtest.server import fast_path_ports

HOPS = ("embed", "route", "provider", "charge", "total")
HOP_METRIC = "ray_paretoserve_hop_latency_ms"
BATCH_METRIC = "ray_paretoserve_embed_batch_size"
PROMPTS_METRIC = "ray_paretoserve_embedded_prompts_total"
EMBED = "embedder"  # key of the Embedder's figures in a scrape
CHAT_PATH = "/v1/chat/completions"
SCHEMA = "paretoserve.bench_service/1"
CLIENT_CONNECTIONS = 16  # connections per httpx client of the load generator
METRICS_REPORT_MS = 1000  # how often replicas push metrics to the export (Ray's default: 10 s)


# ---- inputs ---------------------------------------------------------------------------------


def load_prompts(seed: int = 0) -> tuple[list[str], str]:
    """Prompts from ../shared/data/val.jsonl (shuffled with `seed`), else the built-in list."""
    prompts = val_prompts()
    if prompts:
        random.Random(seed).shuffle(prompts)
        return prompts, str(VAL_PROMPTS)
    return list(BUILTIN_PROMPTS), "built-in"


def app_args(
    state_dir: Path, time_scale: float, embed_batch_wait_s: float | None = None
) -> dict[str, Any]:
    """graphs.app:build_app args: serve_config.yaml's, with state under `state_dir`, the
    simulated provider's time_scale set and, if given, the Embedder's batch wait. The
    Embedder's prompt cache is off: the runs repeat prompts (warm-up, rounds), and cache hits
    would measure the cache instead of the encode path that unseen prompts take."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["state_path"] = str(state_dir.resolve() / "paretoserve.db")
    args["providers"]["simulated"].setdefault("options", {})["time_scale"] = time_scale
    args.setdefault("embedder", {})["cache_size"] = 0
    if embed_batch_wait_s is not None:
        args.setdefault("embedder", {})["batch_wait_timeout_s"] = embed_batch_wait_s
    return args


# ---- statistics -----------------------------------------------------------------------------


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


# ---- the load generator ---------------------------------------------------------------------


async def drive(
    url: str,
    prompts: Sequence[str],
    model: str,
    concurrency: int,
    requests: int,
    warm: bool = True,
    timeout_s: float = 120.0,
    before_timed: Callable[[int], Awaitable[None]] | None = None,
    probe: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Closed loop: `concurrency` workers send `requests` chat requests in all, each worker
    sending its next one as soon as its last answer is parsed. With `warm`, each connection
    first sends one untimed request (so connection set-up is not in the figures), then
    `before_timed(successful warm-up requests)` runs. `probe()` is called just before and just
    after the timed requests (`probe_before`, `probe_after`). Returns latencies (ms) of the
    successes, errors, the answering models, wall time and `warm_ok`.

    Workers are spread over one httpx client per CLIENT_CONNECTIONS of them: one pool of 64
    connections costs the client several times more CPU per request than four of 16 (its
    pool's bookkeeping grows with the connections in it), and this client shares the CPUs
    with the service."""
    shards = max(1, math.ceil(concurrency / CLIENT_CONNECTIONS))
    per = math.ceil(concurrency / shards)
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout_s))
            for _ in range(shards)
        ]

        async def one(i: int, client: httpx.AsyncClient) -> tuple[float, str | None, str | None]:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
            }
            start = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                data = r.json()
                elapsed = (time.perf_counter() - start) * 1000
                if r.status_code != 200:
                    return elapsed, f"HTTP {r.status_code}", None
                return elapsed, None, data["model"]
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none is fatal
                return (time.perf_counter() - start) * 1000, type(exc).__name__, None

        warm_ok = 0
        if warm:
            done = await asyncio.gather(
                *(one(requests + k, clients[k % shards]) for k in range(concurrency))
            )
            warm_ok = sum(err is None for _, err, _ in done)
        if before_timed is not None:
            await before_timed(warm_ok)

        counter = itertools.count()
        latencies: list[float] = []
        errors: dict[str, int] = {}
        mix: dict[str, int] = {}

        async def worker(client: httpx.AsyncClient) -> None:
            while (i := next(counter)) < requests:
                ms, err, answered = await one(i, client)
                if err is None:
                    latencies.append(ms)
                    mix[answered] = mix.get(answered, 0) + 1
                else:
                    errors[err] = errors.get(err, 0) + 1

        probe_before = probe() if probe is not None else None
        start = time.perf_counter()
        await asyncio.gather(*(worker(clients[k % shards]) for k in range(concurrency)))
        wall = time.perf_counter() - start
        probe_after = probe() if probe is not None else None
    return {
        "probe_before": probe_before,
        "probe_after": probe_after,
        "latencies": latencies,
        "errors": errors,
        "wall_s": wall,
        "mix": mix,
        "warm_ok": warm_ok,
    }


def summarise(raw: dict[str, Any], requests: int) -> dict[str, Any]:
    lat = raw["latencies"]
    return {
        "requests": requests,
        "ok": len(lat),
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        "p50_ms": _r(percentile(lat, 50)),
        "p99_ms": _r(percentile(lat, 99)),
        "mean_ms": _r(statistics.fmean(lat)) if lat else None,
        "throughput_rps": _r(len(lat) / raw["wall_s"]) if raw["wall_s"] > 0 else None,
        "wall_s": _r(raw["wall_s"], 3),
        "models": dict(sorted(raw["mix"].items())),
    }


# ---- per-hop latency from Ray's Prometheus export -------------------------------------------

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+(\S+)")


def parse_histogram(
    text: str, application: str, metric: str = HOP_METRIC, key: str = "hop"
) -> dict[str, dict[str, Any]]:
    """Tag `key` -> {"buckets": {le: cumulative count}, "count": n, "sum": total} of one
    histogram of one application, summed over replicas, from a Prometheus text exposition."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.startswith(metric + "_"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(2) or "")), m.group(3)
        if labels.get("application") != application or key not in labels:
            continue
        hist = out.setdefault(labels[key], {"buckets": {}, "count": 0.0, "sum": 0.0})
        v = float(value)
        if name == metric + "_bucket":
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            hist["buckets"][le] = hist["buckets"].get(le, 0.0) + v
        elif name == metric + "_count":
            hist["count"] += v
        elif name == metric + "_sum":
            hist["sum"] += v
    return out


def parse_counter(text: str, application: str, metric: str, **tags: str) -> float:
    """The sum over replicas of one counter of one application, restricted to `tags`."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line) if line.startswith(metric) else None
        if m is None or m.group(1) != metric:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if labels.get("application") == application and all(
            labels.get(k) == v for k, v in tags.items()
        ):
            total += float(m.group(3))
    return total


def parse_hop_histogram(text: str, application: str) -> dict[str, dict[str, Any]]:
    """hop -> histogram of the Ingress's `paretoserve_hop_latency_ms`; plus, under `EMBED`,
    the Embedder's `embed` batches and prompts: {"batches": n, "prompts": n}."""
    out = parse_histogram(text, application)
    batches = parse_histogram(text, application, BATCH_METRIC, "method").get("embed")
    out[EMBED] = {
        "batches": batches["count"] if batches else 0.0,
        "prompts": parse_counter(text, application, PROMPTS_METRIC, method="embed"),
    }
    return out


def histogram_diff(after: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    before = before or {"buckets": {}, "count": 0.0, "sum": 0.0}
    return {
        "buckets": {
            le: n - before["buckets"].get(le, 0.0) for le, n in sorted(after["buckets"].items())
        },
        "count": after["count"] - before["count"],
        "sum": after["sum"] - before["sum"],
    }


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style: linear interpolation inside the bucket holding rank q * count; the
    last finite bound when the rank falls in +Inf."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in items:
        if n >= rank and n > prev_n:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


def hop_stats(hist: dict[str, Any]) -> dict[str, Any]:
    """count (exact) and mean, p50, p99 estimated from the buckets: Ray 2.60 exports a
    histogram's `_sum` as count x bucket midpoint (last finite bound x 2 for +Inf; see
    ray/_private/telemetry/open_telemetry_metric_recorder.py), so even the mean is approximate."""
    count = hist["count"]
    return {
        "count": int(round(count)),
        "mean_ms": _r(hist["sum"] / count) if count > 0 else None,
        "p50_ms": _r(histogram_quantile(hist["buckets"], 0.50)),
        "p99_ms": _r(histogram_quantile(hist["buckets"], 0.99)),
        "approx": True,
    }


class HopScraper:
    """Reads the Ingress's hop histogram of one application from Ray's metrics export."""

    def __init__(self, port: int, application: str) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.application = application

    def scrape(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(self.url, timeout=10)
        r.raise_for_status()
        return parse_hop_histogram(r.text, self.application)

    async def settled(self, expected_total: int, timeout_s: float = 60.0) -> dict[str, Any]:
        """The histograms once the export shows at least `expected_total` `total` hops and as
        many embedded prompts (replicas push their metrics to the export every
        METRICS_REPORT_MS, each on its own clock)."""
        deadline = time.monotonic() + timeout_s
        while True:
            hist = await asyncio.to_thread(self.scrape)
            total = hist.get("total", {}).get("count", 0.0)
            embedded = hist[EMBED]["prompts"]
            if total >= expected_total and embedded >= expected_total:
                return hist
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"metrics export shows {total:.0f} requests and {embedded:.0f} embedded "
                    f"prompts, expected {expected_total}, after {timeout_s:.0f}s"
                )
            await asyncio.sleep(0.5)


# ---- per-hop latency through handles (the fallback) -----------------------------------------


async def hops_via_handles(
    app_name: str, prompts: Sequence[str], model: str, concurrency: int, requests: int
) -> dict[str, dict[str, Any]]:
    """Time the hops the Ingress makes, calling the deployments directly through handles with
    `concurrency` closed-loop workers: embed -> route -> provider.complete -> charge."""
    from ray import serve

    from core.method.costs import realised_cost_usd
    from core.service.protocol import ChatCompletionRequest, ProviderRequest

    embedder = serve.get_deployment_handle("Embedder", app_name)
    router = serve.get_deployment_handle("Router", app_name)
    providers: dict[str, Any] = {}
    times: dict[str, list[float]] = {h: [] for h in HOPS}
    counter = itertools.count()
    route_model = None if model == "auto" else model

    async def timed(hop: str, call: Awaitable[Any]) -> Any:
        start = time.perf_counter()
        result = await call
        times[hop].append((time.perf_counter() - start) * 1000)
        return result

    async def worker() -> None:
        while (i := next(counter)) < requests:
            text = prompts[i % len(prompts)]
            start = time.perf_counter()
            x = await timed("embed", embedder.embed.remote(text))
            d = await timed("route", router.route.remote(x, None, route_model))
            spec = d.spec
            chat = ChatCompletionRequest(messages=[{"role": "user", "content": text}])
            req = ProviderRequest.from_chat(d.request_id, chat, spec)
            if spec.provider not in providers:
                providers[spec.provider] = serve.get_deployment_handle(
                    f"Provider_{spec.provider}", app_name
                )
            resp = await timed("provider", providers[spec.provider].complete.remote(req))
            u = resp.usage
            cost = realised_cost_usd(
                u.prompt_tokens, u.completion_tokens, spec.input_per_m, spec.output_per_m
            )
            await timed("charge", router.charge.remote(d.request_id, cost, spec.id))
            times["total"].append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        hop: {
            "count": len(v),
            "mean_ms": _r(statistics.fmean(v)) if v else None,
            "approx": False,
            "p50_ms": _r(percentile(v, 50)),
            "p99_ms": _r(percentile(v, 99)),
        }
        for hop, v in times.items()
    }


# ---- the run --------------------------------------------------------------------------------


def _wait_ready(url: str, timeout_s: float = 300.0) -> None:
    """Until one chat completion succeeds (the Embedder has loaded MiniLM)."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "warm-up"}]}
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url, json=body, timeout=60)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s ({last})")


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def serve_processes() -> dict[str, list[int]]:
    """This cluster's Serve processes by role: "proxy", "controller", "<app>#<deployment>" per
    replica, and "client" (this process: the load generator and the Ray driver). Empty if
    Ray's actor table cannot be read (it is a private API)."""
    try:
        from ray._private import state

        actors = list(state.actors().values())
    except Exception:  # noqa: BLE001 - CPU accounting is optional
        return {}
    out: dict[str, list[int]] = {"client": [os.getpid()]}
    for a in actors:
        name, cls, pid = a.get("Name") or "", a.get("ActorClassName") or "", a.get("Pid")
        if a.get("State") != "ALIVE" or not pid:
            continue
        if name.startswith("SERVE_REPLICA::"):
            label = name[len("SERVE_REPLICA::") :].rsplit("#", 1)[0]
        elif cls == "ProxyActor":
            label = "proxy"
        elif cls == "ServeController":
            label = "controller"
        else:
            continue
        out.setdefault(label, []).append(int(pid))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def cpu_probe(processes: dict[str, list[int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, pids in processes.items():
        times = [t for t in map(cpu_seconds, pids) if t is not None]
        if times:
            out[label] = sum(times)
    return out


def cpu_per_request(
    before: dict[str, float] | None, after: dict[str, float] | None, requests: int
) -> dict[str, float] | None:
    """CPU milliseconds per timed request of each process role (and `all`), busiest first."""
    if not before or not after or requests <= 0:
        return None
    per = {k: (after[k] - before[k]) * 1000 / requests for k in after if k in before}
    out = {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}
    out["all"] = round(sum(per.values()), 2)
    return out


def _replicas(app_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Running replicas per deployment of each application."""
    from ray import serve

    status = serve.status()
    out: dict[str, dict[str, int]] = {}
    for name in app_names:
        app = status.applications.get(name)
        if app is None:
            continue
        out[name] = {
            dep: sum(
                n for st, n in d.replica_states.items() if getattr(st, "value", st) == "RUNNING"
            )
            for dep, d in app.deployments.items()
        }
    return out


def _progress(message: str) -> None:
    print(f"[bench_service {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_time_scale(
    time_scale: float,
    opts: argparse.Namespace,
    prompts: Sequence[str],
    base_url: str,
    metrics_port: int | None,
    run_index: itertools.count,
) -> dict[str, Any]:
    from ray import serve

    from benchmarks.passthrough_app import build_passthrough
    from graphs.app import build_app

    tag = f"ts{time_scale:g}".replace(".", "_")
    names = {"router": f"router_{tag}", "passthrough": f"passthrough_{tag}"}
    urls = {app: f"{base_url}/{name}{CHAT_PATH}" for app, name in names.items()}
    state_dir = Path(tempfile.mkdtemp(prefix="bench-service-", dir=opts.state_dir))
    args = app_args(state_dir, time_scale, opts.embed_batch_wait_s)
    model_id = opts.passthrough_model or args["models"][0]["id"]
    sim = args["providers"]["simulated"]["options"]
    # At time_scale 0 the bandit decides; otherwise both apps answer with the same model.
    models = {"router": "auto" if time_scale == 0 else model_id, "passthrough": model_id}

    t0 = time.perf_counter()
    serve.run(build_app(args), name=names["router"], route_prefix=f"/{names['router']}")
    serve.run(
        build_passthrough(args["models"], sim, model_id),
        name=names["passthrough"],
        route_prefix=f"/{names['passthrough']}",
    )
    for url in urls.values():
        _wait_ready(url)
    startup_s = time.perf_counter() - t0
    _progress(f"time_scale {time_scale:g}: both apps answer after {startup_s:.1f}s")
    router_ok = 1  # the readiness check

    # Warm-up: each app, at the highest concurrency, on prompts the timed runs do not use.
    warm_prompts = prompts[-max(opts.warmup, 1) :]
    for app in ("router", "passthrough"):
        raw = asyncio.run(
            drive(
                urls[app], warm_prompts, models[app], max(opts.concurrency), opts.warmup, warm=True
            )
        )
        if app == "router":
            router_ok += len(raw["latencies"]) + raw["warm_ok"]

    scraper = HopScraper(metrics_port, names["router"]) if metrics_port else None
    runs: list[dict[str, Any]] = []
    hops: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for c in opts.concurrency:
        k = next(run_index)
        order = ("router", "passthrough") if k % 2 == 0 else ("passthrough", "router")
        by_app: dict[str, dict[str, Any]] = {}
        for position, app in enumerate(order):
            before: dict[str, Any] = {}

            async def snapshot_before(
                warm_ok: int, app: str = app, before: dict[str, Any] = before, seen: int = router_ok
            ) -> None:
                if scraper is not None and app == "router":
                    # every earlier router answer, plus this run's connection warm-ups
                    before.update(await scraper.settled(seen + warm_ok))

            raw = asyncio.run(
                drive(
                    urls[app],
                    prompts,
                    models[app],
                    c,
                    opts.requests,
                    before_timed=snapshot_before,
                    probe=functools.partial(cpu_probe, serve_processes()),
                )
            )
            row = {
                "time_scale": time_scale,
                "concurrency": c,
                "app": app,
                "position": position,
                "model": models[app],
                **summarise(raw, opts.requests),
                "embed_batches": None,
                "embed_mean_batch": None,
                "cpu_ms_per_request": cpu_per_request(
                    raw["probe_before"], raw["probe_after"], len(raw["latencies"])
                ),
            }
            _progress(
                f"time_scale {time_scale:g}, C={c}, {app}: p50 {row['p50_ms']} ms, "
                f"p99 {row['p99_ms']} ms, {row['throughput_rps']} req/s, {row['errors']} errors"
            )
            runs.append(row)
            by_app[app] = row
            if app == "router":
                router_ok += raw["warm_ok"] + row["ok"]
                if scraper is not None:
                    after = asyncio.run(scraper.settled(router_ok))
                    batches = after[EMBED]["batches"] - before[EMBED]["batches"]
                    embedded = after[EMBED]["prompts"] - before[EMBED]["prompts"]
                    if batches > 0:
                        row["embed_batches"] = int(round(batches))
                        row["embed_mean_batch"] = round(embedded / batches, 2)
                    for hop in HOPS:
                        if hop in after:
                            stats = hop_stats(histogram_diff(after[hop], before.get(hop)))
                            hops.append(
                                {
                                    "time_scale": time_scale,
                                    "concurrency": c,
                                    "hop": hop,
                                    "method": "metrics",
                                    **stats,
                                }
                            )
        r, p = by_app["router"], by_app["passthrough"]
        comparisons.append(
            {
                "time_scale": time_scale,
                "concurrency": c,
                "p50_ratio": _ratio(r["p50_ms"], p["p50_ms"]),
                "p99_ratio": _ratio(r["p99_ms"], p["p99_ms"]),
                "throughput_ratio": _ratio(r["throughput_rps"], p["throughput_rps"]),
                "first": order[0],
            }
        )
    if scraper is None:  # the fallback: time the hops through handles, after the HTTP runs
        for c in opts.concurrency:
            stats = asyncio.run(
                hops_via_handles(names["router"], prompts, models["router"], c, opts.requests)
            )
            for hop, s in stats.items():
                hops.append(
                    {
                        "time_scale": time_scale,
                        "concurrency": c,
                        "hop": hop,
                        "method": "handles",
                        **s,
                    }
                )
    replicas = _replicas(list(names.values()))
    for name in names.values():
        serve.delete(name)
    return {
        "runs": runs,
        "comparisons": comparisons,
        "hops": hops,
        "setup": {
            "time_scale": time_scale,
            "apps": names,
            "models": models,
            "startup_s": round(startup_s, 1),
            "embedder_args": args.get("embedder", {}),
            "replicas_at_end": replicas,
            "state_dir": str(state_dir),
        },
    }


def _metrics_reachable(port: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return False


def git_revision() -> dict[str, Any] | None:
    """The checkout's commit and whether tracked files differ from it (read-only git calls)."""
    import subprocess

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "tracked_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def run(opts: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    import ray
    from ray import serve

    prompts, source = load_prompts(opts.seed)
    http_port = opts.http_port or free_port()
    metrics_port = free_port() if opts.hops != "handles" else None
    init_kwargs: dict[str, Any] = {
        "address": "local",
        "num_cpus": opts.ray_cpus,
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if metrics_port is not None:
        init_kwargs["_metrics_export_port"] = metrics_port
        init_kwargs["_system_config"] = {"metrics_report_interval_ms": METRICS_REPORT_MS}
    if ray.is_initialized():
        ray.shutdown()
    started = time.perf_counter()
    machine_before = machine_info("ray", "httpx")
    machine_before["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    revision = git_revision()  # at the start: the code the apps are built from
    os.environ.update(fast_path_ports())  # for the cluster ray.init starts (fast paths on)
    ray.init(**init_kwargs)
    result: dict[str, Any] = {"runs": [], "comparisons": [], "hops": [], "setups": []}
    try:
        if metrics_port is not None and not _metrics_reachable(metrics_port):
            if opts.hops == "metrics":
                raise RuntimeError(f"Ray's metrics export is not reachable on port {metrics_port}")
            print("metrics export unreachable: timing hops through handles", file=sys.stderr)
            metrics_port = None
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        base_url = f"http://127.0.0.1:{http_port}"
        run_index = itertools.count()
        for ts in opts.time_scale:
            part = run_time_scale(ts, opts, prompts, base_url, metrics_port, run_index)
            for key in ("runs", "comparisons", "hops"):
                result[key] += part[key]
            result["setups"].append(part["setup"])
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    machine_before["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result.update(
        schema=SCHEMA,
        git=revision,
        command="python -m benchmarks.bench_service " + shlex.join(opts.argv),
        hop_method="metrics" if metrics_port is not None else "handles",
        duration_s=round(time.perf_counter() - started, 1),
        config={
            "concurrency": opts.concurrency,
            "requests": opts.requests,
            "warmup": opts.warmup,
            "time_scales": opts.time_scale,
            "passthrough_model": result["setups"][0]["models"]["passthrough"],
            "prompts": source,
            "n_prompts": len(prompts),
            "prompt_chars": {
                "p50": _r(percentile([len(p) for p in prompts], 50), 0),
                "p99": _r(percentile([len(p) for p in prompts], 99), 0),
            },
            "ray_logical_cpus": opts.ray_cpus,
        },
        machine=machine_before,
    )
    return result


# ---- output ---------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}"
    return str(x)


_CPU_COLUMNS = (
    "client",
    "proxy",
    "Ingress",
    "Embedder",
    "Router",
    "Provider_simulated",
    "Passthrough",
)


def _cpu_columns(cpu: dict[str, float], setups: list[dict], row: dict[str, Any]) -> list[str]:
    """Cells of one CPU row: each column's ms (bracketed when the process belongs to the app
    not being driven), then the rest summed as `other`."""
    apps = next(s["apps"] for s in setups if s["time_scale"] == row["time_scale"])
    driven = apps[row["app"]]
    cells: dict[str, str] = {}
    other = 0.0
    for label, ms in cpu.items():
        if label == "all":
            continue
        app, _, role = label.rpartition("#")
        if role in _CPU_COLUMNS:
            text = _fmt(ms) if not app or app == driven else f"[{_fmt(ms)}]"
            cells[role] = text
        else:
            other += ms
    return [cells.get(c, "-") for c in _CPU_COLUMNS] + [_fmt(round(other, 2))]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| time_scale | C | app | model | p50 ms | p99 ms | req/s | errors | embed batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['time_scale']:g} | {r['concurrency']} | {r['app']} | {r['model']} | "
            f"{_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['throughput_rps'])} | "
            f"{r['errors']} | {_fmt(r['embed_mean_batch'])} |"
        )
    lines += [
        "",
        "| time_scale | C | p50 router/passthrough | p99 router/passthrough | "
        "throughput router/passthrough | first |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["comparisons"]:
        lines.append(
            f"| {c['time_scale']:g} | {c['concurrency']} | {_fmt(c['p50_ratio'])} | "
            f"{_fmt(c['p99_ratio'])} | {_fmt(c['throughput_ratio'])} | {c['first']} |"
        )
    cpu_rows = [r for r in result["runs"] if r.get("cpu_ms_per_request")]
    if cpu_rows:
        lines += [
            "",
            "CPU ms per request by process (both apps' processes; the idle app's in brackets):",
            "",
            "| time_scale | C | app | all | " + " | ".join(_CPU_COLUMNS) + " | other |",
            "| --- | --- | --- | --- | " + " | ".join("---" for _ in _CPU_COLUMNS) + " | --- |",
        ]
        for r in cpu_rows:
            cols = _cpu_columns(r["cpu_ms_per_request"], result["setups"], r)
            lines.append(
                f"| {r['time_scale']:g} | {r['concurrency']} | {r['app']} | "
                f"{_fmt(r['cpu_ms_per_request']['all'])} | " + " | ".join(cols) + " |"
            )
    lines += [
        "",
        f"Per-hop latency inside the router app (method: {result['hop_method']}):",
        "",
        "| time_scale | C | hop | count | mean ms | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in result["hops"]:
        lines.append(
            f"| {h['time_scale']:g} | {h['concurrency']} | {h['hop']} | {h['count']} | "
            f"{_fmt(h['mean_ms'])} | {_fmt(h['p50_ms'])} | {_fmt(h['p99_ms'])} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_service", description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--requests", type=int, default=400, help="timed requests per app and level")
    p.add_argument(
        "--time-scale",
        type=float,
        nargs="+",
        default=[0.0],
        help="simulated provider time scales to measure, each with fresh apps (0 = instant)",
    )
    p.add_argument("--warmup", type=int, default=64, help="untimed requests per app per scale")
    p.add_argument(
        "--hops",
        choices=("auto", "metrics", "handles"),
        default="auto",
        help="per-hop latency from Ray's metrics export, or by calling deployments via handles",
    )
    p.add_argument("--passthrough-model", default=None, help="default: the first model")
    p.add_argument(
        "--embed-batch-wait-s",
        type=float,
        default=None,
        help="override the Embedder's batch_wait_timeout_s (default: serve_config.yaml's)",
    )
    p.add_argument("--state-dir", default=None, help="parent of the temp state dir")
    p.add_argument("--http-port", type=int, default=0, help="Serve's proxy port (0 = free)")
    p.add_argument("--ray-cpus", type=int, default=8, help="logical CPUs for ray.init")
    p.add_argument("--seed", type=int, default=0, help="prompt shuffle seed")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    opts = p.parse_args(list(argv))
    if any(c < 1 for c in opts.concurrency) or opts.requests < 1 or opts.warmup < 0:
        p.error("--concurrency and --requests must be >= 1, --warmup >= 0")
    if opts.embed_batch_wait_s is not None and not 0 <= opts.embed_batch_wait_s <= 10:
        p.error("--embed-batch-wait-s must be in [0, 10]")
    if any(ts < 0 or not math.isfinite(ts) for ts in opts.time_scale):
        p.error("--time-scale values must be finite and >= 0")
    opts.argv = list(argv)
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(opts)
    print(markdown(result))
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {opts.json}")
    errors = sum(r["errors"] for r in result["runs"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
