"""The int8 embedder's SmoothQuant scaling (core.encoding.onnx_smoothing) and its calibration."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.encoding.minilm_onnx import (
    OnnxMiniLMEncoder,
    calibrate_int8,
    load_smoothing,
    onnx_model_path,
)
from core.encoding.onnx_smoothing import Smoothing, apply_smoothing, smoothed_nodes

PROMPTS = [
    "Write a python function to copy a list from a singleton tuple.",
    "Which of the following are characteristics of a stationary process?",
    "Natalia sold clips to 48 of her friends in April and half as many in May.",
]


@pytest.fixture(scope="module")
def calibration() -> Smoothing:
    return calibrate_int8(PROMPTS, fitted_on="test prompts")


def _run(model: onnx.ModelProto, text_ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([text_ids], dtype=np.int64)
    return session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def test_calibration_covers_every_quantised_node(calibration) -> None:
    model = onnx.load(str(onnx_model_path("fp32")))
    nodes = smoothed_nodes(model)
    # 6 layers x (attention input projection, attention output, FFN up, FFN down)
    assert len(nodes) == 24 and set(calibration.maxima) == {n.name for n in nodes}
    sizes = sorted({len(v) for v in calibration.maxima.values()})
    assert sizes == [384, 1536]
    assert all(min(v) >= 0.0 for v in calibration.maxima.values())
    assert calibration.prompts == 3


def test_smoothing_keeps_the_fp32_function(calibration) -> None:
    """Dividing the inputs by s and multiplying the weight rows by s is exact up to rounding."""
    enc = OnnxMiniLMEncoder("fp32", batch_size=1, threads=1)
    plain = onnx.load(str(enc.onnx_path))
    smoothed = onnx.load(str(enc.onnx_path))
    apply_smoothing(smoothed, calibration)
    assert sum(n.op_type == "Mul" for n in smoothed.graph.node) == 24 + sum(
        n.op_type == "Mul" for n in plain.graph.node
    )
    ids = enc.tokenize([PROMPTS[0] + " and explain each step"])[0]
    np.testing.assert_allclose(_run(smoothed, ids), _run(plain, ids), atol=1e-4)


def test_smoothing_rejects_a_calibration_of_another_graph(calibration) -> None:
    model = onnx.load(str(onnx_model_path("fp32")))
    wrong = calibration.model_copy(update={"maxima": dict(list(calibration.maxima.items())[1:])})
    with pytest.raises(ValueError, match="do not match the graph"):
        apply_smoothing(model, wrong)


def test_calibration_file_round_trip_and_tamper_check(calibration, tmp_path) -> None:
    path = tmp_path / "s.json"
    calibration.save(path)
    again = Smoothing.load(path)
    assert again == calibration and again.fingerprint == calibration.fingerprint
    data = json.loads(path.read_text())
    first = next(iter(data["maxima"]))
    data["maxima"][first][0] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        Smoothing.load(path)


def test_calibration_of_other_weights_is_refused(calibration, tmp_path) -> None:
    path = tmp_path / "s.json"
    calibration.model_copy(update={"weights_digest": "0" * 16}).save(path)
    with pytest.raises(ValueError, match="other MiniLM weights"):
        load_smoothing("int8", calibration=path)


def test_the_calibration_is_part_of_the_cache_keys(calibration, tmp_path) -> None:
    """Another calibration is another int8 model and another embedding-cache name."""
    path = tmp_path / "s.json"
    calibration.save(path)
    committed = OnnxMiniLMEncoder("int8", batch_size=1, threads=1)
    own = OnnxMiniLMEncoder("int8", batch_size=1, threads=1, calibration=path)
    assert own.onnx_path != committed.onnx_path
    assert own.name != committed.name and f"/sq-{calibration.fingerprint}/" in own.name
    assert load_smoothing("fp32") is None


def test_calibrate_int8_command_writes_a_loadable_calibration(tmp_path) -> None:
    from paretoserve_cli.main import main

    data = tmp_path / "rewards.jsonl"
    arms = {"m": {"reward": 1.0, "cost": 1e-4}}
    rows = [{"prompt": p, "arms": arms} for p in [*PROMPTS, PROMPTS[0]]]  # a duplicate, deduped
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "smoothing.json"
    assert main(["features", "calibrate-int8", "--data", str(data), "--alpha", "0.8",
                 "--out", str(out)]) == 0  # fmt: skip
    written = Smoothing.load(out)
    assert written.prompts == 3 and written.alpha == 0.8 and len(written.maxima) == 24
    assert "rewards.jsonl" in written.fitted_on and "3 unique prompts" in written.fitted_on
    with pytest.raises(SystemExit):
        main(["features", "calibrate-int8", "--data", str(data), "--alpha", "0", "--out", str(out)])
