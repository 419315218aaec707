"""Features layer: projection fit/apply/persist, fallback, embedding cache, reward-file loading."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from core.encoding.embedding_cache import cache_key, cached_encode
from core.encoding.features import FeaturePipeline, Projection, fit_projection, load_projection
from core.replay.data import RewardData, half_rows, load_prices, load_reward_file

RAW_DIM = 48


def _synthetic(n: int = 400, seed: int = 0) -> np.ndarray:
    """Anisotropic data with a non-zero mean, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, RAW_DIM)) * np.linspace(3.0, 0.1, RAW_DIM) + 0.5


@pytest.fixture
def projection() -> Projection:
    return fit_projection(_synthetic(), 10, encoder_name="fake/1", fitted_on="synthetic (400)")


# --- projection -------------------------------------------------------------------------------


def test_apply_shape_bias_and_whitening(projection: Projection) -> None:
    x = projection.apply(_synthetic())
    assert x.shape == (400, 11) and x.dtype == np.float64 and projection.dim == 11
    assert np.all(x[:, -1] == 1.0)
    z = x[:, :-1]
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(10), atol=1e-4)


def test_apply_single_vector_matches_batch(projection: Projection) -> None:
    e = _synthetic(5, seed=1)
    one = projection.apply(e[2])
    assert one.shape == (11,) and one[-1] == 1.0
    np.testing.assert_allclose(one, projection.apply(e)[2], rtol=1e-12)


def test_apply_rejects_wrong_dim_and_nan(projection: Projection) -> None:
    with pytest.raises(ValueError, match="shape"):
        projection.apply(np.zeros((2, RAW_DIM + 1)))
    bad = np.zeros(RAW_DIM)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        projection.apply(bad)


def test_fit_is_deterministic_and_rejects_too_many_components() -> None:
    a = fit_projection(_synthetic(), 10, encoder_name="fake/1", fitted_on="x")
    b = fit_projection(_synthetic(), 10, encoder_name="fake/1", fitted_on="x")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    with pytest.raises(ValueError, match="n_components"):
        fit_projection(_synthetic(n=8), 10, encoder_name="fake/1", fitted_on="x")


def test_save_load_round_trip(projection: Projection, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "projection.json"
    projection.save(path)
    loaded = Projection.load(path)
    e = _synthetic(20, seed=2)
    assert np.array_equal(loaded.apply(e), projection.apply(e))
    assert loaded.fingerprint == projection.fingerprint
    assert (loaded.encoder_name, loaded.fitted_on, loaded.fallback) == (
        "fake/1",
        "synthetic (400)",
        False,
    )
    assert [p.name for p in path.parent.iterdir()] == ["projection.json"]  # no temp files left


def test_load_rejects_edited_numbers(projection: Projection, tmp_path: Path) -> None:
    path = tmp_path / "projection.json"
    projection.save(path)
    doc = json.loads(path.read_text())
    doc["scale"][0] *= 2
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        Projection.load(path)


def test_missing_artifact_warns_and_falls_back(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="routing quality will suffer.*features fit"):
        proj = load_projection(tmp_path / "absent.json")
    assert proj.fallback and proj.dim == 26 and proj.raw_dim == 384
    rng = np.random.default_rng(3)
    e = rng.standard_normal((2000, 384))
    e /= np.linalg.norm(e, axis=1, keepdims=True)  # unit-norm, like MiniLM
    x = proj.apply(e)
    assert np.all(x[:, -1] == 1.0)
    assert 0.8 < x[:, :-1].var(axis=0).mean() < 1.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_projection(tmp_path / "absent.json")
    assert again.fingerprint == proj.fingerprint  # seeded


def test_packaged_artifact_loads_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proj = load_projection()
    assert not proj.fallback and proj.dim == 26 and proj.raw_dim == 384
    assert proj.encoder_name == "all-MiniLM-L6-v2/max256/norm"


# --- encoder double + pipeline + cache --------------------------------------------------------


class CountingEncoder:
    """Test double for core.encoding.features.Encoder: deterministic vectors, counts calls."""

    def __init__(self, name: str = "fake/1", dim: int = RAW_DIM) -> None:
        self.name, self.dim, self.calls = name, dim, 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        seeds = [sum(t.encode()) for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]).astype(
            np.float32
        )


def test_pipeline_contexts(projection: Projection) -> None:
    pipe = FeaturePipeline(CountingEncoder(), projection)
    x = pipe.contexts(["a", "bb", "ccc"])
    assert x.shape == (3, pipe.dim) == (3, 11)
    np.testing.assert_allclose(pipe.context("bb"), x[1])
    with pytest.raises(ValueError, match="fitted for encoder"):
        FeaturePipeline(CountingEncoder(name="other/1"), projection)


def test_cache_hit_skips_encoder(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first = cached_encode(["alpha", "beta"], enc, tmp_path)
    second = cached_encode(["alpha", "beta"], enc, tmp_path)
    assert enc.calls == 1 and first.dtype == np.float32 and first.shape == (2, RAW_DIM)
    assert np.array_equal(first, second)
    cached_encode(["alpha", "gamma"], enc, tmp_path)  # other texts: other key
    assert enc.calls == 2


def test_cache_key_is_unambiguous() -> None:
    assert cache_key(["ab", "c"], "m") != cache_key(["a", "bc"], "m")
    assert cache_key(["x"], "m1") != cache_key(["x"], "m2")
    assert cache_key(["a", ""], "m") != cache_key(["a"], "m")


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    enc = CountingEncoder()
    good = cached_encode(["alpha", "beta"], enc, tmp_path)
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(b"not an npy file")
    assert np.array_equal(cached_encode(["alpha", "beta"], enc, tmp_path), good)
    np.save(path, np.zeros((3, 2), dtype=np.float32))  # valid npy, wrong shape
    assert np.array_equal(cached_encode(["alpha", "beta"], enc, tmp_path), good)
    assert enc.calls == 3
    assert np.array_equal(np.load(path), good)  # repaired on disk


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSERVE_CACHE_DIR", str(tmp_path))
    cached_encode(["alpha"], CountingEncoder())
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1


# --- reward files and prices ------------------------------------------------------------------

A, B = "vendor/a", "vendor/b"


def _row(prompt: str, ra: float = 0.5, ca: float = 1e-4, rb: float = 0.9, cb: float = 1e-2) -> str:
    arms = {A: {"reward": ra, "cost": ca, "near_best": False}, B: {"reward": rb, "cost": cb}}
    return json.dumps({"prompt": prompt, "source": "gsm8k", "arms": arms})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_reward_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.jsonl", [_row("p1", ra=0.2, ca=1.0), "", _row("p2", ra=0.4, ca=3.0)]
    )
    data = load_reward_file(path)
    assert data.models == (A, B) and data.prompts == ("p1", "p2") and len(data) == 2
    assert data.rewards.shape == data.costs.shape == (2, 2)
    assert data.mean_reward() == pytest.approx({A: 0.3, B: 0.9})
    assert data.mean_cost() == pytest.approx({A: 2.0, B: 1e-2})
    assert data.sources == ("gsm8k", "gsm8k") and data.path == str(path)
    sub = data.subset([1]).select_models([B, A])
    assert sub.prompts == ("p2",) and sub.models == (B, A)
    assert sub.rewards.tolist() == [[0.9, 0.4]]
    with pytest.raises(ValueError, match="unknown models"):
        data.select_models(["vendor/zzz"])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ('{"prompt": "x", "arms": ', "malformed JSON"),
        (_row("p", ra=1.5), "reward must be in"),
        (_row("p", ca=-1.0), "cost must be >= 0"),
        (_row("p").replace("0.5", "NaN"), "finite"),
        (_row("p").replace('"reward": 0.5', '"reward": "0.5"'), "must be a number"),
        (_row("  "), "prompt"),
        (json.dumps({"prompt": "p", "arms": {A: {"reward": 0.5, "cost": 0.1}}}), "missing"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, bad: str, match: str) -> None:
    path = _write(tmp_path / "r.jsonl", [_row("ok1"), _row("ok2"), bad])
    with pytest.raises(ValueError, match=match) as info:
        load_reward_file(path)
    assert f"{path}:3:" in str(info.value)


def test_empty_reward_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows"):
        load_reward_file(_write(tmp_path / "r.jsonl", [""]))


def _halves(data: RewardData, seed: int = 0) -> tuple[RewardData, RewardData]:
    """The two halves --holdout-split SEED makes of a file (warm-up half, evaluation half)."""
    return (
        data.subset(half_rows(data, seed, first=True)),
        data.subset(half_rows(data, seed, first=False)),
    )


def test_holdout_halves_deterministic_and_consistent_across_files(tmp_path: Path) -> None:
    prompts = [f"prompt {i}" for i in range(200)]
    one = load_reward_file(_write(tmp_path / "one.jsonl", [_row(p) for p in prompts]))
    two = load_reward_file(_write(tmp_path / "two.jsonl", [_row(p) for p in prompts[50:][::-1]]))
    a1, b1 = _halves(one)
    assert _halves(one)[0].prompts == a1.prompts  # deterministic
    assert set(a1.prompts).isdisjoint(b1.prompts) and len(a1) + len(b1) == 200
    assert 60 < len(a1) < 140
    a2, b2 = _halves(two)
    assert set(a2.prompts) == set(a1.prompts) & set(two.prompts)
    assert set(b2.prompts) == set(b1.prompts) & set(two.prompts)
    assert _halves(one, seed=1)[0].prompts != a1.prompts
    assert len(half_rows(one, None, first=False)) == 200  # no split seed: every row


@pytest.mark.data
def test_shared_files_load_and_split_consistently(shared_data: Path) -> None:
    val, k4 = (
        load_reward_file(shared_data / "val.jsonl"),
        load_reward_file(shared_data / "val_k4.jsonl"),
    )
    assert (len(val), len(val.models), len(k4.models)) == (1785, 3, 4)
    assert val.mean_reward()["google/gemini-2.5-pro"] == pytest.approx(0.935, abs=1e-3)
    half_val, half_k4 = _halves(val)[0], _halves(k4)[0]
    assert set(half_k4.prompts) == set(half_val.prompts) & set(k4.prompts)
    prices = load_prices(shared_data / "prices.json")
    assert set(val.models) | set(k4.models) <= set(prices)


def test_load_prices(tmp_path: Path) -> None:
    good = {
        "id": A,
        "input_per_m": 0.1,
        "output_per_m": 0.2,
        "context_length": 1000,
        "speed": "fast",
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"note": "n", "models": [good]}))
    assert load_prices(path)[A].output_per_m == 0.2
    path.write_text(json.dumps({"models": [dict(good, input_per_m=0)]}))
    with pytest.raises(ValueError, match=r"models\.0\.input_per_m"):
        load_prices(path)
    path.write_text(json.dumps({"models": [good, good]}))
    with pytest.raises(ValueError, match="listed twice"):
        load_prices(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_prices(path)
