"""SmoothQuant-style scales for the int8 MiniLM graph, and their committed artifact.

Dynamic int8 quantises each MatMul's input with one scale for the whole tensor, so a few
channels with large activations (BERT has them) leave the others with a coarse grid. Smoothing
divides each input channel j by s_j and multiplies row j of the weight by s_j: the product is
unchanged in exact arithmetic, but the activations the quantiser sees are flatter. With
s_j = amax_j^alpha / wmax_j^(1 - alpha) (amax_j: the channel's largest |activation| over
calibration prompts, wmax_j: row j's largest |weight|), every MatMul and the attention input
projections can be int8 at once (Xiao et al., "SmoothQuant", 2023). The division is an explicit
`Mul` node in front of each quantised node (cheap next to the MatMul).

The maxima are numbers fitted on prompts, committed like the PCA projection and produced by a
project command (`paretoserve features calibrate-int8`); no prompt text is stored. They are
only a matter of precision: a prompt whose activations exceed them is still quantised by its
own range at run time, never clipped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SMOOTHING_PATH = Path(__file__).parent.parent / "artifacts" / "minilm_int8_smoothing.json"
# Migration strength. With u8 weights (core.encoding.minilm_onnx) 0.85 gives the best worst
# case over val.jsonl (cosine min 0.9964; 0.8: 0.9958, 0.9: 0.9949, 0.7: 0.9933, 0.6: 0.9856;
# docs/benchmarks.md, "Embedder"); 0.5 (the paper's default for LLMs) is worse here.
DEFAULT_ALPHA = 0.85
SMOOTHING_VERSION = 1


class Smoothing(BaseModel):
    """Per-channel activation maxima of the quantised nodes' inputs, by node name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = SMOOTHING_VERSION
    weights_digest: str = Field(min_length=1)  # which MiniLM weights they were measured on
    alpha: float = Field(DEFAULT_ALPHA, gt=0.0, le=1.0)
    prompts: int = Field(gt=0)  # how many calibration prompts
    fitted_on: str = ""
    maxima: dict[str, list[float]]

    @property
    def fingerprint(self) -> str:
        body = json.dumps([self.alpha, self.weights_digest, sorted(self.maxima.items())])
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def save(self, path: Path) -> None:
        data = self.model_dump() | {"fingerprint": self.fingerprint}
        path.write_text(json.dumps(data) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_SMOOTHING_PATH) -> Smoothing:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        stated = data.pop("fingerprint", None)
        if data.get("version") != SMOOTHING_VERSION:
            raise ValueError(f"{path}: smoothing version {data.get('version')!r} is not supported")
        smoothing = cls.model_validate(data)
        if stated != smoothing.fingerprint:
            raise ValueError(f"{path}: fingerprint mismatch (edited or corrupted?)")
        return smoothing


def smoothed_nodes(model) -> list:  # onnx.ModelProto -> list[onnx.NodeProto]
    """The nodes dynamic int8 quantises whose weight is a [in, out] matrix at input 1:
    MatMul and the fused Attention (its input projection)."""
    weights = {i.name for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in weights
    ]


def apply_smoothing(model, smoothing: Smoothing) -> None:
    """Rewrite `model` (an fp32 onnx.ModelProto) in place: a Mul by 1/s before each smoothed
    node, its weight rows times s. The model computes the same function."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    targets = smoothed_nodes(model)
    missing = {n.name for n in targets} ^ set(smoothing.maxima)
    if missing:
        raise ValueError(f"smoothing maxima do not match the graph's nodes: {sorted(missing)}")
    muls = {}
    for k, node in enumerate(targets):
        weight = numpy_helper.to_array(inits[node.input[1]])
        amax = np.asarray(smoothing.maxima[node.name], dtype=np.float64)
        wmax = np.abs(weight).max(axis=1).astype(np.float64)
        if amax.shape != wmax.shape:
            raise ValueError(f"{node.name}: {amax.size} maxima for {wmax.size} input channels")
        alpha = smoothing.alpha
        s = np.maximum(amax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)
        scaled = (weight * s[:, None]).astype(np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
        inv = f"smooth/{k}/inv_scale"
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), inv))
        out = f"smooth/{k}/output"
        muls[node.name] = helper.make_node("Mul", [node.input[0], inv], [out], name=f"smooth/{k}")
        node.input[0] = out
    ordered = []  # each Mul right before its node keeps the graph topologically sorted
    for node in model.graph.node:
        if node.name in muls:
            ordered.append(muls[node.name])
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
