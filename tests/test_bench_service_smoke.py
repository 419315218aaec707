"""Smoke test of the service benchmark (benchmarks/bench_service.py) and its histogram maths.

Tiny settings, a real local Ray in a subprocess, then the JSON's schema and zero errors (marked
`ray`). No timing assertions: speeds are recorded in docs/benchmarks.md, not asserted. Plus a
pure test of the Prometheus histogram arithmetic the per-hop figures rest on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_service import (
    EMBED,
    HOPS,
    SCHEMA,
    histogram_diff,
    histogram_quantile,
    parse_hop_histogram,
)

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY, REQUESTS = 2, 10

RUN_KEYS = {
    "time_scale",
    "concurrency",
    "app",
    "position",
    "model",
    "requests",
    "ok",
    "errors",
    "error_kinds",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "throughput_rps",
    "wall_s",
    "models",
    "embed_batches",
    "embed_mean_batch",
    "cpu_ms_per_request",
}
HOP_KEYS = {
    "time_scale",
    "concurrency",
    "hop",
    "method",
    "count",
    "mean_ms",
    "p50_ms",
    "p99_ms",
    "approx",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-service") / "out.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_service",
        "--concurrency",
        str(CONCURRENCY),
        "--requests",
        str(REQUESTS),
        "--warmup",
        "4",
        "--time-scale",
        "0",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.ray
def test_schema_and_zero_errors(result: dict) -> None:
    assert result["schema"] == SCHEMA
    assert result["hop_method"] in {"metrics", "handles"}
    assert result["config"]["concurrency"] == [CONCURRENCY]
    assert result["config"]["requests"] == REQUESTS
    machine_keys = {"cpu_count", "ray", "python", "loadavg_before", "loadavg_after"}
    assert machine_keys <= set(result["machine"])
    assert result["command"].startswith("python -m benchmarks.bench_service")

    runs = result["runs"]
    assert sorted(r["app"] for r in runs) == ["passthrough", "router"]
    for r in runs:
        assert set(r) == RUN_KEYS, r
        assert (r["time_scale"], r["concurrency"], r["requests"]) == (0.0, CONCURRENCY, REQUESTS)
        assert r["errors"] == 0 and r["error_kinds"] == {}, r
        assert r["ok"] == REQUESTS
        assert sum(r["models"].values()) == REQUESTS
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["throughput_rps"] > 0
        cpu = r["cpu_ms_per_request"]  # None only where Ray's actor table cannot be read
        assert cpu is None or ("all" in cpu and "client" in cpu and "proxy" in cpu), cpu
    router = next(r for r in runs if r["app"] == "router")
    passthrough = next(r for r in runs if r["app"] == "passthrough")
    assert router["model"] == "auto"
    assert passthrough["embed_batches"] is None and passthrough["embed_mean_batch"] is None
    if result["hop_method"] == "metrics":  # the Embedder's batches hold this run's prompts
        assert router["embed_batches"] * router["embed_mean_batch"] == pytest.approx(
            REQUESTS, rel=0.02
        )
    assert list(passthrough["models"]) == [result["config"]["passthrough_model"]]

    (cmp,) = result["comparisons"]
    assert cmp["concurrency"] == CONCURRENCY and cmp["first"] in {"router", "passthrough"}
    assert cmp["p50_ratio"] == pytest.approx(router["p50_ms"] / passthrough["p50_ms"], rel=1e-2)
    assert cmp["throughput_ratio"] > 0

    hops = {h["hop"]: h for h in result["hops"]}
    assert set(hops) == set(HOPS)
    for h in hops.values():
        assert set(h) == HOP_KEYS, h
        assert h["method"] == result["hop_method"]
        assert h["approx"] is (h["method"] == "metrics")
        assert h["count"] == REQUESTS, h  # exactly this run's requests, warm-ups excluded
        assert h["mean_ms"] is not None and h["mean_ms"] >= 0

    (setup,) = result["setups"]
    assert setup["models"] == {"router": "auto", "passthrough": passthrough["model"]}


PROM = """\
# TYPE ray_paretoserve_hop_latency_ms histogram
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="1.0",replica="x"} 1.0
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="2.0",replica="x"} 3.0
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="+Inf",replica="x"} 4.0
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="1.0",replica="y"} 1.0
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="2.0",replica="y"} 1.0
ray_paretoserve_hop_latency_ms_bucket{application="a",hop="embed",le="+Inf",replica="y"} 2.0
ray_paretoserve_hop_latency_ms_count{application="a",hop="embed",replica="x"} 4.0
ray_paretoserve_hop_latency_ms_count{application="a",hop="embed",replica="y"} 2.0
ray_paretoserve_hop_latency_ms_sum{application="a",hop="embed",replica="x"} 9.0
ray_paretoserve_hop_latency_ms_sum{application="a",hop="embed",replica="y"} 7.5
ray_paretoserve_hop_latency_ms_count{application="b",hop="embed",replica="z"} 99.0
ray_paretoserve_embed_batch_size_count{application="a",method="embed",replica="e"} 3.0
ray_paretoserve_embed_batch_size_count{application="a",method="embed_many",replica="e"} 5.0
ray_paretoserve_embedded_prompts_total{application="a",method="embed",replica="e"} 7.0
ray_paretoserve_embedded_prompts_total{application="a",method="embed",replica="f"} 2.0
ray_paretoserve_embedded_prompts_total{application="a",method="embed_many",replica="e"} 50.0
ray_paretoserve_embedded_prompts_total{application="b",method="embed",replica="g"} 40.0
"""


def test_prometheus_histogram_parsing() -> None:
    hist = parse_hop_histogram(PROM, "a")
    assert set(hist) == {"embed", EMBED}
    assert hist[EMBED] == {"batches": 3.0, "prompts": 9.0}
    embed = hist["embed"]
    assert embed["buckets"] == {1.0: 2.0, 2.0: 4.0, float("inf"): 6.0}
    assert (embed["count"], embed["sum"]) == (6.0, 16.5)
    # rank 3 of 6 falls in (1, 2]: 2 below, 2 inside -> halfway
    assert histogram_quantile(embed["buckets"], 0.5) == pytest.approx(1.5)
    # rank in +Inf -> the last finite bound
    assert histogram_quantile(embed["buckets"], 0.99) == pytest.approx(2.0)
    before = {"buckets": {1.0: 1.0, 2.0: 1.0, float("inf"): 1.0}, "count": 1.0, "sum": 0.5}
    diff = histogram_diff(embed, before)
    assert diff == {"buckets": {1.0: 1.0, 2.0: 3.0, float("inf"): 5.0}, "count": 5.0, "sum": 16.0}
