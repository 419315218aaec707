"""The embedded default starts warm: the committed priors artifact, its staleness rules, and a
fresh service Router that routes as the replay's warm-started Router does (no Ray, no data).

The data-backed checks (the artifact equals a rebuild from ../shared/data; the same on the
recorded prompts) are in tests/test_default_priors.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from core.encoding.features import load_projection
from core.method.priors import (
    DEFAULT_PRIORS_COMMAND,
    DEFAULT_PRIORS_PATH,
    Priors,
    StalePriors,
    build_priors,
)
from core.method.registry import ModelSpec
from core.replay.protocol import ReplaySpec, Scenario, run_seed, stream_orders
from core.replay.stream import Outcomes, run_stream
from core.service.settings import DEFAULT_PRIORS, AppArgs, RouterSettings
from core.service.warm_start import fresh_router
from paretoserve_cli.priors_cmd import build_command

REPO = Path(__file__).resolve().parents[2]
MEAN_CONTEXT = np.append(np.zeros(25), 1.0)  # the projection's mean prompt (features centred)


def _app_args() -> AppArgs:
    raw = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    return AppArgs.model_validate(raw).resolved(REPO)


def _settings(**update) -> RouterSettings:
    return _app_args().router_settings().model_copy(update=update)


def _stream(priors: Priors, n: int = 400, seed: int = 7) -> Outcomes:
    """Synthetic prompts in the projection's space (whitened: unit-variance features plus the
    bias), rewards around the priors' own estimates, costs around their recorded means."""
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.standard_normal((n, 25)), np.ones((n, 1))])
    theta = np.stack([np.linalg.solve(np.array(a.A), np.array(a.b)) for a in priors.arms.values()])
    rewards = np.clip(X @ theta.T + rng.normal(scale=0.15, size=(n, len(theta))), 0.0, 1.0)
    means = np.array([a.mean_cost_usd for a in priors.arms.values()])
    costs = means * rng.lognormal(sigma=0.5, size=(n, len(means)))
    return Outcomes(X, rewards, costs, tuple(priors.arms))


# ---- the committed artifact ----------------------------------------------------------------


def test_committed_priors_fit_the_embedded_default() -> None:
    """core/artifacts/priors.json: the default's three models, the committed projection, and
    the record of how it was made (numbers only: no prompt text)."""
    priors = Priors.load(DEFAULT_PRIORS_PATH)  # checks the numbers' fingerprint
    cfg = _app_args()
    assert cfg.priors_path == DEFAULT_PRIORS
    assert priors.models == [m.id for m in cfg.models]
    assert priors.projection_fingerprint == load_projection().fingerprint
    assert priors.fingerprint == priors.numbers_fingerprint() and len(priors.fingerprint) == 16
    assert priors.command == DEFAULT_PRIORS_COMMAND
    assert (priors.source, priors.n_rows, priors.dim) == ("val.jsonl (1785 rows)", 1785, 26)
    assert priors.command == build_command(
        Path("../shared/data/val.jsonl"), Path("core/artifacts/priors.json")
    )
    text = DEFAULT_PRIORS_PATH.read_text()
    assert len(text) < 64_000  # 3 arms of a 26x26 A and a 26-vector b
    assert set(json.loads(text)) == set(Priors.model_fields)  # nothing but numbers and the record
    for arm in priors.arms.values():  # the bias entry counts the rows: p * (1 + n)
        assert arm.A[-1][-1] == pytest.approx(0.1 * (1 + 1785))
        assert arm.mean_cost_usd is not None and arm.mean_cost_usd > 0


def test_default_router_starts_knowing() -> None:
    """A fresh service Router (serve_config.yaml's settings): every estimated quality is the
    recorded mean reward (not 0.0), and the mean prompt is not sent to the dearest model."""
    start = fresh_router(_settings())
    assert not start.refused and start.loaded == [m.id for m in _app_args().models]
    explain = start.router.explain(MEAN_CONTEXT)
    quality = {m.split("/")[0]: round(e["quality"], 3) for m, e in explain.items()}
    # val.jsonl's per-arm means (../shared/data/README.md): 0.789, 0.925, 0.935.
    assert quality == {"meta-llama": 0.788, "mistralai": 0.924, "google": 0.934}
    assert start.router.route(MEAN_CONTEXT).model == "mistralai/mistral-large-2512"
    # A cold start: every quality 0.0. The paper's router sent the first prompt to gemini-pro
    # (7 budgets); the budget's running balance has nothing saved yet, so it goes to the
    # cheapest model (core/method/pacer.py).
    cold = fresh_router(_settings(priors_path=None))
    assert cold.loaded == [] and not cold.refused
    assert {e["quality"] for e in cold.router.explain(MEAN_CONTEXT).values()} == {0.0}
    assert cold.router.route(MEAN_CONTEXT).model == "meta-llama/llama-3.1-8b-instruct"


def test_fresh_service_router_routes_as_the_warm_replay() -> None:
    """The service's fresh Router (settings -> tuning, table, default priors) routes the first
    N prompts as the replay's warm-started Router (`paretoserve replay --priors
    core/artifacts/priors.json`, no warm-up stream) at the same budget and seed."""
    cfg, priors = _app_args(), Priors.load(DEFAULT_PRIORS_PATH)
    block = _stream(priors)
    spec = ReplaySpec(scenario=Scenario.STATIONARY, budget_usd=cfg.budget_usd_per_request)
    seed = cfg.router.seed
    replay = run_seed(spec, {m.id: m for m in cfg.models}, block, None, priors, seed)
    _, [(_, order)] = stream_orders(None, len(block.contexts), Scenario.STATIONARY, seed)
    service = run_stream(fresh_router(_settings()).router, block, order)
    assert service.models == replay.log.models
    assert service.duals == replay.log.duals
    assert len(set(service.models[:100])) >= 2  # the stream exercises the choice
    # and a cold start would not have routed them so
    cold = run_stream(fresh_router(_settings(priors_path=None)).router, block, order)
    assert cold.models[:50] != service.models[:50]


# ---- staleness -----------------------------------------------------------------------------


def test_default_priors_of_another_projection_are_refused_with_a_warning() -> None:
    """A re-fitted projection (another fingerprint): the default starts cold and says which
    command re-makes the priors; an explicit file is a start-up error."""
    start = fresh_router(_settings(), projection_fingerprint="0123456789abcdef")
    assert start.refused and start.loaded == []
    assert "0123456789abcdef" in start.note and DEFAULT_PRIORS_COMMAND in start.note
    assert {e["quality"] for e in start.router.explain(MEAN_CONTEXT).values()} == {0.0}
    explicit = _settings(priors_path=str(DEFAULT_PRIORS_PATH))
    with pytest.raises(StalePriors, match="feature projection") as err:
        fresh_router(explicit, projection_fingerprint="0123456789abcdef")
    assert DEFAULT_PRIORS_COMMAND in str(err.value)
    assert fresh_router(explicit).loaded == [m.id for m in _app_args().models]


def test_default_priors_for_other_models_are_refused_with_a_warning() -> None:
    cfg = _app_args()
    extra = ModelSpec(id="acme/new", provider="simulated", input_per_m=1.0, output_per_m=2.0)
    for table in (cfg.models[:2], [*cfg.models, extra]):
        start = fresh_router(_settings(), table)
        assert start.refused and start.loaded == []
        assert "are for the models" in start.note and "priors_path" in start.note
    # An operator's file is loaded for the models it has; the others start cold.
    start = fresh_router(_settings(priors_path=str(DEFAULT_PRIORS_PATH)), [*cfg.models, extra])
    assert start.loaded == [m.id for m in cfg.models] and "cold: ['acme/new']" in start.note
    with pytest.raises(StalePriors, match="none of the router's models"):
        fresh_router(_settings(priors_path=str(DEFAULT_PRIORS_PATH)), [extra])


def test_missing_or_edited_priors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.loads(DEFAULT_PRIORS_PATH.read_text())
    doc["arms"]["google/gemini-2.5-pro"]["b"][-1] += 1.0  # an edited number
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        Priors.load(edited)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        fresh_router(_settings(priors_path=str(edited)))
    with pytest.raises(FileNotFoundError):
        fresh_router(_settings(priors_path=str(tmp_path / "nope.json")))
    # The default, missing or edited: a cold start that names the command re-making it.
    import core.service.warm_start as warm_start

    for path in (tmp_path / "nope.json", edited):
        monkeypatch.setattr(warm_start, "DEFAULT_PRIORS_PATH", path)
        start = fresh_router(_settings())
        assert start.refused and start.loaded == [] and DEFAULT_PRIORS_COMMAND in start.note


def test_fits_checks_dimension_projection_and_models() -> None:
    rng = np.random.default_rng(0)
    X = np.hstack([rng.standard_normal((50, 3)), np.ones((50, 1))])
    priors = build_priors(
        X, rng.uniform(size=(50, 2)), ("a", "b"), projection_fingerprint="p1", command="make it"
    )
    priors.fits(4, "p1", ["b", "a"], same_models=True)
    priors.fits(4, None, ["a", "c"], same_models=False)  # no fingerprint to compare with
    for args, kw, match in [
        ((5, "p1", ["a", "b"]), {"same_models": True}, "dimension 4, the router 5"),
        ((4, "p2", ["a", "b"]), {"same_models": False}, "projection p1, the service uses p2"),
        ((4, "p1", ["a"]), {"same_models": True}, "are for the models"),
        ((4, "p1", ["c"]), {"same_models": False}, "none of the router's models"),
    ]:
        with pytest.raises(StalePriors, match=match) as err:
            priors.fits(*args, **kw)
        assert str(err.value).endswith("re-make them with: make it")


# ---- the settings ----------------------------------------------------------------------------


def test_priors_path_default_and_resolution(tmp_path: Path) -> None:
    """AppArgs starts warm by default; 'default' is a word, not a path; a relative file path
    resolves against the project home as state_path does; null starts cold."""
    raw = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    assert raw["priors_path"] == DEFAULT_PRIORS
    base = {k: raw[k] for k in ("budget_usd_per_request", "models")}
    assert AppArgs.model_validate(base).priors_path == DEFAULT_PRIORS
    assert AppArgs.model_validate(base).resolved(tmp_path).priors_path == DEFAULT_PRIORS
    mine = AppArgs.model_validate({**base, "priors_path": "var/p.json"}).resolved(tmp_path)
    assert mine.router_settings().priors_path == str(tmp_path / "var" / "p.json")
    cold = AppArgs.model_validate({**base, "priors_path": None}).resolved(tmp_path)
    assert cold.router_settings().priors_path is None
    # The Router checks priors against the Embedder's projection, resolved the same way.
    proj = AppArgs.model_validate({**base, "embedder": {"projection_path": "p/proj.json"}})
    assert proj.resolved(tmp_path).router_settings().projection_path == str(
        tmp_path / "p" / "proj.json"
    )
    with pytest.raises(ValidationError):
        RouterSettings.model_validate({**base, "state_path": "s.db", "priors": "x"})
