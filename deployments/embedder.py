"""The Embedder deployment: prompts in, bandit contexts out (MiniLM + projection + bias).

A thin adapter of `core.features.FeaturePipeline` to Ray Serve:

- `embed(text)` is the request path. Calls from many concurrent requests are gathered by
  `@serve.batch` (up to `max_batch_size`, waiting at most `batch_wait_timeout_s`) and encoded
  together in a worker thread, so the replica's event loop keeps accepting requests. A batch
  is sorted by length and run in forward passes of `encode_batch_size` prompts (4 on CPU),
  because on CPU padding every prompt to the batch's longest costs more than batching saves.
- `embed_many(texts)` encodes a caller's list as it stands (no cross-request batching), for
  bulk work. In `serve.run(..., _local_testing_mode=True)` `@serve.batch` cannot run (it needs
  a replica context), so there `embed` encodes each prompt on its own: same numbers, no
  batching; `info()["batching"]` says which mode a replica is in.
- `info()` reports the device, the projection (fingerprint, fallback flag), the context
  dimension and the batching settings and counters.

Device: `EmbedderArgs.device=None` picks CUDA when the replica has a GPU and CPU otherwise.
Inside a Ray worker "has a GPU" means Ray assigned it one (the graph sets `num_gpus` in
`ray_actor_options`), so a replica without `num_gpus` stays on CPU even on a GPU node; outside
Ray (local testing mode, plain Python) it means `torch.cuda.is_available()`.

CPU threads: inside a Ray worker torch gets `floor(num_cpus)` intra-op threads, at least 1,
so fractional replicas (`num_cpus: 0.5`) do not oversubscribe the node; outside Ray the
process's torch setting is left alone. One encode runs at a time per replica: torch's own
threads are the parallelism, and two concurrent encodes would only fight over them.

The output vector is the projected context: `projection.dim` floats (the committed artifact:
25 whitened PCA components + a bias 1.0 as the last element = 26).
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.metrics import Counter, Histogram

from core.features import FeaturePipeline, Projection, load_projection

logger = logging.getLogger("ray.serve")

_BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# On CPU a forward pass costs ~ batch x longest prompt, and prompt lengths are long-tailed, so
# one padded pass over 32 real prompts is ~1.5x slower than 32 single-prompt calls, while
# length-sorted passes of 4 are ~1.3x faster (docs/benchmarks.md, "Embedder").
CPU_ENCODE_BATCH_SIZE = 4


class EmbedderArgs(BaseModel):
    """Typed `args` of the Embedder deployment (from serve_config.yaml or the graph builder)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str | None = Field(
        default=None,
        pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="torch device; None = cuda if the replica has a GPU, else cpu",
    )
    max_seq_length: int = Field(
        default=256,
        ge=1,
        le=512,
        description="tokens read per prompt (longer prompts are truncated); must match the "
        "projection's encoder (the committed artifact is fitted for 256)",
    )
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    encode_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="prompts per forward pass: a batch is sorted by length and encoded in "
        "chunks of this size, so short prompts are not padded to the longest; None = "
        f"{CPU_ENCODE_BATCH_SIZE} on CPU (padding costs compute there), max_batch_size on GPU",
    )
    # Ray 2.60's @serve.batch closes a batch batch_wait_timeout_s after its first request even
    # while the previous batch is still encoding (it then waits its turn), so batches only grow
    # past what arrives in that window when the window is near the encode time. On a busy CPU
    # replica 0.05 s gives full batches and ~1.5x the throughput of 0.005 s; on a GPU (encode
    # ~ms) or at low load (every request waits the window out) keep it small.
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=10.0)
    projection_path: str | None = Field(
        default=None,
        description="projection JSON; None = the committed core/artifacts/projection.json "
        "(falls back to a seeded random projection, with a warning, if it is missing)",
    )
    max_prompt_chars: int = Field(default=100_000, ge=1)


def _clean(text: object, what: str, max_chars: int) -> str:
    """Validate one prompt and cut it to `max_chars` characters.

    The cut only bounds tokenizer work on huge prompts: MiniLM reads at most `max_seq_length`
    tokens (256 tokens is ~1-2k characters), so with the default 100k-character limit the cut
    never changes the embedding.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty or whitespace-only; nothing to embed")
    return text[:max_chars]


def _in_serve_replica() -> bool:
    """False in `serve.run(..., _local_testing_mode=True)`, where `@serve.batch` cannot run."""
    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def _in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _assigned_resources() -> dict[str, float] | None:
    """This replica's Ray resources (e.g. {"CPU": 0.5, "GPU": 1.0}); None outside a Ray worker."""
    import ray

    if not _in_ray_worker():
        return None
    return dict(ray.get_runtime_context().get_assigned_resources())


def _resolve_device(requested: str | None, resources: dict[str, float] | None) -> str:
    import torch

    if requested is not None:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={requested!r} but torch sees no CUDA device here")
        return requested
    has_gpu = torch.cuda.is_available()
    if resources is not None:  # in a Ray worker: use a GPU only if Ray assigned one
        has_gpu = has_gpu and resources.get("GPU", 0.0) > 0
    return "cuda" if has_gpu else "cpu"


def _set_torch_threads(resources: dict[str, float] | None) -> int:
    import torch

    if resources is not None:
        torch.set_num_threads(max(1, math.floor(resources.get("CPU", 1.0))))
    return torch.get_num_threads()


@serve.deployment(
    name="Embedder",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
class Embedder:
    def __init__(self, args: dict[str, Any] | EmbedderArgs | None = None) -> None:
        from core.minilm import MiniLMEncoder  # lazy: loads torch

        self.args = EmbedderArgs.model_validate(args or {})
        resources = _assigned_resources()
        self.device = _resolve_device(self.args.device, resources)
        self.torch_threads = _set_torch_threads(resources)
        self.encode_batch_size = self.args.encode_batch_size or (
            CPU_ENCODE_BATCH_SIZE if self.device == "cpu" else self.args.max_batch_size
        )
        projection = self._load_projection(self.args.projection_path)  # before the slow part
        self.pipeline = FeaturePipeline(
            MiniLMEncoder(
                device=self.device,
                max_seq_length=self.args.max_seq_length,
                batch_size=self.encode_batch_size,  # sentence-transformers sorts by length
            ),
            projection,
        )
        # `@serve.batch` needs a real replica; in local testing mode embed() encodes each
        # prompt on its own (same numbers, no cross-request batching).
        self.batching = _in_serve_replica()
        self._embed_batch.set_max_batch_size(self.args.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._encode_lock = asyncio.Lock()
        self._max_batch_seen = 0
        self._batches = 0
        self._prompts = 0
        self._batch_size_hist = Histogram(
            "paretoserve_embed_batch_size",
            description="Prompts per encode call of the Embedder.",
            boundaries=_BATCH_SIZE_BUCKETS,
            tag_keys=("method",),
        )
        self._prompt_counter = Counter(
            "paretoserve_embedded_prompts",
            description="Prompts embedded by the Embedder.",
            tag_keys=("method",),
        )
        proj = self.pipeline.projection
        logger.info(
            "Embedder ready: device=%s torch_threads=%d projection=%s fallback=%s dim=%d",
            self.device,
            self.torch_threads,
            proj.fingerprint,
            proj.fallback,
            proj.dim,
        )

    @staticmethod
    def _load_projection(path: str | None) -> Projection:
        if path is None:
            return load_projection()  # the committed artifact; warns and falls back if missing
        # An explicitly configured path that is missing is a configuration error, not a
        # reason to route on a random projection.
        if not Path(path).is_file():
            raise FileNotFoundError(f"EmbedderArgs.projection_path: no file at {path}")
        return Projection.load(Path(path))

    async def _encode(self, texts: list[str], method: str) -> list[list[float]]:
        async with self._encode_lock:
            contexts = await asyncio.to_thread(self.pipeline.contexts, texts)
        self._batch_size_hist.observe(len(texts), tags={"method": method})
        self._prompt_counter.inc(len(texts), tags={"method": method})
        self._prompts += len(texts)
        return contexts.tolist()

    # Sizes here are defaults only: __init__ sets them from EmbedderArgs.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        self._batches += 1
        self._max_batch_seen = max(self._max_batch_seen, len(texts))
        return await self._encode(texts, "embed")

    async def embed(self, text: str) -> list[float]:
        """One prompt's context; batched with other concurrent calls."""
        # Validated before batching, so one bad prompt fails alone, not its whole batch.
        text = _clean(text, "prompt", self.args.max_prompt_chars)
        if self.batching:
            return await self._embed_batch(text)
        return (await self._encode([text], "embed"))[0]

    async def embed_many(self, texts: list[str]) -> list[list[float]]:
        """Contexts of a list of prompts, encoded together (no cross-request batching)."""
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
        cleaned = [
            _clean(t, f"texts[{i}]", self.args.max_prompt_chars) for i, t in enumerate(texts)
        ]
        if not cleaned:
            return []
        return await self._encode(cleaned, "embed_many")

    async def info(self) -> dict[str, Any]:
        proj = self.pipeline.projection
        return {
            "device": self.device,
            "torch_threads": self.torch_threads,
            "encoder": self.pipeline.encoder.name,
            "projection_fingerprint": proj.fingerprint,
            "projection_fallback": proj.fallback,
            "projection_fitted_on": proj.fitted_on,
            "dim": proj.dim,
            "max_seq_length": self.args.max_seq_length,
            "max_prompt_chars": self.args.max_prompt_chars,
            "max_batch_size": self.args.max_batch_size,
            "batch_wait_timeout_s": self.args.batch_wait_timeout_s,
            "encode_batch_size": self.encode_batch_size,
            "batching": self.batching,
            "batches": self._batches,
            "max_batch_seen": self._max_batch_seen,
            "prompts_embedded": self._prompts,
        }
