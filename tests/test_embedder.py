"""The Embedder deployment: local testing mode, then a real Serve instance on a local Ray.

Expected numbers come from core's FeaturePipeline on the same texts; the deployment must add
nothing but batching. Token auth is switched off for the test cluster (RAY_AUTH_MODE=disabled,
unless the environment sets it), so no token file is written to ~/.ray.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from ray import serve  # noqa: E402

from core.encoding.features import FeaturePipeline, load_projection  # noqa: E402
from core.encoding.minilm import MiniLMEncoder  # noqa: E402
from core.service.settings import (  # noqa: E402
    CPU_ENCODE_BATCH_SIZE,
    Deployments,
    EmbedderArgs,
)
from deployments.embedder import (  # noqa: E402
    Embedder,
    _clean,
    _resolve_device,
)

PROMPTS = [
    "What is the capital of France?",
    "Write a python function to reverse a linked list.",
    "Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "Which of the following is a characteristic of a stationary process?",
    "Translate 'good morning' into Japanese and explain the politeness level.",
    "Summarise the causes of the First World War in three sentences.",
    "Prove that the square root of 2 is irrational.",
    "hi",
]


@pytest.fixture(scope="module")
def pipeline() -> FeaturePipeline:
    return FeaturePipeline(MiniLMEncoder(device="cpu"), load_projection())


def _expected(pipeline: FeaturePipeline, texts: list[str]) -> np.ndarray:
    return pipeline.contexts(texts)


# --- args and helpers (no Ray needed) --------------------------------------------------------


def test_args_defaults_and_validation() -> None:
    a = EmbedderArgs()
    assert (a.device, a.max_seq_length, a.max_batch_size) == (None, 256, 32)
    assert (a.batch_wait_timeout_s, a.projection_path) == (0.005, None)
    assert a.encode_batch_size is None
    assert (a.backend, a.cache_size) == ("torch", 0)
    assert EmbedderArgs.model_validate({"backend": "onnx-int8"}).backend == "onnx-int8"
    assert EmbedderArgs.model_validate({"device": "cuda:1"}).device == "cuda:1"
    bads = ({"max_batch_size": 0}, {"device": "gpu"}, {"max_seq_length": 513}, {"x": 1})
    for bad in (*bads, {"backend": "tensorrt"}, {"cache_size": -1}):
        with pytest.raises(ValidationError):
            EmbedderArgs.model_validate(bad)
    with pytest.raises(ValidationError):
        a.max_batch_size = 8  # frozen
    with pytest.raises(ValidationError, match="one prompt per pass"):
        EmbedderArgs.model_validate({"backend": "onnx-int8", "encode_batch_size": 4})
    assert EmbedderArgs(backend="onnx-int8", encode_batch_size=1).encode_batch_size == 1


def test_clean_rejects_empty_and_cuts_long() -> None:
    assert _clean("abcdef", "prompt", 4) == "abcd"
    for bad in ("", "  \n\t"):
        with pytest.raises(ValueError, match="prompt is empty or whitespace-only"):
            _clean(bad, "prompt", 10)
    with pytest.raises(TypeError, match="must be a str"):
        _clean(3, "texts[0]", 10)


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _resolve_device(None, {"CPU": 0.5, "GPU": 1.0}) == "cuda"  # Ray gave it a GPU
    assert _resolve_device(None, {"CPU": 0.5, "GPU": 0.25}) == "cuda"  # a GPU share
    assert _resolve_device(None, {"CPU": 0.5}) == "cpu"  # GPU on the node, not assigned
    assert _resolve_device(None, None) == "cuda"  # outside Ray: whatever torch sees
    assert _resolve_device("cpu", {"GPU": 1.0}) == "cpu"  # explicit wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _resolve_device(None, {"GPU": 1.0}) == "cpu"
    assert _resolve_device(None, None) == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        _resolve_device("cuda", None)


def test_explicit_missing_projection_path_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="projection_path"):
        Embedder.func_or_class({"projection_path": str(tmp_path / "nope.json")})


def test_onnx_backend_is_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        Embedder.func_or_class({"backend": "onnx-int8", "device": "cuda"})


# --- local testing mode ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_handle():
    return serve.run(Embedder.bind({}), name="embedder-local", _local_testing_mode=True)


@pytest.mark.ray
def test_local_embed_many_matches_core(local_handle, pipeline: FeaturePipeline) -> None:
    got = np.asarray(local_handle.embed_many.remote(PROMPTS).result())
    assert got.shape == (len(PROMPTS), 26)
    assert np.all(got[:, -1] == 1.0)
    np.testing.assert_allclose(got, _expected(pipeline, PROMPTS), atol=1e-5)
    assert local_handle.embed_many.remote([]).result() == []


@pytest.mark.ray
def test_local_embed_encodes_a_lone_prompt_at_once(local_handle, pipeline: FeaturePipeline) -> None:
    before = local_handle.info.remote().result()
    got = np.asarray(local_handle.embed.remote(PROMPTS[2]).result())
    np.testing.assert_allclose(got, _expected(pipeline, PROMPTS[2:3])[0], atol=1e-5)
    info = local_handle.info.remote().result()
    assert info["batches"] - before["batches"] == 1  # a batch of its own, no wait for company
    assert info["dim"] == 26 and info["device"] == "cpu" and info["projection_fallback"] is False
    assert info["encode_batch_size"] == CPU_ENCODE_BATCH_SIZE  # length-sorted passes on CPU
    assert info["projection_fingerprint"] == load_projection().fingerprint


@pytest.mark.ray
def test_local_empty_prompt_rejected(local_handle) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] is empty or whitespace-only"):
        local_handle.embed_many.remote(["fine", "   "]).result()
    with pytest.raises(ValueError, match="prompt is empty"):
        local_handle.embed.remote("").result()
    with pytest.raises(TypeError, match="list of str"):
        local_handle.embed_many.remote("a single string").result()


@pytest.mark.ray
def test_local_long_prompt_is_cut(local_handle, pipeline: FeaturePipeline) -> None:
    long = "Explain the central limit theorem. " * 5000  # ~175k chars > max_prompt_chars
    got = np.asarray(local_handle.embed.remote(long).result())
    # MiniLM reads only the first 256 tokens, so the cut changes nothing
    np.testing.assert_allclose(got, _expected(pipeline, [long[:2000]])[0], atol=1e-5)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def onnx_handle():
    args = {"backend": "onnx-int8", "cache_size": 4}
    return serve.run(Embedder.bind(args), name="embedder-onnx", _local_testing_mode=True)


@pytest.mark.ray
def test_local_onnx_int8_close_to_torch(onnx_handle, pipeline: FeaturePipeline) -> None:
    got = np.asarray(onnx_handle.embed_many.remote(PROMPTS).result())
    assert got.shape == (len(PROMPTS), 26) and np.all(got[:, -1] == 1.0)
    assert _cos(got, _expected(pipeline, PROMPTS)).min() >= 0.99
    info = onnx_handle.info.remote().result()
    assert info["backend"] == "onnx-int8" and "/onnx-int8/sq-" in info["encoder"]
    assert info["encode_batch_size"] == 1 and info["device"] == "cpu"


@pytest.mark.ray
def test_local_static_backend_serves_the_static_encoder() -> None:
    from core.encoding.minilm_static import StaticMiniLMEncoder

    handle = serve.run(
        Embedder.bind({"backend": "static"}), name="embedder-static", _local_testing_mode=True
    )
    got = np.asarray(handle.embed_many.remote(PROMPTS).result())
    want = FeaturePipeline(StaticMiniLMEncoder(), load_projection()).contexts(PROMPTS)
    np.testing.assert_allclose(got, want, atol=1e-6)
    info = handle.info.remote().result()
    assert info["backend"] == "static" and "/static/" in info["encoder"]
    with pytest.raises(ValueError, match="CPU only"):
        Embedder.func_or_class({"backend": "static", "device": "cuda"})


@pytest.mark.ray
def test_local_cache_hits_return_identical_vectors(onnx_handle) -> None:
    before = onnx_handle.info.remote().result()
    text = "A prompt for the cache test: name three moons of Jupiter."
    first = onnx_handle.embed.remote(text).result()
    second = onnx_handle.embed.remote(text).result()
    assert first == second
    many = onnx_handle.embed_many.remote([text, "Another prompt.", "Another prompt."]).result()
    assert many[0] == first and many[1] == many[2]
    info = onnx_handle.info.remote().result()
    assert info["cache_hits"] - before["cache_hits"] == 2  # second embed, many[0]
    assert info["cache_misses"] - before["cache_misses"] == 3  # first embed, 2 x "Another"
    assert info["prompts_embedded"] - before["prompts_embedded"] == 2  # duplicates encoded once
    assert info["cache_capacity"] == 4 and info["cache_size"] <= 4


@pytest.mark.ray
def test_local_cache_off_by_default(local_handle) -> None:
    before = local_handle.info.remote().result()
    local_handle.embed.remote(PROMPTS[0]).result()
    local_handle.embed.remote(PROMPTS[0]).result()
    info = local_handle.info.remote().result()
    assert info["cache_capacity"] == 0 and info["cache_hits"] == 0
    assert info["prompts_embedded"] - before["prompts_embedded"] == 2


# --- a real Serve instance on a local Ray ----------------------------------------------------


@pytest.fixture(scope="module")
def cluster_handle():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")  # handles only: no HTTP port to collide on
        options = Deployments().embedder.serve_options()  # what the graph builder applies
        app = Embedder.options(**options).bind({"max_batch_size": 16})
        handle = serve.run(app, name="embedder-test", route_prefix=None)
        yield handle
    finally:
        serve.shutdown()
        ray.shutdown()


async def _gather(handle, texts: list[str]) -> list:
    return await asyncio.gather(*[handle.embed.remote(t) for t in texts], return_exceptions=True)


@pytest.mark.ray
def test_cluster_embed_batches_concurrent_calls(cluster_handle, pipeline) -> None:
    cluster_handle.embed.remote("warm up").result()  # first encode is slow; batch the rest
    before = cluster_handle.info.remote().result()
    texts = [PROMPTS[i % len(PROMPTS)] + f" (variant {i})" for i in range(40)]
    got = asyncio.run(_gather(cluster_handle, texts))
    assert not [g for g in got if isinstance(g, BaseException)]
    np.testing.assert_allclose(np.asarray(got), _expected(pipeline, texts), atol=1e-5)

    info = cluster_handle.info.remote().result()
    assert info["torch_threads"] == 1  # num_cpus 0.5 -> 1 thread
    assert info["max_batch_size"] == 16
    assert info["prompts_embedded"] - before["prompts_embedded"] == 40
    assert info["batches"] - before["batches"] < 40  # some calls shared a batch
    assert 1 < info["max_batch_seen"] <= 16  # ... gathered while one encoded, up to the limit


@pytest.mark.ray
def test_cluster_bad_prompt_fails_alone(cluster_handle, pipeline) -> None:
    texts = ["What is 7 * 6?", "", "Name three prime numbers.", " \n "]
    got = asyncio.run(_gather(cluster_handle, texts))
    assert isinstance(got[1], ValueError) and isinstance(got[3], ValueError)
    assert "empty or whitespace-only" in str(got[1])
    ok = np.asarray([got[0], got[2]])
    np.testing.assert_allclose(ok, _expected(pipeline, [texts[0], texts[2]]), atol=1e-5)


@pytest.mark.ray
def test_cluster_embed_many(cluster_handle, pipeline) -> None:
    got = np.asarray(cluster_handle.embed_many.remote(PROMPTS).result())
    np.testing.assert_allclose(got, _expected(pipeline, PROMPTS), atol=1e-5)
