"""Files the encoders build on first use (ONNX graphs, the static token table): where they live,
what names them, and how they are written so that no reader sees half a file."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """$PARETOSERVE_CACHE_DIR, else ~/.cache/paretoserve (never in the repository)."""
    root = os.environ.get("PARETOSERVE_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "paretoserve"


@functools.lru_cache(maxsize=4)
def weights_digest(model_path: Path) -> str:
    """A digest of the model files (~90 MB read): once per process and path, as every artifact
    name and calibration check of an encoder's start needs it."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        f = model_path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def atomic_target(dest: Path) -> Path:
    """A private temporary file beside `dest`, to be written and then renamed onto it."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")
    os.close(fd)
    return Path(tmp)
