"""`paretoserve features fit`: fit the whitened PCA projection on reward-file prompts."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from core.encoding.embedding_cache import cached_encode
from core.encoding.features import DEFAULT_COMPONENTS, DEFAULT_PROJECTION_PATH, fit_projection
from core.encoding.minilm_static import DEFAULT_MAP_PATH
from core.encoding.onnx_smoothing import DEFAULT_ALPHA, DEFAULT_SMOOTHING_PATH
from core.replay.data import load_reward_file


def _add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="reward file (JSON lines); repeat for several",
    )


def _add_out_argument(parser: argparse.ArgumentParser, default: Path, what: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=default,
        help=f"where to write the {what} (default: the packaged artifact)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features", help="prompt features (embedding projection)")
    sub = parser.add_subparsers(dest="features_command", required=True)
    fit = sub.add_parser(
        "fit",
        help="fit the PCA projection on reward-file prompts",
        description="Embed the (deduplicated) prompts of the reward files with MiniLM and fit "
        "the whitened PCA projection the router uses. Only numbers are written, never prompts.",
    )
    _add_data_argument(fit)
    fit.add_argument(
        "--components",
        type=int,
        default=DEFAULT_COMPONENTS,
        help="PCA components k; the context dimension is k+1 (default %(default)s)",
    )
    _add_out_argument(fit, DEFAULT_PROJECTION_PATH, "projection JSON")
    fit.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache (default: $PARETOSERVE_CACHE_DIR/embeddings or "
        "~/.cache/paretoserve/embeddings)",
    )
    fit.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    fit.set_defaults(func=run_fit)

    cal = sub.add_parser(
        "calibrate-int8",
        help="measure the int8 embedder's smoothing scales on reward-file prompts",
        description="Run the (deduplicated) prompts of the reward files through the fp32 ONNX "
        "MiniLM and record each quantised node's per-channel activation maxima, from which the "
        "int8 backend's SmoothQuant scales are made. Only numbers are written, never prompts. "
        "A new calibration changes the int8 model and its cache key.",
    )
    _add_data_argument(cal)
    cal.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help="migration strength in (0, 1] (default %(default)s)",
    )
    _add_out_argument(cal, DEFAULT_SMOOTHING_PATH, "calibration JSON")
    cal.set_defaults(func=run_calibrate_int8)

    static = sub.add_parser(
        "fit-static",
        help="fit the static encoder's map to the torch MiniLM on reward-file prompts",
        description="Embed the (deduplicated) prompts of the reward files with the torch MiniLM "
        "and with the static token table, and fit the ridge map from the second to the first "
        "(core/encoding/minilm_static.py). Only numbers are written, never prompts. A new map "
        "changes the static encoder's name and so its cache keys.",
    )
    _add_data_argument(static)
    _add_out_argument(static, DEFAULT_MAP_PATH, "map")
    static.set_defaults(func=run_fit_static)


def _unique_prompts(paths: list[Path]) -> tuple[list[str], str]:
    """The files' prompts, deduplicated in first-seen order, and a line saying where from."""
    parts, prompts = [], {}
    for path in paths:
        data = load_reward_file(path)
        parts.append(f"{Path(path).name} ({len(data)} rows)")
        prompts.update(dict.fromkeys(data.prompts))
    texts = list(prompts)
    return texts, f"{', '.join(parts)}; {len(texts)} unique prompts"


def run_fit(args: argparse.Namespace) -> int:
    # Weights are bundled; make sure no library reaches for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.encoding.minilm import MiniLMEncoder  # loads torch only when this command runs

    texts, fitted_on = _unique_prompts(args.data)

    encoder = MiniLMEncoder(device=args.device)
    start = time.perf_counter()
    embeddings = cached_encode(texts, encoder, args.cache_dir)
    encode_s = time.perf_counter() - start

    projection = fit_projection(
        embeddings, args.components, encoder_name=encoder.name, fitted_on=fitted_on
    )
    projection.save(args.out)
    print(
        f"features fit: {len(texts)} prompts ({fitted_on.split(';')[0]}), {encoder.name} on "
        f"{encoder.device}, encode {encode_s:.1f}s; k={projection.n_components} "
        f"(dim {projection.dim}) keeps {projection.explained_variance:.1%} of variance; "
        f"fingerprint {projection.fingerprint} -> {args.out}"
    )
    return 0


def run_calibrate_int8(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.encoding.minilm_onnx import calibrate_int8  # loads onnx(runtime) only when this runs

    if not 0.0 < args.alpha <= 1.0:
        raise SystemExit("calibrate-int8: --alpha must be in (0, 1]")
    texts, fitted_on = _unique_prompts(args.data)
    start = time.perf_counter()
    smoothing = calibrate_int8(texts, alpha=args.alpha, fitted_on=fitted_on)
    smoothing.save(args.out)
    print(
        f"features calibrate-int8: {len(texts)} prompts ({fitted_on.split(';')[0]}), "
        f"{len(smoothing.maxima)} nodes, alpha {smoothing.alpha}, "
        f"{time.perf_counter() - start:.1f}s; fingerprint {smoothing.fingerprint} -> {args.out}"
    )
    return 0


def run_fit_static(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.encoding.minilm import MiniLMEncoder  # loads torch only when this command runs
    from core.encoding.minilm_static import StaticTokens, fit_map, save_map

    texts, fitted_on = _unique_prompts(args.data)
    start = time.perf_counter()
    targets = cached_encode(texts, MiniLMEncoder(device="cpu"))
    weights = fit_map(StaticTokens().pooled(texts), targets)
    save_map(weights, args.out, fitted_on)
    print(
        f"features fit-static: {len(texts)} prompts ({fitted_on.split(';')[0]}), "
        f"{time.perf_counter() - start:.1f}s -> {args.out}"
    )
    return 0
