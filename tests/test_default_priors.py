"""The committed warm-start priors against ../shared/data (skipped, saying why, without it).

The artifact must be what its command builds now (`paretoserve priors build --data
../shared/data/val.jsonl --out core/artifacts/priors.json`), and a fresh service Router must
route the recorded prompts as `paretoserve replay --data ../shared/data/val.jsonl --priors
core/artifacts/priors.json --seeds 1` does. Contexts come through the MiniLM encoder (torch, the
reference) and the disk cache of embeddings, shared with tests/test_minilm.py: a cold cache
encodes the 1,785 prompts once (minutes on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from core.encoding.features import load_projection
from core.method.priors import DEFAULT_PRIORS_COMMAND, DEFAULT_PRIORS_PATH, Priors
from core.replay.data import load_reward_file
from core.replay.protocol import ReplaySpec, Scenario, run_seed, stream_orders
from core.replay.stream import run_stream
from core.service.settings import AppArgs
from core.service.warm_start import fresh_router
from paretoserve_cli.priors_cmd import priors_from
from paretoserve_cli.replay_inputs import resolve_inputs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.data


def _app_args() -> AppArgs:
    raw = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    return AppArgs.model_validate(raw).resolved(REPO)


def test_committed_priors_are_what_the_command_builds(shared_data: Path) -> None:
    committed = Priors.load(DEFAULT_PRIORS_PATH)
    rebuilt = priors_from(
        load_reward_file(shared_data / "val.jsonl"),
        load_projection(),
        command=DEFAULT_PRIORS_COMMAND,
    )
    same = ("dim", "plasticity", "n_rows", "projection_fingerprint", "source", "command")
    assert {k: getattr(rebuilt, k) for k in same} == {k: getattr(committed, k) for k in same}
    assert rebuilt.models == committed.models
    for m in committed.models:
        got, want = rebuilt.arms[m], committed.arms[m]
        # Embeddings may differ in their last bits across machines and library builds.
        np.testing.assert_allclose(got.A, want.A, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.b, want.b, rtol=1e-6, atol=1e-6)
        assert got.mean_cost_usd == pytest.approx(want.mean_cost_usd, rel=1e-12)


def test_fresh_service_routes_the_recorded_prompts_as_the_warm_replay(shared_data: Path) -> None:
    """The same decisions, prompt for prompt, as the offline replay warm-started from the
    committed priors at the service's budget and seed (prices from prices.json there,
    serve_config.yaml's here: they agree)."""
    cfg = _app_args()
    inputs = resolve_inputs(shared_data / "val.jsonl", None, None, None)
    for m in cfg.models:  # the replay's specs price the models as the service does
        assert (inputs.specs[m.id].input_per_m, inputs.specs[m.id].output_per_m) == (
            m.input_per_m,
            m.output_per_m,
        )
    block = inputs.data_outcomes(load_projection())
    spec = ReplaySpec(scenario=Scenario.STATIONARY, budget_usd=cfg.budget_usd_per_request)
    seed = cfg.router.seed
    replay = run_seed(spec, inputs.specs, block, None, Priors.load(DEFAULT_PRIORS_PATH), seed)
    _, [(_, order)] = stream_orders(None, len(block.contexts), Scenario.STATIONARY, seed)
    start = fresh_router(cfg.router_settings())
    assert not start.refused
    service = run_stream(start.router, block, order)
    assert service.models == replay.log.models
    # not a trivial stream: every model is picked (the dearest only once the balance has saved
    # about three times its excess over the budget: core/method/pacer.py, bank_pick_share)
    assert len(set(service.models)) == 3
