"""Embedding throughput: unbatched torch vs batched encode vs the Embedder on Ray Serve.

    python -m benchmarks.bench_embedder [--n 512] [--repeats 3] [--threads 1] [--json OUT]
                                        [--no-serve]

Modes, all on the same prompts and all producing the full context (MiniLM + projection):

1. `torch, 1 prompt per call`: one prompt per encode call, sequentially, in this process.
2. `torch, batch B` (B = 8, 32, 64), in this process: "padded" = one forward pass per batch,
   every prompt padded to the batch's longest; "length-sorted passes of C" = the batch sorted
   by length and run in forward passes of C (what the Embedder does on CPU, C = 4).
3. Ray Serve, one Embedder replica, a client keeping 32 requests in flight: `embed`
   (cross-request batching while a batch encodes, core/service/busy_batcher.py; before
   2026-12-06 Ray's `@serve.batch`) vs `embed_many([p])` (one prompt per request, no
   batching); then `embed` (before 2026-12-06 with `batch_wait_timeout_s=0.05`), with
   length-sorted passes of 4 and with each batch as one padded pass (`encode_batch_size=32`).

Each mode runs `--repeats` times in interleaved rounds, so a burst of load from other processes
falls on every mode alike; the table shows the best round (timeit's convention: other load only
slows a run down) and the median, and for in-process modes also prompts per CPU-second of this
process, which contention barely moves. Ratios are best against best of mode 1, same run.
This process and the replica use the same number of torch threads (`--threads`, also the
replica's num_cpus), so the Serve rows differ from the in-process rows by Serve's overhead and
batching only; the client, the handle calls and the replica share the machine. Prompts come
from ../shared/data/val.jsonl when present, else a built-in set of ~50 varied prompts.

Ray is started locally (logical CPUs, no dashboard, token auth off unless RAY_AUTH_MODE is set)
and shut down at the end. This harness imports `deployments.embedder` (lazily): it benchmarks
the deployment itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import VAL_PROMPTS, machine_info, percentile, val_prompts
from core.replay.prompts import BUILTIN_PROMPTS

BATCH_SIZES = (8, 32, 64)
CONCURRENCY = 32


def load_prompts(n: int) -> tuple[list[str], str]:
    """n prompts (cycled if needed) and where they came from."""
    prompts, source = val_prompts(), str(VAL_PROMPTS)
    if not prompts:
        prompts, source = BUILTIN_PROMPTS, f"built-in set of {len(BUILTIN_PROMPTS)} prompts"
    return [prompts[i % len(prompts)] for i in range(n)], source


def load_pool() -> list[str]:
    """Every distinct prompt of ../shared/data/val.jsonl (else the built-in set), file order."""
    return list(dict.fromkeys(val_prompts())) or list(BUILTIN_PROMPTS)


def _summary(name: str, n: int, rates: list[float], **extra: Any) -> dict[str, Any]:
    """Best of the rounds (timeit's convention: other load on the machine only slows a run
    down), with the median and every run kept in the JSON."""
    return {
        "mode": name,
        "prompts": n,
        "prompts_per_s": max(rates),
        "median_prompts_per_s": statistics.median(rates),
        "runs": [round(r, 2) for r in rates],
        **extra,
    }


def _rate(n: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Prompts per wall-clock second and per CPU-second of this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of two (n, d) arrays: min and mean."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def bench_in_process(prompts: Sequence[str], repeats: int) -> list[dict[str, Any]]:
    """Modes 1 and 2, in interleaved rounds (machine noise falls on every mode alike).

    "padded" = one forward pass per batch; "length-sorted passes of C" = the batch sorted by
    length and run in passes of C prompts, as the Embedder does on CPU. Modes whose vectors
    differ from the reference (truncation, ONNX Runtime, the static encoder) also report the
    cosine of their raw embeddings and of their contexts to the reference's, over all the
    prompts."""
    import torch

    from core.encoding.features import load_projection
    from core.encoding.minilm import MiniLMEncoder
    from core.encoding.minilm_onnx import OnnxMiniLMEncoder
    from core.encoding.minilm_static import StaticMiniLMEncoder
    from core.service.settings import CPU_ENCODE_BATCH_SIZE as chunk

    threads = torch.get_num_threads()
    projection = load_projection()  # applied by hand: a max128 encoder is not its encoder
    padded = MiniLMEncoder(device="cpu", batch_size=max(BATCH_SIZES))
    encoders: list[tuple[str, Any, int]] = [
        ("torch, 1 prompt per call (baseline)", padded, 1),
        ("torch, batch 32, padded", padded, 32),
        (f"torch, batch 32, length-sorted passes of {chunk}", None, 32),
        (f"torch, max_seq_length 128, batch 32, passes of {chunk}", None, 32),
        ("onnx-fp32, batch 32, passes of 4", None, 32),
        ("onnx-int8, 1 prompt per call", None, 1),
        ("onnx-int8, batch 32, passes of 1", None, 32),
        ("onnx-int8, batch 32, passes of 4", None, 32),
        ("onnx-int8-full (no smoothing), batch 32, passes of 1", None, 32),
        ("static, 1 prompt per call", None, 1),
        ("static, batch 32", None, 32),
    ]
    builders: dict[int, Callable[[], Any]] = {
        2: lambda: MiniLMEncoder(device="cpu", batch_size=chunk),
        3: lambda: MiniLMEncoder(device="cpu", batch_size=chunk, max_seq_length=128),
        4: lambda: OnnxMiniLMEncoder("fp32", batch_size=4, threads=threads),
        5: lambda: OnnxMiniLMEncoder("int8", batch_size=1, threads=threads),
        6: lambda: OnnxMiniLMEncoder("int8", batch_size=1, threads=threads),
        7: lambda: OnnxMiniLMEncoder("int8", batch_size=4, threads=threads),
        8: lambda: OnnxMiniLMEncoder("int8-full", batch_size=1, threads=threads),
        9: lambda: StaticMiniLMEncoder(),
        10: lambda: StaticMiniLMEncoder(),
    }
    encoders = [(n, e or builders[i](), b) for i, (n, e, b) in enumerate(encoders)]

    def run_mode(encoder: Any, b: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, len(prompts), b):
                projection.apply(encoder.encode(prompts[i : i + b]))

        return run

    modes = [(name, run_mode(enc, b)) for name, enc, b in encoders]
    ref = padded.encode(list(prompts))  # sentence-transformers sorts, passes of 64
    ref_ctx = projection.apply(ref)
    quality: dict[str, dict[str, float]] = {}
    for name, enc, b in encoders[2:]:
        emb = np.concatenate([enc.encode(prompts[i : i + b]) for i in range(0, len(prompts), b)])
        c, cc = _cosines(emb, ref), _cosines(projection.apply(emb), ref_ctx)
        quality[name] = {"cos_min": c["min"], "cos_mean": c["mean"], "ctx_cos_min": cc["min"]}
    rates: dict[str, list[float]] = {name: [] for name, _ in modes}
    cpu_rates: dict[str, list[float]] = {name: [] for name, _ in modes}
    for _ in range(repeats):
        for name, fn in modes:
            wall, cpu = _rate(len(prompts), fn)
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
    return [
        _summary(
            name,
            len(prompts),
            rates[name],
            per_cpu_s=max(cpu_rates[name]),
            **quality.get(name, {}),
        )
        for name, _ in modes
    ]


async def _drive(call: Callable[[str], Any], prompts: Sequence[str]) -> tuple[float, list[float]]:
    """Send every prompt with at most CONCURRENCY in flight; wall time and per-call latencies."""
    sem = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []

    async def one(p: str) -> None:
        async with sem:
            t0 = time.perf_counter()
            await call(p)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*[one(p) for p in prompts])
    return time.perf_counter() - t0, latencies


def _ms(latencies: list[float], q: float) -> float:
    return percentile(latencies, q) * 1000


_REPLICA_KEYS = (
    "backend",
    "device",
    "torch_threads",
    "max_batch_size",
    "encode_batch_size",
    "cache_capacity",
)

# (label, EmbedderArgs, replicas, stream): stream "same" = the benchmark's prompts every round;
# "unique" = fresh, never-seen prompts every round (a cache can only miss); "repeats" = each
# round draws n requests uniformly from its own n/2 fresh prompts (~57% of requests repeat one).
SERVE_CONFIGS: list[tuple[str, dict[str, Any], int, str]] = [
    ("torch", {}, 1, "same"),
    ("onnx-int8", {"backend": "onnx-int8"}, 1, "same"),
    ("onnx-int8-2rep", {"backend": "onnx-int8"}, 2, "same"),
    (
        "onnx-int8-lru-unique",
        {"backend": "onnx-int8", "cache_size": 8192},
        1,
        "unique",
    ),
    (
        "onnx-int8-lru-repeats",
        {"backend": "onnx-int8", "cache_size": 8192},
        1,
        "repeats",
    ),
]


def _stream(kind: str, prompts: Sequence[str], pool: Sequence[str], rnd: int) -> list[str]:
    n = len(prompts)
    if kind == "same":
        return list(prompts)
    if kind == "unique":
        return [pool[(rnd * n + i) % len(pool)] for i in range(n)]
    half = n // 2
    fresh = [pool[(rnd * half + i) % len(pool)] for i in range(half)]
    rng = np.random.default_rng(rnd)
    return [fresh[i] for i in rng.integers(0, half, size=n)]


def bench_serve(
    prompts: Sequence[str], pool: Sequence[str], replica_cpus: float, repeats: int
) -> tuple[list[dict], dict]:
    """Mode 3: every configuration deployed at once (one app each), driven in interleaved
    rounds together with the in-process baseline (re-measured here, so the Serve rows' ratios
    are against a baseline taken under the same load)."""
    import ray
    from ray import serve

    from core.encoding.features import FeaturePipeline, load_projection
    from core.encoding.minilm import MiniLMEncoder
    from core.service.settings import Deployments
    from deployments.embedder import Embedder

    baseline = FeaturePipeline(MiniLMEncoder(device="cpu"), load_projection())
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        replica: dict[str, Any] = {"num_cpus": replica_cpus}
        handles = {}
        for label, args, replicas, _ in SERVE_CONFIGS:
            app = Embedder.options(
                ray_actor_options={"num_cpus": replica_cpus},
                max_ongoing_requests=Deployments().embedder.max_ongoing_requests,
                num_replicas=replicas,
                autoscaling_config=None,
            ).bind(args)
            handles[label] = serve.run(app, name=f"bench-embedder-{label}", route_prefix=None)
            info = handles[label].info.remote().result()
            replica[label] = {"replicas": replicas, **{k: info[k] for k in _REPLICA_KEYS}}
        rows = asyncio.run(_serve_rounds(handles, prompts, pool, repeats, baseline))
        return rows, replica
    finally:
        serve.shutdown()
        ray.shutdown()


async def _serve_rounds(
    handles: dict[str, Any],
    prompts: Sequence[str],
    pool: Sequence[str],
    repeats: int,
    baseline: Any,
) -> list[dict[str, Any]]:
    base_name = "torch, 1 prompt per call (baseline, re-measured between Serve rounds)"
    modes: list[tuple[str, str, Callable[[str], Any], str]] = []
    for label, _, replicas, stream in SERVE_CONFIGS:
        h = handles[label]
        desc = f"Serve `embed`, {label}, {replicas} replica{'s' * (replicas > 1)}, {stream} prompts"

        async def embed(p: str, h: Any = h) -> object:
            return await h.embed.remote(p)

        modes.append((desc, label, embed, stream))
        if label == "torch":

            async def embed_single(p: str, h: Any = h) -> object:
                return await h.embed_many.remote([p])

            modes.append(("Serve `embed_many([p])`, torch, unbatched", label, embed_single, stream))
    for _, _, call, _ in modes:
        await _drive(call, BUILTIN_PROMPTS)  # warm-up on prompts outside the streams
    for p in prompts[:16]:
        baseline.contexts([p])
    rates: dict[str, list[float]] = {name: [] for name, *_ in modes}
    rates[base_name] = []
    latencies: dict[str, list[float]] = {name: [] for name, *_ in modes}
    counts: dict[str, dict[str, int]] = {
        name: {"batches": 0, "prompts": 0, "hits": 0, "misses": 0} for name, *_ in modes
    }
    for rnd in range(repeats):
        t0 = time.perf_counter()
        for p in prompts:
            baseline.contexts([p])
        rates[base_name].append(len(prompts) / (time.perf_counter() - t0))
        for name, label, call, stream in modes:
            texts = _stream(stream, prompts, pool, rnd)
            before = await handles[label].info.remote()
            seconds, lat = await _drive(call, texts)
            after = await handles[label].info.remote()  # one replica's counters
            rates[name].append(len(texts) / seconds)
            latencies[name] += lat
            c = counts[name]
            c["batches"] += after["batches"] - before["batches"]
            c["prompts"] += len(texts)
            c["hits"] += after["cache_hits"] - before["cache_hits"]
            c["misses"] += after["cache_misses"] - before["cache_misses"]
    rows = [_summary(base_name, len(prompts), rates[base_name])]
    for name, label, _call, _ in modes:
        lat = latencies[name]
        c = counts[name]
        extra: dict[str, Any] = {"p50_ms": _ms(lat, 50), "p99_ms": _ms(lat, 99)}
        single = "2rep" not in label
        if single and c["batches"] and "embed_many" not in name:
            extra["mean_batch"] = round((c["prompts"] - c["hits"]) / c["batches"], 2)
        if single and c["hits"] + c["misses"]:
            extra["hit_rate"] = round(c["hits"] / (c["hits"] + c["misses"]), 3)
        rows.append(_summary(name, len(prompts), rates[name], **extra))
    return rows


def token_lengths(prompts: Sequence[str], max_seq_length: int = 256) -> dict[str, int]:
    """Token counts as MiniLM reads them (truncated): padding waste depends on their spread."""
    from transformers import AutoTokenizer

    from core.encoding.minilm import default_model_path

    tok = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    counts = [len(tok(p, truncation=True, max_length=max_seq_length)["input_ids"]) for p in prompts]
    return {
        "p50": int(percentile(counts, 50)),
        "p90": int(percentile(counts, 90)),
        "p99": int(percentile(counts, 99)),
        "max": max(counts),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| mode | prompts/s | x baseline | median prompts/s | prompts/CPU-s | cosine min / mean "
        "| context cosine min | p50 ms | p99 ms | mean batch | hit rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else ""

    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['prompts_per_s']:.1f} | {r['ratio']:.2f} "
            f"| {r['median_prompts_per_s']:.1f} | {cell(r, 'per_cpu_s', '.1f')} "
            + (f"| {r['cos_min']:.4f} / {r['cos_mean']:.4f} " if "cos_min" in r else "| ")
            + f"| {cell(r, 'ctx_cos_min', '.4f')} "
            f"| {cell(r, 'p50_ms', '.0f')} | {cell(r, 'p99_ms', '.0f')} "
            f"| {cell(r, 'mean_batch', '.1f')} | {cell(r, 'hit_rate', '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_embedder", description=__doc__
    )
    parser.add_argument("--n", type=int, default=512, help="prompts per mode (default 512)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in this process and num_cpus of the replica (default 1: the "
        "Embedder's default replica has num_cpus 0.5, hence 1 thread)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds per mode; the median is shown"
    )
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve modes")
    args = parser.parse_args(argv)
    if args.n < 64:
        parser.error("--n must be >= 64")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster

    import torch

    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    machine = machine_info("torch", "sentence_transformers", "onnxruntime", "ray")
    machine["torch_threads"] = torch.get_num_threads()
    machine["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    prompts, source = load_prompts(args.n)
    rows = bench_in_process(prompts, args.repeats)
    replica: dict[str, Any] | None = None
    if not args.no_serve:
        serve_rows, replica = bench_serve(prompts, load_pool(), float(args.threads), args.repeats)
        rows += serve_rows
    # Ratios: in-process rows against the in-process baseline; Serve rows against the baseline
    # re-measured between the Serve rounds (the first Serve row).
    base = rows[0]["prompts_per_s"]
    for r in rows:
        if r["mode"].startswith("torch, 1 prompt per call (baseline, re-measured"):
            base = r["prompts_per_s"]
        r["ratio"] = r["prompts_per_s"] / base
    machine["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result = {
        "command": " ".join(["python -m benchmarks.bench_embedder", *(argv or sys.argv[1:])]),
        "prompts_source": source,
        "n": args.n,
        "concurrency": CONCURRENCY,
        "repeats": args.repeats,
        "token_lengths": token_lengths(prompts),
        "machine": machine,
        "replica": replica,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2, default=str))
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
