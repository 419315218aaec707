"""A disk cache of embeddings, keyed by encoder name and the exact texts (plus `ContextLRU`,
the Embedder's in-memory per-prompt cache).

Encoding a few thousand prompts with MiniLM on CPU takes minutes; fitting a projection,
building priors and replays all need the same matrix, so it is computed once per
(encoder, texts) and stored as a plain .npy (no pickle).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.encoding.built_files import cache_root
from core.encoding.features import Encoder
from core.persistence import write_atomic

logger = logging.getLogger(__name__)

_KEY_VERSION = b"paretoserve.embedding_cache/2"
# The encoder's name says which model and backend made a vector; these libraries change its
# rounding, so a vector computed under other versions is computed again, never reused.
_ENCODER_LIBRARIES = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime")


@functools.lru_cache(maxsize=1)
def _library_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def one(lib: str) -> str:
        try:
            return version(lib)
        except PackageNotFoundError:
            return "-"

    return ",".join(f"{lib}={one(lib)}" for lib in _ENCODER_LIBRARIES)


def default_cache_dir() -> Path:
    """$PARETOSERVE_CACHE_DIR/embeddings, else ~/.cache/paretoserve/embeddings."""
    return cache_root() / "embeddings"


def cache_key(texts: Sequence[str], encoder_name: str) -> str:
    """sha256 over length-prefixed fields, so no two (name, libraries, texts) share a key."""
    h = hashlib.sha256(_KEY_VERSION)
    for part in (encoder_name, _library_versions(), *texts):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    h.update(len(texts).to_bytes(8, "little"))
    return h.hexdigest()


def _read(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None if absent, unreadable or of the wrong shape."""
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        logger.warning("embedding cache %s unreadable (%s); recomputing", path, exc)
        return None
    if arr.shape != shape or arr.dtype.kind != "f" or not np.isfinite(arr).all():
        logger.warning(
            "embedding cache %s has shape %s, expected %s; recomputing", path, arr.shape, shape
        )
        return None
    return arr.astype(np.float32, copy=False)


def cached_encode(
    texts: Sequence[str], encoder: Encoder, cache_dir: Path | None = None
) -> np.ndarray:
    """encoder.encode(texts), from the disk cache when this exact input was seen before."""
    if isinstance(texts, str):
        raise TypeError("cached_encode() takes a sequence of texts, not a single str")
    texts = list(texts)
    shape = (len(texts), int(encoder.dim))
    if not texts:
        return np.empty(shape, dtype=np.float32)
    path = (default_cache_dir() if cache_dir is None else Path(cache_dir)) / (
        cache_key(texts, encoder.name) + ".npy"
    )
    hit = _read(path, shape)
    if hit is not None:
        return hit
    emb = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)
    if emb.shape != shape:
        raise ValueError(f"encoder {encoder.name!r} returned shape {emb.shape}, expected {shape}")
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:  # a cache is an optimisation: a read-only disk must not fail the run
        logger.warning("could not write embedding cache %s: %s", path, exc)
    return emb


class ContextLRU:
    """An in-memory LRU of per-prompt vectors, keyed by sha256 of the prompt text.

    For the Embedder: production traffic repeats prompts (retries, templated requests, the same
    question from many users), and a hit costs a dict lookup instead of a MiniLM forward pass.
    Keys are digests, so the cache holds no prompt text; values are read-only float64 arrays.
    `capacity` 0 disables it (every lookup misses, nothing is stored). Not thread-safe: the
    Embedder uses it from its event loop only.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._data: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, text: str) -> np.ndarray | None:
        """The cached vector (counted as a hit, and made most recent) or None (a miss)."""
        k = self.key(text)
        value = self._data.get(k)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(k)
        self.hits += 1
        return value

    def put(self, text: str, vector: np.ndarray) -> None:
        if not self.capacity:
            return
        v = np.array(vector, dtype=np.float64)  # a private, read-only copy
        v.setflags(write=False)
        k = self.key(text)
        self._data[k] = v
        self._data.move_to_end(k)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict[str, float | int]:
        return {
            "cache_capacity": self.capacity,
            "cache_size": len(self._data),
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_hit_rate": round(self.hit_rate, 4),
        }
