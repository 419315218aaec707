"""Atomic files and the snapshot container: numpy arrays + JSON metadata in one .npz, no pickle."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

_META_KEY = "__meta__"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over the target, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pack(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY} is reserved")
    buf = io.BytesIO()
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(buf, **arrays, **{_META_KEY: meta_bytes})
    return buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != _META_KEY}
        meta = json.loads(npz[_META_KEY].tobytes().decode())
    return arrays, meta
