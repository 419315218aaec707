"""Reward files -> routing contexts through the real MiniLM encoder + projection, disk-cached."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from core.encoding.embedding_cache import cached_encode
from core.encoding.features import Projection, load_projection
from core.encoding.minilm import MiniLMEncoder, encoder_name
from core.encoding.minilm_static import static_encoder_name
from core.method.registry import ModelSpec
from core.replay.data import PriceEntry, RewardData, load_prices
from core.service.settings import Backend

ENCODERS: tuple[str, ...] = get_args(Backend)  # what EmbedderArgs.backend accepts


class LazyMiniLM:
    """The MiniLM encoder, loaded only on a cache miss (loading it takes seconds).

    `backend` as `EmbedderArgs.backend`: torch (the reference), an ONNX Runtime variant or the
    static encoder; the name (the disk cache's key) differs per backend, so their embeddings
    never mix."""

    dim = 384

    def __init__(self, backend: str = "torch") -> None:
        if backend not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {backend!r}")
        self.backend = backend
        if backend == "torch":
            self.name = encoder_name()
        elif backend == "static":
            self.name = static_encoder_name()
        else:
            from core.encoding.minilm_onnx import onnx_encoder_name

            self.name = onnx_encoder_name(precision=backend.removeprefix("onnx-"))
        self._encoder: object | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder is None:
            if self.backend == "torch":
                self._encoder = MiniLMEncoder()
            elif self.backend == "static":
                from core.encoding.minilm_static import StaticMiniLMEncoder

                self._encoder = StaticMiniLMEncoder()
            else:
                from core.encoding.minilm_onnx import OnnxMiniLMEncoder

                # its default passes: of 1 for int8, as the Embedder runs it
                self._encoder = OnnxMiniLMEncoder(precision=self.backend.removeprefix("onnx-"))
        return self._encoder.encode(texts)


def contexts_for(
    data: RewardData, projection: Projection | None = None, encoder: str = "torch"
) -> np.ndarray:
    projection = projection or load_projection()
    return projection.apply(cached_encode(data.prompts, LazyMiniLM(encoder)))


def default_prices_path(warmup: Path | None, data: Path) -> Path:
    """prices.json next to the warm-up file, else next to the data file."""
    for base in (warmup, data):
        if base is not None and (Path(base).parent / "prices.json").exists():
            return Path(base).parent / "prices.json"
    raise FileNotFoundError(f"no prices.json next to {warmup or data}; pass --prices FILE")


def model_specs(prices: dict[str, PriceEntry]) -> dict[str, ModelSpec]:
    return {
        m: ModelSpec(
            id=m,
            provider="simulated",
            input_per_m=p.input_per_m,
            output_per_m=p.output_per_m,
            context_length=p.context_length,
            speed=p.speed,
        )
        for m, p in prices.items()
    }


def load_specs(path: Path, needed: Sequence[str]) -> dict[str, ModelSpec]:
    specs = model_specs(load_prices(path))
    missing = [m for m in needed if m not in specs]
    if missing:
        raise ValueError(f"{path} has no prices for: {', '.join(missing)}")
    return specs
