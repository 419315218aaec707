"""The Embedder deployment: prompts in, bandit contexts out (MiniLM + projection + bias).

A thin adapter of `core.encoding.features.FeaturePipeline` to Ray Serve:

- `embed(text)` is the request path. A call on an idle replica is encoded at once; calls that
  arrive while a batch is encoding are gathered into the next one (up to `max_batch_size`,
  `core.service.busy_batcher`), so a lone request waits for nobody and a busy replica still
  batches. A batch is encoded in a worker thread, so the replica's event loop keeps accepting
  requests; it is sorted by length and run in forward passes of `encode_batch_size` prompts
  (4 on CPU), because on CPU padding every prompt to the batch's longest costs more than
  batching saves.
- `embed_many(texts)` encodes a caller's list as it stands (no cross-request batching), for
  bulk work.
- `backend` picks the encoder: `torch` (sentence-transformers, the reference vectors; CPU or
  GPU) or `onnx-fp32` / `onnx-int8` (ONNX Runtime on CPU, `core.encoding.minilm_onnx`; the ONNX
  file is built from the packaged weights on a replica's first start and cached on disk).
- `cache_size > 0` keeps an in-memory LRU of contexts keyed by sha256(prompt) (`core.
  embedding_cache.ContextLRU`): a repeated prompt is answered from it before batching, and
  `info()` reports hits and misses. A batch encodes each distinct prompt once.
- `info()` reports the backend, the device, the projection (fingerprint, fallback flag), the context
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
from functools import partial
from typing import Any

from ray import serve
from ray.serve.metrics import Counter, Histogram

from core.encoding.embedding_cache import ContextLRU
from core.encoding.features import Encoder, FeaturePipeline, Projection, configured_projection
from core.service.busy_batcher import BusyBatcher
from core.service.settings import (
    CPU_ENCODE_BATCH_SIZE,
    INT8_ENCODE_BATCH_SIZE,
    MAX_PROMPT_CHARS,
    EmbedderArgs,
)

logger = logging.getLogger("ray.serve")

_BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


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


@serve.deployment(name="Embedder")  # replica options: graphs/app.py, from the settings tree
class Embedder:
    def __init__(
        self,
        args: dict[str, Any] | EmbedderArgs | None = None,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        self.args = EmbedderArgs.model_validate(args or {})
        self.max_prompt_chars = max_prompt_chars
        resources = _assigned_resources()
        cpu_only = self.args.backend != "torch"
        if cpu_only and self.args.device not in (None, "cpu"):
            raise ValueError(f"backend={self.args.backend!r} runs on the CPU only")
        self.device = "cpu" if cpu_only else _resolve_device(self.args.device, resources)
        self.torch_threads = _set_torch_threads(resources)
        if self.args.encode_batch_size:
            self.encode_batch_size = self.args.encode_batch_size
        elif self.args.backend == "onnx-int8":
            self.encode_batch_size = INT8_ENCODE_BATCH_SIZE
        elif self.device == "cpu":
            self.encode_batch_size = CPU_ENCODE_BATCH_SIZE
        else:
            self.encode_batch_size = self.args.max_batch_size
        projection = self._load_projection(self.args.projection_path)  # before the slow part
        self.pipeline = FeaturePipeline(self._encoder(resources), projection)
        self.cache = ContextLRU(self.args.cache_size)
        self._batcher = BusyBatcher(partial(self._encode, method="embed"), self.args.max_batch_size)
        self._encode_lock = asyncio.Lock()
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

    def _encoder(self, resources: dict[str, float] | None) -> Encoder:
        """The configured backend's encoder (lazy imports: torch or onnxruntime)."""
        a = self.args
        if a.backend == "torch":
            from core.encoding.minilm import MiniLMEncoder

            return MiniLMEncoder(
                device=self.device,
                max_seq_length=a.max_seq_length,
                batch_size=self.encode_batch_size,  # sentence-transformers sorts by length
            )
        if a.backend == "static":
            from core.encoding.minilm_static import StaticMiniLMEncoder

            return StaticMiniLMEncoder()
        from core.encoding.minilm_onnx import OnnxMiniLMEncoder

        return OnnxMiniLMEncoder(
            precision="int8" if a.backend == "onnx-int8" else "fp32",
            max_seq_length=a.max_seq_length,
            batch_size=self.encode_batch_size,  # sorted by length, as above
            # Ray: the replica's whole CPUs, as for torch; outside Ray, ONNX Runtime's default.
            threads=self.torch_threads if resources is not None else None,
        )

    @staticmethod
    def _load_projection(path: str | None) -> Projection:
        # None: the committed artifact (warns and falls back if missing); a path must exist.
        return configured_projection(path)

    async def _encode(self, texts: list[str], method: str) -> list[list[float]]:
        """Encode `texts` (each distinct text once) and remember them in the LRU."""
        unique = list(dict.fromkeys(texts))
        async with self._encode_lock:
            contexts = await asyncio.to_thread(self.pipeline.contexts, unique)
        for text, vector in zip(unique, contexts, strict=True):
            self.cache.put(text, vector)
        # The metrics count prompts as callers sent them (a repeat within a batch is encoded
        # once but served twice); info()'s `prompts_embedded` counts the encodes.
        self._batch_size_hist.observe(len(texts), tags={"method": method})
        self._prompt_counter.inc(len(texts), tags={"method": method})
        self._prompts += len(unique)
        by_text = dict(zip(unique, contexts.tolist(), strict=True))
        return [by_text[t] for t in texts]

    async def embed(self, text: str) -> list[float]:
        """One prompt's context; batched with other concurrent calls."""
        # Validated before batching, so one bad prompt fails alone, not its whole batch.
        text = _clean(text, "prompt", self.max_prompt_chars)
        if self.cache.capacity and (hit := self.cache.get(text)) is not None:
            return hit.tolist()  # no batch, no encode
        return await self._batcher.submit(text)

    async def embed_many(self, texts: list[str]) -> list[list[float]]:
        """Contexts of a list of prompts, encoded together (no cross-request batching)."""
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
        cleaned = [_clean(t, f"texts[{i}]", self.max_prompt_chars) for i, t in enumerate(texts)]
        if not cleaned:
            return []
        if not self.cache.capacity:
            return await self._encode(cleaned, "embed_many")
        hits = [self.cache.get(t) for t in cleaned]
        misses = [t for t, h in zip(cleaned, hits, strict=True) if h is None]
        fresh = iter(await self._encode(misses, "embed_many") if misses else [])
        return [next(fresh) if h is None else h.tolist() for h in hits]

    async def info(self) -> dict[str, Any]:
        proj = self.pipeline.projection
        return {
            "backend": self.args.backend,
            "device": self.device,
            "torch_threads": self.torch_threads,
            "encoder": self.pipeline.encoder.name,
            "projection_fingerprint": proj.fingerprint,
            "projection_fallback": proj.fallback,
            "projection_fitted_on": proj.fitted_on,
            "dim": proj.dim,
            "max_seq_length": self.args.max_seq_length,
            "max_prompt_chars": self.max_prompt_chars,
            "max_batch_size": self.args.max_batch_size,
            "encode_batch_size": self.encode_batch_size,
            "batches": self._batcher.batches,
            "max_batch_seen": self._batcher.largest,
            "prompts_embedded": self._prompts,
            **self.cache.stats(),
        }
