"""ONNX Runtime MiniLM (core.encoding.minilm_onnx) against torch, and the in-memory LRU.

The ONNX files are built from the packaged weights on first use (tens of seconds) and cached
under $PARETOSERVE_CACHE_DIR/onnx or ~/.cache/paretoserve/onnx; CI points that into the clone,
so every run builds them from nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from core.encoding.embedding_cache import ContextLRU, cache_key
from core.encoding.features import FeaturePipeline, fallback_projection, load_projection
from core.encoding.minilm import MiniLMEncoder, default_model_path
from core.encoding.minilm_onnx import (
    OnnxMiniLMEncoder,
    build_inputs,
    load_smoothing,
    onnx_encoder_name,
    onnx_model_path,
    read_build_inputs,
)

PROMPTS = [
    "What is the capital of France?",
    "hi",
    "Write a python function to reverse a linked list in place.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following is a characteristic of a stationary process? (A) constant mean "
    "(B) a unit root (C) a deterministic trend (D) explosive variance",
    "  Translate 'good morning' into Japanese and explain the politeness level.\n",
    "Here is a long document to summarise. " + "The quarterly results were mixed. " * 60,
]


@pytest.fixture(scope="module")
def torch_enc() -> MiniLMEncoder:
    return MiniLMEncoder(device="cpu")


@pytest.fixture(scope="module")
def int8() -> OnnxMiniLMEncoder:
    return OnnxMiniLMEncoder("int8", batch_size=1, threads=1)


@pytest.fixture(scope="module")
def fp32() -> OnnxMiniLMEncoder:
    return OnnxMiniLMEncoder("fp32", batch_size=4, threads=1)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_tokens_match_sentence_transformers(torch_enc, int8) -> None:
    ours = int8.tokenize(PROMPTS)
    theirs = torch_enc._model.tokenize(PROMPTS)["input_ids"]
    for i, ids in enumerate(ours):
        assert ids == [t for t in theirs[i].tolist() if t != 0][: len(ids)]
        assert len(ids) == int((theirs[i] != 0).sum())
    assert max(len(x) for x in ours) == 256  # the long prompt is truncated at max_seq_length


def test_fp32_reproduces_torch(torch_enc, fp32) -> None:
    ref = torch_enc.encode(PROMPTS)
    got = fp32.encode(PROMPTS)
    assert got.shape == (len(PROMPTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_int8_cosine_to_torch(torch_enc, int8) -> None:
    ref, got = torch_enc.encode(PROMPTS), int8.encode(PROMPTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cos(got, ref).min() >= 0.99
    proj = load_projection()  # the contexts the bandit sees agree too
    assert _cos(proj.apply(got), proj.apply(ref)).min() >= 0.99
    assert not np.allclose(got, ref, atol=1e-4)  # really quantised, not the fp32 graph


def test_short_prompts_run_on_the_fp32_graph(torch_enc, int8) -> None:
    short = ["hi", "thanks!", "ok", "What?"]  # <= 16 tokens: int8 alone gives cosine ~0.98
    assert int8.fp32_max_tokens == 16 and int8.name.endswith("/fp32-upto16")
    assert "/onnx-int8/sq-" in int8.name  # the calibration's fingerprint
    np.testing.assert_allclose(int8.encode(short), torch_enc.encode(short), atol=2e-5)
    pure = OnnxMiniLMEncoder("int8", batch_size=1, threads=1, fp32_max_tokens=0)
    assert "/fp32-upto" not in pure.name
    assert _cos(pure.encode(short), torch_enc.encode(short)).min() < 0.999


def test_int8_full_is_the_less_accurate_variant(torch_enc, int8) -> None:
    """Plain dynamic int8 of every MatMul is less accurate: the smoothing is what "int8" adds."""
    full = OnnxMiniLMEncoder("int8-full", batch_size=1, threads=1)
    ref = torch_enc.encode(PROMPTS)
    assert _cos(int8.encode(PROMPTS), ref).mean() > _cos(full.encode(PROMPTS), ref).mean()


def test_int8_passes_of_one_do_not_depend_on_pass_mates(int8) -> None:
    alone = int8.encode([PROMPTS[3]])
    together = int8.encode(PROMPTS)
    np.testing.assert_array_equal(together[3], alone[0])


def test_truncation_reads_only_max_seq_length_tokens() -> None:
    enc = OnnxMiniLMEncoder("fp32", max_seq_length=32, batch_size=2, threads=1)
    head = "Explain the proof of the fundamental theorem of algebra in detail. " * 4
    a, b = enc.encode([head + "cats " * 50, head + "quarterly tax law " * 50])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert enc.name.startswith("all-MiniLM-L6-v2/max32/norm/onnx-fp32/build-")


def test_names_keep_caches_apart_and_projection_is_shared(torch_enc, int8, fp32) -> None:
    assert int8.name == onnx_encoder_name(precision="int8") != torch_enc.name
    assert len({int8.name, fp32.name, torch_enc.name}) == 3
    assert cache_key(PROMPTS, int8.name) != cache_key(PROMPTS, torch_enc.name)
    assert int8.approximates == torch_enc.name
    pipe = FeaturePipeline(int8, load_projection())  # fitted for the torch encoder: accepted
    assert pipe.contexts(PROMPTS[:2]).shape == (2, 26)
    other = fallback_projection()
    other = type(other)(
        mean=other.mean,
        components=other.components,
        scale=other.scale,
        encoder_name="all-MiniLM-L6-v2/max128/norm",
        fitted_on="test",
    )
    with pytest.raises(ValueError, match="fitted for encoder"):
        FeaturePipeline(int8, other)


def test_onnx_file_is_cached_and_keyed_by_precision() -> None:
    a, b = onnx_model_path("int8"), onnx_model_path("int8")
    assert a == b and a.is_file() and a.stat().st_size > 1_000_000
    assert onnx_model_path("fp32") != a
    with pytest.raises(ValueError, match="precision"):
        onnx_model_path("int4")  # type: ignore[arg-type]


def test_built_file_records_every_input_and_its_name_follows_them(int8) -> None:
    from importlib.metadata import version

    path = onnx_model_path("int8")
    recorded = read_build_inputs(path)
    assert recorded == build_inputs(default_model_path(), "int8", load_smoothing("int8"))
    for lib in ("torch", "transformers", "onnx", "onnxruntime"):
        assert recorded[lib] == version(lib)
    assert recorded["calibration"] == load_smoothing("int8").fingerprint
    assert recorded["quant"].startswith("dynamic-w-u8")
    assert f"/build-{path.stem.rsplit('-', 1)[1]}/" in int8.name  # vectors keyed by the build
    assert read_build_inputs(onnx_model_path("fp32"))["precision"] == "fp32"


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed")
def test_int8_vectors_are_the_same_on_a_cpu_without_vnni(int8, tmp_path) -> None:
    """ONNX Runtime picks its int8 kernels by CPU. u8 x s8 on AVX2 without VNNI saturates (a
    fresh machine of that kind gave cosine 0.986); the u8 x u8 graph must give the vectors this
    machine gives on an emulated Haswell (AVX2, no AVX-512, no VNNI)."""
    out = tmp_path / "haswell.npy"
    code = (
        "import sys, numpy as np; from core.encoding.minilm_onnx import OnnxMiniLMEncoder; "
        "enc = OnnxMiniLMEncoder('int8', batch_size=1, threads=1, fp32_max_tokens=0); "
        "np.save(sys.argv[1], enc.encode(sys.argv[2:]))"
    )
    cmd = ["qemu-x86_64", "-cpu", "Haswell-noTSX", sys.executable, "-c", code, str(out)]
    subprocess.run(cmd + PROMPTS, check=True, timeout=600, capture_output=True)
    here = OnnxMiniLMEncoder("int8", batch_size=1, threads=1, fp32_max_tokens=0).encode(PROMPTS)
    there = np.load(out)
    # float kernels (AVX2 vs AVX-512 sums) leave ~1e-5; saturation moved vectors by ~1e-2
    np.testing.assert_allclose(there, here, atol=1e-4)
    assert _cos(there, here).min() > 0.99999


def test_encode_rejects_bad_input(int8) -> None:
    with pytest.raises(TypeError):
        int8.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text 1 is empty"):
        int8.encode(["ok", "  "])
    assert int8.encode([]).shape == (0, 384)


@pytest.mark.data
def test_int8_cosine_on_shared_prompts(shared_data) -> None:
    """The quality bar on every prompt of val.jsonl: cosine to the torch vectors >= 0.995."""
    from core.encoding.embedding_cache import cached_encode
    from core.replay.data import load_reward_file

    prompts = list(dict.fromkeys(load_reward_file(shared_data / "val.jsonl").prompts))
    ref = cached_encode(prompts, MiniLMEncoder(device="cpu"))
    got = OnnxMiniLMEncoder("int8", batch_size=1, threads=1).encode(prompts)
    cos = _cos(got, ref)
    assert cos.min() >= 0.995 and cos.mean() >= 0.998  # docs/benchmarks.md, "Embedder"


# --- ContextLRU ------------------------------------------------------------------------------


def test_lru_returns_identical_vectors_and_counts() -> None:
    lru = ContextLRU(2)
    v = np.arange(4.0)
    assert lru.get("a") is None and (lru.hits, lru.misses) == (0, 1)
    lru.put("a", v)
    v[0] = 99.0  # the cache kept its own copy
    got = lru.get("a")
    np.testing.assert_array_equal(got, [0.0, 1.0, 2.0, 3.0])
    assert not got.flags.writeable and (lru.hits, lru.misses) == (1, 1)
    lru.put("b", v)
    lru.get("a")  # a is now the most recent
    lru.put("c", v)  # evicts b, the least recent
    assert lru.get("b") is None and lru.get("a") is not None and len(lru) == 2
    assert lru.stats() == {
        "cache_capacity": 2,
        "cache_size": 2,
        "cache_hits": 3,
        "cache_misses": 2,
        "cache_hit_rate": 0.6,
    }
    assert ContextLRU.key("a") != ContextLRU.key("a ")  # exact text, no normalisation


def test_lru_capacity_zero_is_off() -> None:
    lru = ContextLRU(0)
    lru.put("a", np.ones(3))
    assert lru.get("a") is None and len(lru) == 0 and lru.misses == 1
    with pytest.raises(ValueError):
        ContextLRU(-1)
