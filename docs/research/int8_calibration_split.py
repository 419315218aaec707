"""Does the int8 embedder's calibration generalise to prompts it was not measured on?

    .venv/bin/python docs/research/int8_calibration_split.py [--splits 0 1] [--alpha 0.8 0.85]

For each split seed, calibrates the smoothing on one half of `val.jsonl` (by prompt hash, as
the replay's holdout split) and prints the cosine of the int8 vectors to the torch reference on
the other half, next to the committed calibration (fitted on every prompt) and plain int8-full.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.encoding.embedding_cache import cached_encode  # noqa: E402
from core.encoding.minilm import MiniLMEncoder  # noqa: E402
from core.encoding.minilm_onnx import OnnxMiniLMEncoder, calibrate_int8  # noqa: E402
from core.encoding.onnx_smoothing import DEFAULT_ALPHA  # noqa: E402
from core.replay.data import in_first_half, load_reward_file  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def cosines(encoder: OnnxMiniLMEncoder, prompts: list[str], ref: np.ndarray) -> str:
    c = (encoder.encode(prompts) * ref).sum(1)
    return f"min {c.min():.4f} p01 {np.quantile(c, 0.01):.4f} mean {c.mean():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--alpha", type=float, nargs="+", default=[DEFAULT_ALPHA])
    args = parser.parse_args()
    prompts = load_reward_file(DATA / "val.jsonl").prompts
    ref = cached_encode(prompts, MiniLMEncoder(device="cpu"))
    for split in args.splits:
        fit = [p for p in prompts if in_first_half(p, split)]
        held = np.array([not in_first_half(p, split) for p in prompts])
        held_prompts = [p for p, h in zip(prompts, held, strict=True) if h]
        print(f"split {split}: calibrate on {len(fit)}, evaluate on {len(held_prompts)} prompts")
        for name, calibration in (("int8-full", None), ("int8 committed", None)):
            precision = "int8-full" if name == "int8-full" else "int8"
            enc = OnnxMiniLMEncoder(precision, batch_size=1, threads=1, calibration=calibration)
            print(f"  {name:28s} {cosines(enc, held_prompts, ref[held])}", flush=True)
        for alpha in args.alpha:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "smoothing.json"
                calibrate_int8(fit, alpha=alpha).save(path)
                enc = OnnxMiniLMEncoder("int8", batch_size=1, threads=1, calibration=path)
                label = f"int8 fitted on half, a={alpha}"
                print(f"  {label:28s} {cosines(enc, held_prompts, ref[held])}", flush=True)


if __name__ == "__main__":
    main()
