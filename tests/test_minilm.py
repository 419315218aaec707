"""The real MiniLM encoder (bundled weights, CPU ok) and the committed projection on top of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.encoding.features import FeaturePipeline, load_projection
from core.encoding.minilm import MiniLMEncoder


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder(device="cpu")


def test_shape_dtype_and_unit_norm(encoder: MiniLMEncoder) -> None:
    e = encoder.encode(
        ["What is 2 + 2?", "Write a haiku about rain.", "Translate 'cat' to French."]
    )
    assert e.shape == (3, 384) and e.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert encoder.name == "all-MiniLM-L6-v2/max256/norm"


def test_similar_sentences_are_closer(encoder: MiniLMEncoder) -> None:
    cat, kitten, tax = encoder.encode(
        [
            "The cat sat on the mat.",
            "A kitten was sitting on the rug.",
            "Quarterly corporate tax filings are due in April.",
        ]
    )
    assert cat @ kitten > cat @ tax + 0.2


@pytest.mark.parametrize("texts", [["ok", ""], ["ok", "   \n\t"]])
def test_empty_prompt_rejected_with_index(encoder: MiniLMEncoder, texts: list[str]) -> None:
    with pytest.raises(ValueError, match="text 1 is empty"):
        encoder.encode(texts)


def test_single_string_is_a_type_error(encoder: MiniLMEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("a prompt")  # type: ignore[arg-type]


def test_long_prompt_truncated(encoder: MiniLMEncoder) -> None:
    head = "Explain the proof of the fundamental theorem of algebra. "
    long = head * 40 + "irrelevant tail words " * 2000  # far past 256 tokens
    e = encoder.encode([long, head * 40 + "a different tail " * 2000])
    assert e.shape == (2, 384) and np.isfinite(e).all()
    # only the first 256 tokens are read, and the two share them
    np.testing.assert_allclose(e[0], e[1], atol=1e-5)


def test_raw_embeddings_when_not_normalized() -> None:
    raw = MiniLMEncoder(device="cpu", normalize=False, max_seq_length=128)
    assert raw.name == "all-MiniLM-L6-v2/max128/raw"
    norms = np.linalg.norm(raw.encode(["hello world", "a longer sentence here"]), axis=1)
    assert not np.allclose(norms, 1.0)


def test_committed_projection_on_real_embeddings(encoder: MiniLMEncoder) -> None:
    pipe = FeaturePipeline(encoder, load_projection())
    prompts = [
        "What is the capital of France?",
        "Write a python function to reverse a linked list.",
        "Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
        "Which of the following is a characteristic of a stationary process?",
    ]
    x = pipe.contexts(prompts)
    assert x.shape == (4, 26) and np.all(x[:, -1] == 1.0) and np.isfinite(x).all()
    # whitened scale: components are O(1), not O(1/sqrt(384)) or O(100)
    assert 0.05 < np.abs(x[:, :-1]).mean() < 5.0
    np.testing.assert_allclose(pipe.context(prompts[1]), x[1], atol=1e-6)


@pytest.mark.data
def test_committed_projection_whitens_the_shared_prompts(shared_data: Path) -> None:
    from core.encoding.embedding_cache import cached_encode
    from core.replay.data import load_reward_file

    prompts = load_reward_file(shared_data / "val.jsonl").prompts
    enc = MiniLMEncoder(device="cpu")
    z = load_projection().apply(cached_encode(prompts, enc))[:, :-1]
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(25), atol=0.05)


def test_importing_core_does_not_load_torch() -> None:
    code = (
        "import sys, core, core.encoding.features, core.encoding.embedding_cache, "
        "core.replay.data, core.encoding.minilm;"
        "sys.exit(int('torch' in sys.modules or 'sentence_transformers' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
