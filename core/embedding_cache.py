"""A disk cache of embeddings, keyed by encoder name and the exact texts.

Encoding a few thousand prompts with MiniLM on CPU takes minutes; fitting a projection,
building priors and replays all need the same matrix, so it is computed once per
(encoder, texts) and stored as a plain .npy (no pickle).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.features import Encoder
from core.persistence import write_atomic

logger = logging.getLogger(__name__)

_KEY_VERSION = b"paretoserve.embedding_cache/1"


def default_cache_dir() -> Path:
    """$PARETOSERVE_CACHE_DIR/embeddings, else ~/.cache/paretoserve/embeddings."""
    root = os.environ.get("PARETOSERVE_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "paretoserve"
    return base / "embeddings"


def cache_key(texts: Sequence[str], encoder_name: str) -> str:
    """sha256 over length-prefixed fields, so no two (name, texts) inputs share a key."""
    h = hashlib.sha256(_KEY_VERSION)
    for part in (encoder_name, *texts):
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
