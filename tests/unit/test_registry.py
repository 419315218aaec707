"""The model table: add / remove / re-price, versioned changes, bad prices rejected."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from core.method.registry import ChangeKind, ModelRegistry, ModelSpec, RegistryError

LLAMA = ModelSpec(id="meta-llama/llama-3.1-8b-instruct", input_per_m=0.10, output_per_m=0.10)
MISTRAL = ModelSpec(id="mistralai/mistral-large-2512", input_per_m=0.50, output_per_m=1.50)
FLASH = ModelSpec(id="google/gemini-2.5-flash", input_per_m=0.30, output_per_m=2.50)

BAD_PRICES = [0.0, -1.0, math.nan, math.inf, -math.inf]


def test_every_change_is_versioned_in_order() -> None:
    reg = ModelRegistry([LLAMA, MISTRAL])
    assert reg.version == 2
    reg.add(FLASH)
    reg.reprice(FLASH.id, input_per_m=0.2)
    reg.remove(MISTRAL.id)
    reg.add(MISTRAL)
    assert reg.version == 6
    assert [c.version for c in reg.changes] == [1, 2, 3, 4, 5, 6]
    assert [c.kind for c in reg.changes] == [
        ChangeKind.ADD,
        ChangeKind.ADD,
        ChangeKind.ADD,
        ChangeKind.REPRICE,
        ChangeKind.REMOVE,
        ChangeKind.ADD,
    ]
    assert [c.model_id for c in reg.changes][3:] == [FLASH.id, MISTRAL.id, MISTRAL.id]
    assert reg.changes[3].spec.input_per_m == 0.2
    assert reg.changes[4].spec is None


def test_remove_keeps_the_spec_and_re_add_reactivates() -> None:
    reg = ModelRegistry([LLAMA, MISTRAL])
    reg.remove(MISTRAL.id)
    assert [s.id for s in reg.active_models()] == [LLAMA.id]
    assert reg.specs[MISTRAL.id] == MISTRAL  # kept for a re-add
    with pytest.raises(RegistryError, match="unknown model"):
        reg.get(MISTRAL.id)
    with pytest.raises(RegistryError, match="unknown model"):
        reg.remove(MISTRAL.id)
    reg.add(MISTRAL)
    assert [s.id for s in reg.active_models()] == [LLAMA.id, MISTRAL.id]


def test_duplicate_add_and_last_model_removal_are_rejected() -> None:
    reg = ModelRegistry([LLAMA])
    with pytest.raises(RegistryError, match="already registered"):
        reg.add(LLAMA)
    with pytest.raises(RegistryError, match="last active model"):
        reg.remove(LLAMA.id)
    assert reg.version == 1
    assert reg.active == {LLAMA.id: True}


def test_reprice_changes_the_blended_price() -> None:
    reg = ModelRegistry([MISTRAL])
    reg.reprice(MISTRAL.id, output_per_m=0.5)
    spec = reg.get(MISTRAL.id)
    assert (spec.input_per_m, spec.output_per_m) == (0.5, 0.5)
    assert spec.blended_price == pytest.approx(5e-4, rel=1e-12)
    with pytest.raises(RegistryError, match="needs input_per_m or output_per_m"):
        reg.reprice(MISTRAL.id)
    with pytest.raises(RegistryError, match="unknown model"):
        reg.reprice("nope", input_per_m=1.0)


@pytest.mark.parametrize("bad", BAD_PRICES)
def test_bad_reprice_is_rejected_with_nothing_changed(bad: float) -> None:
    reg = ModelRegistry([LLAMA, MISTRAL])
    before = reg.to_json()
    for kwargs in (
        {"input_per_m": bad},
        {"output_per_m": bad},
        {"input_per_m": 1.0, "output_per_m": bad},
    ):
        with pytest.raises(ValueError):
            reg.reprice(MISTRAL.id, **kwargs)
    assert reg.to_json() == before
    assert reg.version == 2


@pytest.mark.parametrize("bad", BAD_PRICES)
def test_bad_prices_cannot_make_a_spec(bad: float) -> None:
    with pytest.raises(ValidationError):
        ModelSpec(id="x", input_per_m=bad, output_per_m=1.0)
    with pytest.raises(ValidationError):
        ModelSpec(id="x", input_per_m=1.0, output_per_m=bad)


def test_spec_rejects_unknown_fields_and_empty_id() -> None:
    with pytest.raises(ValidationError):
        ModelSpec(id="x", input_per_m=1.0, output_per_m=1.0, price=3.0)
    with pytest.raises(ValidationError):
        ModelSpec(id="", input_per_m=1.0, output_per_m=1.0)
    spec = ModelSpec(id="x", input_per_m=1.0, output_per_m=1.0)
    assert spec.upstream_name == "x"
    assert ModelSpec(id="x", provider_model="y", input_per_m=1, output_per_m=1).upstream_name == "y"


def test_json_round_trip() -> None:
    reg = ModelRegistry([LLAMA, MISTRAL, FLASH])
    reg.reprice(FLASH.id, input_per_m=0.25)
    reg.remove(LLAMA.id)
    back = ModelRegistry.from_json(reg.to_json())
    assert back.to_json() == reg.to_json()
    assert back.version == 5
    assert back.specs == reg.specs
    assert back.active == reg.active
    assert back.changes == reg.changes


# ---------------------------------------------------------------- simulation knobs


def test_simulate_is_a_versioned_change_that_keeps_prices() -> None:
    from core.method.registry import SimBehaviour

    reg = ModelRegistry([LLAMA, MISTRAL])
    change = reg.simulate(MISTRAL.id, {"reward_scale": 0.5, "error_rate": 0.2})
    assert (change.version, change.kind, change.model_id) == (3, ChangeKind.SIMULATE, MISTRAL.id)
    spec = reg.get(MISTRAL.id)
    assert spec.simulation == SimBehaviour(reward_scale=0.5, error_rate=0.2)
    assert (spec.input_per_m, spec.output_per_m) == (0.50, 1.50)
    reg.reprice(MISTRAL.id, input_per_m=0.4)  # a re-price keeps the simulation
    assert reg.get(MISTRAL.id).simulation.reward_scale == 0.5
    reg.simulate(MISTRAL.id, None)
    assert reg.get(MISTRAL.id).simulation is None and reg.version == 5
    again = ModelRegistry.from_json(reg.to_json())
    assert again.changes[2].spec.simulation == SimBehaviour(reward_scale=0.5, error_rate=0.2)


@pytest.mark.parametrize(
    "bad",
    [
        {"reward_scale": 1.5},
        {"reward_scale": -0.1},
        {"quality": 2.0},
        {"error_rate": math.nan},
        {"error_rate": 0.5, "timeout_rate": 0.3, "rate_limit_rate": 0.3},  # sums to 1.1
        {"error_status": 429},
        {"retry_after_s": -1.0},
        {"latency_spike_rate": "0.5"},  # strict: no strings
        {"unknown": 1},
    ],
)
def test_bad_simulation_is_rejected_with_nothing_changed(bad: dict) -> None:
    reg = ModelRegistry([LLAMA, MISTRAL])
    before = reg.to_json()
    with pytest.raises(ValidationError):
        reg.simulate(MISTRAL.id, bad)
    assert reg.to_json() == before
    with pytest.raises(ValidationError):
        ModelSpec(id="m", input_per_m=1.0, output_per_m=1.0, simulation=bad)


def test_simulation_of_an_unknown_model_is_rejected() -> None:
    from core.method.registry import UnknownModelError

    reg = ModelRegistry([LLAMA])
    with pytest.raises(UnknownModelError):
        reg.simulate("nope", {"error_rate": 1.0})
    assert reg.version == 1
