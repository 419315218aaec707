"""Prompt features: an encoder's embedding, projected to k whitened PCA components plus a bias.

The bandit sees `x = [z_1 .. z_k, 1.0]` (the paper: k = 25, so dim = 26). The projection is
fitted offline (`paretoserve features fit`) and shipped as a small JSON artifact; if it is
missing a seeded random projection keeps the router working, with a loud warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.persistence import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_PROJECTION_PATH = Path(__file__).parent.parent / "artifacts" / "projection.json"
DEFAULT_COMPONENTS = 25
FIT_COMMAND = (
    "paretoserve features fit --data ../shared/data/val.jsonl --data ../shared/data/val_k4.jsonl"
)
_FORMAT = "paretoserve.projection/1"
_SIG_DIGITS = 7  # enough for float32-grade features; keeps the artifact small and exact on reload


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into fixed-size embeddings. `name` keys caches and must change with settings.

    Optional attribute `approximates`: the name of an encoder whose vectors this one reproduces
    closely (cosine >= 0.99), so a projection fitted for that encoder is accepted here."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, dim) float32 array."""
        ...


def check_texts(texts: Sequence[str]) -> None:
    """What every encoder refuses: a bare str (it is a Sequence[str] too: a classic silent bug),
    a non-str item, an empty or whitespace-only text."""
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not a single str")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"text {i} is empty or whitespace-only")


def _round_sig(a: np.ndarray, digits: int = _SIG_DIGITS) -> np.ndarray:
    """Round to `digits` significant digits so JSON holds short numbers that reload bit-exactly."""
    flat = [float(f"{v:.{digits}g}") for v in np.asarray(a, dtype=np.float64).ravel()]
    return np.asarray(flat, dtype=np.float64).reshape(np.shape(a))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)  # copy: callers' arrays stay theirs
    a.setflags(write=False)
    return a


class _ProjectionFile(BaseModel):
    """On-disk schema; shapes and the fingerprint are checked in Projection.from_dict."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["paretoserve.projection/1"]
    encoder_name: str
    fitted_on: str
    fallback: bool
    fingerprint: str
    explained_variance: float | None = None
    mean: list[float]
    components: list[list[float]]
    scale: list[float]


@dataclass(frozen=True, eq=False)
class Projection:
    """Whitened PCA: z = ((e - mean) @ components.T) / scale, then a bias 1.0 as the last column.

    `scale` is each component's standard deviation on the fit data (the divisor), so the
    projected components have unit variance there.
    """

    mean: np.ndarray  # (raw_dim,)
    components: np.ndarray  # (k, raw_dim), orthonormal rows
    scale: np.ndarray  # (k,), > 0
    encoder_name: str
    fitted_on: str  # a description (files, row counts); never prompts
    fallback: bool = False
    explained_variance: float | None = None  # share of variance kept; metadata only
    _weights: np.ndarray = field(init=False, repr=False)
    _offset: np.ndarray = field(init=False, repr=False)
    _fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean, comps, scale = _frozen(self.mean), _frozen(self.components), _frozen(self.scale)
        if mean.ndim != 1 or comps.ndim != 2 or scale.ndim != 1:
            raise ValueError("projection: mean must be 1-D, components 2-D, scale 1-D")
        if comps.shape != (scale.shape[0], mean.shape[0]) or comps.shape[0] < 1:
            raise ValueError(
                f"projection: components {comps.shape} must be (k, raw_dim) with "
                f"k = len(scale) = {scale.shape[0]} >= 1 and raw_dim = len(mean) = {mean.shape[0]}"
            )
        if not all(np.isfinite(a).all() for a in (mean, comps, scale)) or (scale <= 0).any():
            raise ValueError("projection: numbers must be finite and scale > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "scale", scale)
        # Folded once so apply() is one matrix product per request.
        weights = comps.T / scale
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_offset", mean @ weights)
        h = hashlib.sha256(np.asarray(comps.shape, dtype="<i8").tobytes())
        for a in (mean, comps, scale):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])

    @property
    def n_components(self) -> int:
        return int(self.scale.shape[0])

    @property
    def raw_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        """Context dimension seen by the bandit: k components + bias."""
        return self.n_components + 1

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the numbers; priors record it to prove they share this projection."""
        return self._fingerprint

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, raw_dim) -> (n, k+1) float64, or (raw_dim,) -> (k+1,); last column is 1.0."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim not in (1, 2) or e.shape[-1] != self.raw_dim:
            raise ValueError(f"expected embeddings of shape (n, {self.raw_dim}), got {e.shape}")
        if not np.isfinite(e).all():
            raise ValueError("embeddings contain NaN or infinity")
        z = e @ self._weights - self._offset
        bias = np.ones(z.shape[:-1] + (1,), dtype=np.float64)
        return np.concatenate([z, bias], axis=-1)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": _FORMAT,
            "encoder_name": self.encoder_name,
            "fitted_on": self.fitted_on,
            "fallback": self.fallback,
            "fingerprint": self.fingerprint,
            "explained_variance": self.explained_variance,
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, data: object) -> Projection:
        f = _ProjectionFile.model_validate(data)
        proj = cls(
            mean=np.asarray(f.mean),
            components=np.asarray(f.components),
            scale=np.asarray(f.scale),
            encoder_name=f.encoder_name,
            fitted_on=f.fitted_on,
            fallback=f.fallback,
            explained_variance=f.explained_variance,
        )
        if proj.fingerprint != f.fingerprint:
            raise ValueError(
                f"projection fingerprint mismatch: file says {f.fingerprint}, "
                f"numbers give {proj.fingerprint} (edited or corrupted?)"
            )
        return proj

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
        write_atomic(Path(path), (text + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> Projection:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError included
            raise ValueError(f"{path}: invalid projection file: {exc}") from exc


def fit_projection(
    embeddings: np.ndarray,
    n_components: int = DEFAULT_COMPONENTS,
    *,
    encoder_name: str,
    fitted_on: str,
) -> Projection:
    """Fit whitened PCA with numpy's SVD. Numbers are rounded to 7 significant digits."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"expected a 2-D (n, raw_dim) array, got shape {e.shape}")
    n, raw_dim = e.shape
    if not 1 <= n_components <= min(raw_dim, n - 1):
        raise ValueError(
            f"n_components={n_components} must be in [1, min(raw_dim={raw_dim}, n-1={n - 1})]"
        )
    if not np.isfinite(e).all():
        raise ValueError("embeddings contain NaN or infinity")
    mean = e.mean(axis=0)
    _, s, vt = np.linalg.svd(e - mean, full_matrices=False)
    if s[n_components - 1] <= s[0] * 1e-9:
        raise ValueError(f"data has fewer than {n_components} directions with any variance")
    comps = vt[:n_components]
    # SVD signs are arbitrary; fix them so refits on the same data give the same artifact.
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    scale = s[:n_components] / np.sqrt(n - 1)  # std of each component's scores (ddof=1)
    return Projection(
        mean=_round_sig(mean),
        components=_round_sig(comps),
        scale=_round_sig(scale),
        encoder_name=encoder_name,
        fitted_on=fitted_on,
        explained_variance=round(float((s[:n_components] ** 2).sum() / (s**2).sum()), 6),
    )


def fallback_projection(
    raw_dim: int = 384,
    n_components: int = DEFAULT_COMPONENTS,
    *,
    seed: int = 0,
    encoder_name: str = "any",
) -> Projection:
    """Seeded random orthonormal rows, no centring.

    For unit-norm embeddings a fixed unit direction captures variance ~1/raw_dim, so dividing
    by 1/sqrt(raw_dim) (multiplying by sqrt(raw_dim)) gives roughly unit-variance features.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((raw_dim, n_components)))
    return Projection(
        mean=np.zeros(raw_dim),
        components=_round_sig(q.T),
        scale=np.full(n_components, 1.0 / np.sqrt(raw_dim)),
        encoder_name=encoder_name,
        fitted_on=f"random orthonormal rows, seed {seed} (no fitted projection found)",
        fallback=True,
    )


def load_projection(
    path: Path | None = None,
    *,
    raw_dim: int = 384,
    n_components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
) -> Projection:
    """Load the fitted artifact; if it is missing, warn and return a seeded fallback."""
    path = DEFAULT_PROJECTION_PATH if path is None else Path(path)
    if path.exists():
        return Projection.load(path)
    msg = (
        f"no fitted projection at {path}: using a random projection, so routing quality will "
        f"suffer. Build it with: {FIT_COMMAND}"
    )
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return fallback_projection(raw_dim, n_components, seed=seed)


def configured_projection(path: str | Path | None) -> Projection:
    """The projection a service setting names (`EmbedderArgs.projection_path`): None = the
    committed artifact (warns and falls back if it is missing); a path must exist, because an
    explicitly configured path that is missing is a configuration error, not a reason to route
    on a random projection. The Embedder and the Router (to check priors) both use it."""
    if path is None:
        return load_projection()
    if not Path(path).is_file():
        raise FileNotFoundError(f"EmbedderArgs.projection_path: no file at {path}")
    return Projection.load(Path(path))


class FeaturePipeline:
    """Encoder + projection: texts in, bandit contexts out."""

    def __init__(self, encoder: Encoder, projection: Projection) -> None:
        if projection.raw_dim != encoder.dim:
            raise ValueError(
                f"projection expects {projection.raw_dim}-d embeddings, "
                f"encoder {encoder.name!r} gives {encoder.dim}"
            )
        # A projection fitted on another encoder's space is silently wrong; refuse it. An
        # encoder that reproduces another one up to rounding or quantisation (ONNX Runtime's
        # MiniLM, core.encoding.minilm_onnx) names it in `approximates` and may use its projection.
        names = {encoder.name, getattr(encoder, "approximates", None)}
        if not projection.fallback and projection.encoder_name not in names:
            raise ValueError(
                f"projection was fitted for encoder {projection.encoder_name!r}, "
                f"not {encoder.name!r}; refit with `paretoserve features fit`"
            )
        self.encoder = encoder
        self.projection = projection

    @property
    def dim(self) -> int:
        return self.projection.dim

    def contexts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k+1) float64 contexts."""
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float64)
        return self.projection.apply(self.encoder.encode(texts))

    def context(self, text: str) -> np.ndarray:
        """(k+1,) context of one text."""
        return self.contexts([text])[0]
