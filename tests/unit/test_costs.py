"""The cost model: blended list price p_a and the normalised cost term c~_a of the score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.method.config import CostScaleConfig, PacerConfig, RouterConfig
from core.method.costs import blended_price_per_1k, cost_term, realised_cost_usd
from core.method.registry import ModelSpec
from core.method.router import Router

# The four models of ../shared/data/prices.json, in that file's format.
PRICES_JSON = """
{
  "note": "List prices in US dollars per million tokens.",
  "models": [
    {"id": "meta-llama/llama-3.1-8b-instruct", "input_per_m": 0.10, "output_per_m": 0.10,
     "context_length": 128000, "speed": "fast"},
    {"id": "mistralai/mistral-large-2512", "input_per_m": 0.50, "output_per_m": 1.50,
     "context_length": 128000, "speed": "balanced"},
    {"id": "google/gemini-2.5-flash", "input_per_m": 0.30, "output_per_m": 2.50,
     "context_length": 1000000, "speed": "balanced"},
    {"id": "google/gemini-2.5-pro", "input_per_m": 1.25, "output_per_m": 10.00,
     "context_length": 1048576, "speed": "slow"}
  ]
}
"""

# (ln p - ln 1e-4) / (ln 0.1 - ln 1e-4) = log10(p / 1e-4) / 3 for p in $ per 1k tokens.
EXPECTED = {
    "meta-llama/llama-3.1-8b-instruct": (1e-4, 0.0),
    "mistralai/mistral-large-2512": (1e-3, 1.0 / 3.0),
    "google/gemini-2.5-flash": (1.4e-3, 0.3820426785594126),  # ln(14) / ln(1000)
    "google/gemini-2.5-pro": (5.625e-3, 0.5833741755944666),  # ln(56.25) / ln(1000)
}


def _specs() -> list[ModelSpec]:
    return [ModelSpec.model_validate(m) for m in json.loads(PRICES_JSON)["models"]]


def test_blended_price_is_mean_of_input_and_output_per_1k() -> None:
    for spec in _specs():
        price, _ = EXPECTED[spec.id]
        assert blended_price_per_1k(spec.input_per_m, spec.output_per_m) == pytest.approx(
            price, rel=1e-12
        )
        assert spec.blended_price == pytest.approx(price, rel=1e-12)


def test_cost_term_for_the_four_listed_models() -> None:
    specs = _specs()
    prices = np.array([s.blended_price for s in specs])
    terms = cost_term(prices, CostScaleConfig())
    for spec, term in zip(specs, terms, strict=True):
        assert term == pytest.approx(EXPECTED[spec.id][1], abs=1e-12), spec.id
    # The closed forms, written out.
    assert terms[1] == pytest.approx(math.log(10) / math.log(1000), abs=1e-12)
    assert terms[2] == pytest.approx(math.log(14) / math.log(1000), abs=1e-12)
    assert terms[3] == pytest.approx(math.log(56.25) / math.log(1000), abs=1e-12)


def test_cost_term_is_clipped_to_unit_interval_and_monotone() -> None:
    scale = CostScaleConfig()
    terms = cost_term(np.array([1e-6, 1e-4, 1e-2, 0.1, 5.0]), scale)
    np.testing.assert_allclose(terms, [0.0, 0.0, 2.0 / 3.0, 1.0, 1.0], atol=1e-12)
    grid = cost_term(np.geomspace(1e-5, 1.0, 50), scale)
    assert (np.diff(grid) >= 0).all()
    assert grid.min() == 0.0 and grid.max() == 1.0


def test_cost_term_uses_the_configured_scale() -> None:
    scale = CostScaleConfig(price_lo=1e-3, price_hi=1e-2)
    np.testing.assert_allclose(
        cost_term(np.array([1e-3, math.sqrt(1e-5), 1e-2]), scale), [0.0, 0.5, 1.0], atol=1e-12
    )


def test_realised_cost_is_tokens_times_list_prices() -> None:
    # 1000 prompt tokens at $0.50/M + 2000 completion tokens at $1.50/M = $0.0035.
    assert realised_cost_usd(1000, 2000, 0.50, 1.50) == pytest.approx(0.0035, rel=1e-12)
    assert realised_cost_usd(0, 0, 1.25, 10.0) == 0.0
    assert realised_cost_usd(1_000_000, 0, 1.25, 10.0) == pytest.approx(1.25, rel=1e-12)


def test_router_uses_the_same_cost_terms_and_prices() -> None:
    router = Router(RouterConfig(pacer=PacerConfig(budget_usd=1e-3)), models=_specs())
    for i, m in enumerate(router.arms.slot_models):
        price, term = EXPECTED[m]
        assert router.arms.prices[i] == pytest.approx(price, rel=1e-12)
        assert router.arms.cost_terms[i] == pytest.approx(term, abs=1e-12)
        assert router.state()["models"][m]["blended_usd_per_m"] == pytest.approx(price * 1000)


def test_prices_file_in_shared_data_matches_the_expected_table(shared_data) -> None:
    models = json.loads((shared_data / "prices.json").read_text())["models"]
    specs = [ModelSpec.model_validate(m) for m in models]
    assert {s.id for s in specs} == set(EXPECTED)
    for s in specs:
        assert s.blended_price == pytest.approx(EXPECTED[s.id][0], rel=1e-12)
