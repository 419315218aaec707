"""Warm-start priors: build, mean-preserving load, save / load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.method.config import PacerConfig, RouterConfig
from core.method.priors import PRIORS_FORMAT, ArmPrior, Priors, build_priors, mean_preserving_load
from core.method.registry import ModelSpec
from core.method.router import Router

MODELS = ("llama", "mistral", "flash", "pro")
N_EFF = 1163.9


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.normal(size=(n, 25)), np.ones((n, 1))])
    w = rng.normal(scale=0.1, size=(26, len(MODELS)))
    w[-1] = [0.3, 0.5, 0.6, 0.8]
    R = np.clip(X @ w + rng.normal(scale=0.05, size=(n, len(MODELS))), 0.0, 1.0)
    return X, R


def _router(models=MODELS) -> Router:
    specs = [
        ModelSpec(id=m, input_per_m=0.1 * (i + 1), output_per_m=0.2 * (i + 1))
        for i, m in enumerate(models)
    ]
    return Router(RouterConfig(pacer=PacerConfig(budget_usd=1e-3)), models=specs)


def test_build_priors_is_scaled_full_information_statistics() -> None:
    X, R = _data()
    priors = build_priors(X, R, MODELS, plasticity=0.1, source="test")
    assert (priors.dim, priors.n_rows, priors.plasticity) == (26, 400, 0.1)
    assert priors.format == PRIORS_FORMAT
    A_off = 0.1 * (np.eye(26) + sum(np.outer(x, x) for x in X))
    for k, m in enumerate(MODELS):
        np.testing.assert_allclose(priors.arms[m].A, A_off, rtol=1e-12)
        np.testing.assert_allclose(priors.arms[m].b, 0.1 * (R[:, k] @ X), rtol=1e-12, atol=1e-12)
    # The bias entry counts the rows: p * (1 + n).
    assert priors.arms["pro"].A[-1][-1] == pytest.approx(0.1 * 401, rel=1e-12)
    with pytest.raises(ValueError, match="rewards shape"):
        build_priors(X, R[:, :3], MODELS)


def test_mean_preserving_load_keeps_theta_off() -> None:
    X, R = _data()
    priors = build_priors(X, R, MODELS)
    for m in MODELS:
        A_off, b_off = np.array(priors.arms[m].A), np.array(priors.arms[m].b)
        theta_off = np.linalg.solve(A_off, b_off)
        A, b = mean_preserving_load(priors.arms[m], ridge=1.0)
        s = N_EFF / A_off[-1, -1]
        np.testing.assert_allclose(A, s * A_off + np.eye(26), rtol=1e-14)
        np.testing.assert_allclose(b, s * b_off + theta_off, rtol=1e-12, atol=1e-14)
        assert A[-1, -1] == pytest.approx(N_EFF + 1.0, rel=1e-14)  # weight of n_eff rows
        assert np.abs(np.linalg.solve(A, b) - theta_off).max() < 1e-9
    # A naive load (A_off, b_off as they are, plus the ridge) would not keep the mean.
    A_off, b_off = np.array(priors.arms["pro"].A), np.array(priors.arms["pro"].b)
    naive = np.linalg.solve(A_off + np.eye(26), b_off)
    assert np.abs(naive - np.linalg.solve(A_off, b_off)).max() > 1e-4


def test_router_load_priors_sets_theta_to_theta_off() -> None:
    X, R = _data()
    priors = build_priors(X, np.hstack([R, R[:, :1]]), (*MODELS, "not-in-router"))
    router = _router()
    router.route(X[0], model="llama")  # t = 1 at load time
    loaded = router.load_priors(priors)
    assert loaded == list(MODELS)
    for m in MODELS:
        i = router.arms.slots[m]
        theta_off = np.linalg.solve(np.array(priors.arms[m].A), np.array(priors.arms[m].b))
        assert np.abs(router.bandit.theta[i] - theta_off).max() < 1e-9
        assert np.abs(router.bandit.A_inv[i] - np.linalg.inv(router.bandit.A[i])).max() < 1e-12
        assert router.bandit.ridge_floor[i] == 1.0
        assert router.bandit.last_update[i] == 1
    # The priors rank the arms as the data did (bias weights 0.3 < 0.5 < 0.6 < 0.8).
    q = router.explain(np.append(np.zeros(25), 1.0))
    assert [q[m]["quality"] for m in MODELS] == sorted(q[m]["quality"] for m in MODELS)
    assert router.route(np.append(np.zeros(25), 1.0)).model == "pro"


def test_load_priors_checks_dimension_and_projection() -> None:
    X, R = _data(n=50)
    router = _router()
    before = router.bandit.A.copy()
    with pytest.raises(ValueError, match="dim"):
        router.load_priors(build_priors(X[:, :10], R, MODELS))
    tagged = build_priors(X, R, MODELS, projection_fingerprint="pca-a")
    with pytest.raises(ValueError, match="projection"):
        router.load_priors(tagged, projection_fingerprint="pca-b")
    np.testing.assert_array_equal(router.bandit.A, before)  # nothing loaded on refusal
    assert router.load_priors(tagged, projection_fingerprint="pca-a") == list(MODELS)


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    X, R = _data()
    priors = build_priors(X, R, MODELS, projection_fingerprint="fp", source="unit")
    path = tmp_path / "sub" / "priors.json"
    priors.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["priors.json"]  # no temp files
    back = Priors.load(path)
    assert back == priors
    for m in MODELS:
        np.testing.assert_array_equal(np.array(back.arms[m].A), np.array(priors.arms[m].A))
        np.testing.assert_array_equal(np.array(back.arms[m].b), np.array(priors.arms[m].b))
    # A router warm-started from the file matches one warm-started in memory, bit for bit.
    r1, r2 = _router(), _router()
    r1.load_priors(priors)
    r2.load_priors(back)
    np.testing.assert_array_equal(r1.bandit.theta, r2.bandit.theta)
    np.testing.assert_array_equal(r1.bandit.A_inv, r2.bandit.A_inv)


def test_load_rejects_other_formats(tmp_path) -> None:
    path = tmp_path / "p.json"
    data = Priors(dim=2, n_rows=1, arms={"m": ArmPrior(A=[[1, 0], [0, 1]], b=[0, 0])})
    doc = json.loads(data.model_dump_json())
    doc["format"] = "something-else/9"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="format"):
        Priors.load(path)


def test_recorded_costs_seed_each_arms_expected_cost() -> None:
    """Before any charge, an arm's expected cost is its mean recorded cost, not the others'
    usage borrowed at its list price (which makes a dear reasoning model look cheap)."""
    X, R = _data()
    rng = np.random.default_rng(3)
    means = np.array([2e-5, 3e-4, 6e-4, 2e-2])  # pro answers with many more tokens
    costs = means * rng.uniform(0.5, 1.5, size=(len(X), len(MODELS)))
    priors = build_priors(X, R, MODELS, costs=costs)
    np.testing.assert_allclose([priors.arms[m].mean_cost_usd for m in MODELS], costs.mean(0))
    seeded, plain = _router(), _router()
    seeded.load_priors(priors)
    plain.load_priors(build_priors(X, R, MODELS))  # no costs: nothing learned yet
    np.testing.assert_allclose(seeded.expected_costs(), costs.mean(0))
    assert plain.expected_costs()[3] < 0.1 * costs[:, 3].mean()
    with pytest.raises(ValueError, match="costs shape"):
        build_priors(X, R, MODELS, costs=costs[:, :2])
    old = json.loads(priors.model_dump_json())  # a file written before costs were recorded
    del old["fingerprint"], old["command"]  # (nor were these)
    for arm in old["arms"].values():
        del arm["mean_cost_usd"]
    assert Priors.model_validate(old).arms["pro"].mean_cost_usd is None


def test_numbers_fingerprint_guards_the_file(tmp_path) -> None:
    """build_priors signs its numbers; a changed number, model id or mean cost is refused at
    load; a file of an older build (no fingerprint) still loads."""
    X, R = _data(n=60)
    priors = build_priors(X, R, MODELS, costs=np.full(R.shape, 1e-4), command="cmd")
    assert priors.fingerprint == priors.numbers_fingerprint() and priors.command == "cmd"
    again = build_priors(X, R, MODELS, costs=np.full(R.shape, 1e-4))
    assert again.fingerprint == priors.fingerprint  # the numbers', not the record's
    path = tmp_path / "p.json"
    priors.save(path)
    assert Priors.load(path).fingerprint == priors.fingerprint
    doc = json.loads(path.read_text())
    edits = [
        lambda d: d["arms"]["pro"]["A"][3].__setitem__(4, d["arms"]["pro"]["A"][3][4] + 1e-9),
        lambda d: d["arms"]["llama"].__setitem__("mean_cost_usd", 2e-4),
        lambda d: d["arms"].__setitem__("llama-2", d["arms"].pop("llama")),
    ]
    for edit in edits:
        changed = json.loads(json.dumps(doc))
        edit(changed)
        path.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match="fingerprint mismatch"):
            Priors.load(path)
    del doc["fingerprint"]
    path.write_text(json.dumps(doc))
    assert Priors.load(path).fingerprint is None
    path.write_text("{")
    with pytest.raises(ValueError, match="invalid priors file"):
        Priors.load(path)
