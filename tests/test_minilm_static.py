"""The static encoder (core.encoding.minilm_static) against the torch MiniLM it stands in for.

Its token table is built from the packaged weights on first use (~30 s) and cached under
$PARETOSERVE_CACHE_DIR/static; CI points that into the clone, so every run builds it afresh.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.encoding.built_files import weights_digest
from core.encoding.features import FeaturePipeline, load_projection
from core.encoding.minilm import MiniLMEncoder, default_model_path, encoder_name
from core.encoding.minilm_static import (
    DEFAULT_MAP_PATH,
    MAX_TOKENS,
    StaticMiniLMEncoder,
    StaticTokens,
    default_static_dir,
    fit_map,
    load_map,
    save_map,
    static_encoder_name,
    table_inputs,
)

PROMPTS = [
    "What is the capital of France?",
    "Write a python function to reverse a linked list in place.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following is a characteristic of a stationary process? (A) constant mean "
    "(B) a unit root (C) a deterministic trend (D) explosive variance",
    "Translate 'good morning' into Japanese and explain the politeness level.",
    "Is it true that cracking your knuckles causes arthritis?",
]


@pytest.fixture(scope="module")
def static() -> StaticMiniLMEncoder:
    return StaticMiniLMEncoder()


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return MiniLMEncoder(device="cpu").encode(PROMPTS)


def test_vectors_land_in_the_torch_space(static, torch_vectors) -> None:
    """The map's job: each prompt's static vector is nearest the torch vector of that same
    prompt, and the torch projection accepts the encoder."""
    got = static.encode(PROMPTS)
    assert got.shape == (len(PROMPTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = got @ torch_vectors.T
    assert list(cos.argmax(axis=1)) == list(range(len(PROMPTS)))
    assert cos.diagonal().min() > 0.5
    contexts = FeaturePipeline(static, load_projection()).contexts(PROMPTS)
    assert contexts.shape == (len(PROMPTS), 26) and np.all(contexts[:, -1] == 1.0)


def test_a_vector_depends_on_its_prompt_alone(static) -> None:
    alone = static.encode(PROMPTS[1:2])[0]
    mixed = static.encode([PROMPTS[0], PROMPTS[1], PROMPTS[1] + " " * 3])
    np.testing.assert_array_equal(mixed[1], alone)
    np.testing.assert_array_equal(mixed[2], alone)  # the same strip as the torch encoder


def test_reads_at_most_max_tokens(static) -> None:
    head = "word " * MAX_TOKENS
    np.testing.assert_array_equal(
        static.encode([head + "tail " * 50])[0], static.encode([head + "other " * 50])[0]
    )


def test_encode_rejects_bad_input(static) -> None:
    with pytest.raises(TypeError, match="single str"):
        static.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text 1 is empty"):
        static.encode(["ok", "  "])
    with pytest.raises(TypeError, match="text 0 is int"):
        static.encode([3])  # type: ignore[list-item]
    assert static.encode([]).shape == (0, 384)
    dropped = static.encode(["\u200b\u200b", "\u0301"])  # no tokens left: still a vector
    assert np.isfinite(dropped).all()
    np.testing.assert_allclose(np.linalg.norm(dropped, axis=1), 1.0, atol=1e-5)


def test_table_is_cached_under_a_name_that_follows_its_inputs(static) -> None:
    inputs = table_inputs(default_model_path())
    assert inputs["weights"] == weights_digest(default_model_path())
    assert {"torch", "transformers", "table", "pool"} <= set(inputs)
    built = list(default_static_dir().glob("minilm-l6-static-table-*.npy"))
    assert built, "the encoder's table was not written to the cache"
    mtimes = {p: p.stat().st_mtime_ns for p in built}
    StaticMiniLMEncoder()  # loads, does not rebuild
    assert {p: p.stat().st_mtime_ns for p in built} == mtimes
    assert static.approximates == encoder_name(256, True)


def test_the_name_follows_the_map(static, tmp_path) -> None:
    weights, digest = load_map()
    assert static.name == static_encoder_name() and digest in static.name
    other = tmp_path / "map.npz"
    save_map(weights * 1.01, other, "test")
    assert static_encoder_name(other) != static.name
    save_map(weights[:10], tmp_path / "bad.npz", "test")
    with pytest.raises(ValueError, match="shape"):
        StaticMiniLMEncoder(map_path=tmp_path / "bad.npz")


@pytest.mark.data
def test_committed_map_is_what_the_fit_command_makes(shared_data, static) -> None:
    """`paretoserve features fit-static` on the shared prompts reproduces the committed map
    (compared through the vectors it makes, which float rounding cannot move)."""
    from core.encoding.embedding_cache import cached_encode
    from core.replay.data import load_reward_file

    prompts = list(dict.fromkeys(load_reward_file(shared_data / "val.jsonl").prompts))
    tokens = StaticTokens()
    pooled = tokens.pooled(prompts)
    refit = fit_map(pooled, cached_encode(prompts, MiniLMEncoder(device="cpu")))
    committed = load_map(DEFAULT_MAP_PATH)[0]
    x = np.hstack([pooled, np.ones((len(pooled), 1))])
    a, b = x @ refit, x @ committed
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9999


@pytest.mark.data
def test_routes_as_well_as_torch_on_the_replay(shared_data) -> None:
    """The bar the encoder was kept on: stationary replay reward within 0.002 of torch at the
    paper's seven ceilings (20 seeds; docs/research/static_encoder_eval.py does the same with the
    map fitted on the warm-up half alone, on both halves of two splits)."""
    from core.method.priors import build_priors
    from core.replay.data import in_first_half, load_reward_file
    from core.replay.protocol import ReplaySpec, Scenario, paper_ceilings, run_replay
    from core.replay.stream import Outcomes
    from paretoserve_cli.contexts import contexts_for, load_specs

    d = load_reward_file(shared_data / "val.jsonl")
    specs = load_specs(shared_data / "prices.json", d.models)
    first = np.array([in_first_half(p, 0) for p in d.prompts])
    rewards = {}
    for encoder in ("torch", "static"):
        x = contexts_for(d, encoder=encoder)
        warm, ev = (
            Outcomes(x[r], d.rewards[r], d.costs[r], tuple(d.models)) for r in (first, ~first)
        )
        priors = build_priors(warm.contexts, warm.rewards, warm.models, costs=warm.costs)
        rewards[encoder] = [
            run_replay(
                ReplaySpec(scenario=Scenario.STATIONARY, budget_usd=b, seeds=20),
                specs,
                ev,
                warm,
                priors,
            )[0]["summary"]["mean_reward"]
            for b in paper_ceilings(warm)
        ]
    deltas = np.array(rewards["static"]) - np.array(rewards["torch"])
    assert deltas.min() >= -0.002, deltas
