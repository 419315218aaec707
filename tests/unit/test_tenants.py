"""Tenants in the core Router: own pacing, period targets, hard caps with reservations,
degrade before deny, shared learning, and state that survives a snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from core.method.config import PacerConfig, RouterConfig
from core.method.registry import ModelSpec
from core.method.router import RouteLimits, Router
from core.method.tenants import (
    DecayedRate,
    Period,
    TenantBudgetExhaustedError,
    TenantSpec,
    UnknownTenantError,
    key_digest,
    period_bounds,
)
from core.state.snapshot import restore, snapshot

CHEAP = ModelSpec(id="cheap", input_per_m=0.1, output_per_m=0.4, max_output_tokens=1000)
MID = ModelSpec(id="mid", input_per_m=1.0, output_per_m=4.0, max_output_tokens=1000)
DEAR = ModelSpec(id="dear", input_per_m=5.0, output_per_m=20.0, max_output_tokens=1000)
NOON = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
LIMITS = RouteLimits(prompt_tokens=400, output_tokens=500)


def _router(budget: float = 1e-3, feedforward: bool = True) -> Router:
    pacer = PacerConfig(budget_usd=budget, feedforward=feedforward)
    return Router(RouterConfig(pacer=pacer, forced_exploration_pulls=0), [CHEAP, MID, DEAR])


def _x(rng: np.random.Generator) -> np.ndarray:
    return np.append(rng.normal(size=25), 1.0)


def _bound(spec: ModelSpec, prompt: float, out: int) -> float:
    return (prompt * 1.25 * spec.input_per_m + out * spec.output_per_m) / 1e6


def test_periods_are_utc_days_and_months() -> None:
    day = period_bounds(Period.DAY, NOON)
    assert day == (NOON - 12 * 3600, NOON + 12 * 3600)
    start, end = period_bounds(Period.MONTH, NOON)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(end, UTC) == datetime(2027, 1, 1, tzinfo=UTC)


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="hard_cap"):
        TenantSpec(id="a", hard_cap=True)
    with pytest.raises(ValidationError, match="id"):
        TenantSpec(id="bad id!")
    with pytest.raises(ValidationError, match="budget_usd"):
        TenantSpec(id="a", budget_usd=1e308)
    with pytest.raises(ValidationError, match="usd_per_request"):
        TenantSpec(id="a", usd_per_request=-1)


def test_decayed_rate_tracks_a_rate_change() -> None:
    r, w = DecayedRate(), 600.0
    t = 0.0
    for _ in range(3000):  # 1 request/s for 50 minutes
        t += 1.0
        r.observe(t, w)
    assert r.per_s(t, w) == pytest.approx(1.0, rel=0.02)
    for _ in range(3000):  # then 5/s for 10 minutes
        t += 0.2
        r.observe(t, w)
    assert r.per_s(t, w) == pytest.approx(5.0 * (1 - np.exp(-1)) + np.exp(-1), rel=0.05)


def test_period_target_is_what_is_left_over_the_requests_expected() -> None:
    router = _router()
    router.add_tenant(TenantSpec(id="a", budget_usd=10.0), NOON)
    rng = np.random.default_rng(0)
    t = NOON
    for _ in range(200):  # one request every 10 s
        t += 10.0
        d = router.route(_x(rng), LIMITS, tenant="a", now=t)
        router.charge(d.request_id, 1e-4, now=t)
    spent = 200 * 1e-4
    expected_left = (NOON + 12 * 3600 - t) / 10.0
    report = router.tenant_report("a", t)
    assert report["spend_usd"] == pytest.approx(spent)
    # the metrics' figures are the report's
    assert router.tenant_gauges("a", t) == (
        report["spend_usd"],
        report["remaining_usd"],
        report["dual"],
    )
    assert report["target_usd_per_request"] == pytest.approx(
        (10.0 - spent) / expected_left, rel=0.02
    )
    # a fixed per-request target below that wins
    router.update_tenant(TenantSpec(id="a", budget_usd=10.0, usd_per_request=1e-5), t)
    assert router.tenant_report("a", t)["target_usd_per_request"] == pytest.approx(1e-5)


def test_a_tenant_has_its_own_dual_and_the_bandit_is_shared() -> None:
    router = _router(budget=2e-3)
    router.add_tenant(TenantSpec(id="thrifty", usd_per_request=2e-5), NOON)
    rng = np.random.default_rng(1)
    for i in range(300):
        d = router.route(_x(rng), LIMITS, tenant="thrifty", now=NOON + i)
        router.charge(d.request_id, {"cheap": 2e-4, "mid": 2e-3, "dear": 1e-2}[d.model])
        router.feedback(d.request_id, 0.5)
    assert router.tenant_report("thrifty", NOON + 300)["dual"] > 0.0
    assert router.pacer.state.charges == 0  # the service pacer saw none of it
    state = router.state()
    assert state["charges"] == 300
    # the tenant's feedback taught the one bandit every request uses
    assert sum(m["updates"] for m in state["models"].values()) == 300


def test_unknown_tenant_is_refused() -> None:
    with pytest.raises(UnknownTenantError):
        _router().route(_x(np.random.default_rng(0)), tenant="nobody", now=NOON)


def test_cap_degrades_to_cheaper_models_then_refuses_and_never_overspends() -> None:
    """64 requests in flight at a time, each charged its full bound: spend never passes the
    cap, the dear models drop out first, output limits shrink, then a 429-style refusal."""
    router = _router(budget=1.0)  # a generous service budget: only the cap restrains
    cap = 0.05
    router.add_tenant(TenantSpec(id="a", budget_usd=cap, hard_cap=True), NOON)
    rng = np.random.default_rng(2)
    chosen, lowered, refused = [], 0, 0
    in_flight: list = []
    for i in range(5000):
        try:
            d = router.route(_x(rng), LIMITS, tenant="a", now=NOON + i)
        except TenantBudgetExhaustedError as exc:
            refused += 1
            assert exc.tenant == "a" and exc.remaining_usd < exc.needed_usd
            assert exc.reset_at == NOON + 12 * 3600
            assert "resets at 2026-12-07T00:00:00+00:00" in str(exc)
        else:
            chosen.append(d.model)
            lowered += d.max_tokens < 500
            in_flight.append(d)
        if len(in_flight) == 64 or refused:
            for d in in_flight:  # the worst case: each answer costs its whole bound
                spec = {"cheap": CHEAP, "mid": MID, "dear": DEAR}[d.model]
                router.charge(d.request_id, _bound(spec, 400, d.max_tokens), now=NOON + i)
            in_flight = []
            report = router.tenant_report("a", NOON + i)
            assert report["spend_usd"] <= cap + 1e-12
        if refused >= 5:
            break
    report = router.tenant_report("a", NOON + 5000)
    assert refused == report["refused"] == 5
    assert cap - report["spend_usd"] < _bound(CHEAP, 400, 16)  # spent nearly all of it
    assert lowered > 0
    n = len(chosen)
    late = chosen[n // 2 :]
    assert "dear" not in late[-10:] and "mid" not in late[-10:]
    assert late.count("cheap") / len(late) >= chosen[: n // 2].count("cheap") / (n // 2)


def test_cap_reservations_released_on_failure_and_restored_from_a_snapshot() -> None:
    router = _router(budget=1.0)
    router.add_tenant(TenantSpec(id="a", budget_usd=1.0, hard_cap=True), NOON)
    rng = np.random.default_rng(3)
    d1 = router.route(_x(rng), LIMITS, tenant="a", now=NOON)
    d2 = router.route(_x(rng), LIMITS, tenant="a", now=NOON)
    held = router.tenant_report("a", NOON)["reserved_usd"]
    assert held > 0 and router.tenant_report("a", NOON)["in_flight"] == 2
    router.fail(d1.request_id, d1.model, NOON)
    assert router.tenant_report("a", NOON)["in_flight"] == 1
    router.add_tenant_key("a", key_digest("secret"), "k1", NOON)
    back = restore(snapshot(router))
    report = back.tenant_report("a", NOON)
    assert report["in_flight"] == 1 and report["reserved_usd"] > 0
    assert back.tenant_of_key(key_digest("secret")) == "a"
    back.charge(d2.request_id, 1e-4, now=NOON)
    report = back.tenant_report("a", NOON)
    assert report["in_flight"] == 0 and report["spend_usd"] == pytest.approx(1e-4)
    assert back.revoke_tenant_key("a", "k1") and back.tenant_of_key(key_digest("secret")) is None


def test_a_new_period_starts_from_nothing() -> None:
    router = _router(budget=1.0)
    router.add_tenant(TenantSpec(id="a", budget_usd=0.01, hard_cap=True), NOON)
    d = router.route(_x(np.random.default_rng(4)), LIMITS, tenant="a", now=NOON)
    router.charge(d.request_id, 0.009, now=NOON)
    tomorrow = NOON + 86_400
    assert router.tenant_report("a", tomorrow)["spend_usd"] == 0.0
    assert router.tenant_report("a", tomorrow)["total_spend_usd"] == pytest.approx(0.009)


def test_errors_cross_process_boundaries_intact() -> None:
    """Ray pickles an exception a deployment raises: it must come back whole."""
    import pickle

    exc = TenantBudgetExhaustedError("a", 0.001, 0.002, NOON)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.tenant, back.remaining_usd, back.needed_usd, back.reset_at) == (
        "a",
        0.001,
        0.002,
        NOON,
    )
    assert str(back) == str(exc)
    assert str(pickle.loads(pickle.dumps(UnknownTenantError("z")))) == "unknown tenant 'z'"


def test_without_period_pacing_the_budget_is_only_a_cap() -> None:
    router = _router(budget=5e-3)
    router.add_tenant(TenantSpec(id="a", budget_usd=0.05, hard_cap=True, pace_period=False), NOON)
    rng = np.random.default_rng(5)
    d = router.route(_x(rng), LIMITS, tenant="a", now=NOON)
    assert d.dual == router.pacer.dual  # the service's pacer paces it
    assert router.tenant_report("a", NOON)["target_usd_per_request"] is None
    assert d.reserved_usd > 0


def test_a_refusal_says_retry_soon_while_requests_in_flight_hold_the_money() -> None:
    router = _router(budget=1.0)
    router.add_tenant(TenantSpec(id="a", budget_usd=2e-3, hard_cap=True), NOON)
    rng = np.random.default_rng(6)
    held = []
    with pytest.raises(TenantBudgetExhaustedError) as refused:
        for _ in range(100):
            held.append(router.route(_x(rng), LIMITS, tenant="a", now=NOON))
    assert refused.value.may_fit_soon and refused.value.retry_after_s(NOON) == 1.0
    for d in held:  # each answer costs a tenth of its bound: money frees up
        router.charge(d.request_id, d.reserved_usd / 10, now=NOON)
    d = router.route(_x(rng), LIMITS, tenant="a", now=NOON)  # fits again
    router.charge(d.request_id, d.reserved_usd, now=NOON)
    for _ in range(1000):
        try:
            d = router.route(_x(rng), LIMITS, tenant="a", now=NOON)
        except TenantBudgetExhaustedError as exc:
            if not exc.may_fit_soon:
                assert exc.retry_after_s(NOON) == 12 * 3600
                return
            continue
        router.charge(d.request_id, d.reserved_usd, now=NOON)
    raise AssertionError("the budget never ran out")


def test_a_crashed_router_restores_tenant_spend_and_reservations(tmp_path) -> None:
    """A tenant added and snapshotted; then decisions recorded and one charge journalled, no
    snapshot after them; the process dies. The reopened Router has the tenant's spend (from
    the journal) and the reservations of the requests still in flight (from their records)."""
    import asyncio

    from core.state.durable import DurabilityConfig, DurableRouter
    from core.state.store import StateStore

    config = DurabilityConfig(snapshot_every_events=10_000, snapshot_every_s=1e9)

    def reopen() -> DurableRouter:
        store = StateStore(tmp_path / "state.db")
        durable, _ = DurableRouter.open(store, lambda: _router(1.0), config, NOON, lambda: NOON)
        return durable

    durable = reopen()
    rng = np.random.default_rng(7)

    async def before_crash() -> tuple[list, float]:
        durable.router.add_tenant(TenantSpec(id="a", budget_usd=0.01, hard_cap=True), NOON)
        await durable.snapshot_now()
        ds = [durable.route(_x(rng), LIMITS, None, NOON, None, "a") for _ in range(3)]
        await durable.recorded()
        await durable.charge(ds[0].request_id, 2e-4, NOON)
        return ds, sum(d.reserved_usd for d in ds[1:])

    ds, held = asyncio.run(before_crash())
    assert durable.router.tenant_report("a", NOON)["spend_usd"] == pytest.approx(2e-4)
    durable.store.close()

    back = reopen().router
    report = back.tenant_report("a", NOON)
    assert report["spend_usd"] == pytest.approx(2e-4)
    assert report["in_flight"] == 2 and report["reserved_usd"] == pytest.approx(held)
    back.charge(ds[1].request_id, 1e-4, now=NOON)  # the answer still lands on the tenant
    assert back.tenant_report("a", NOON)["spend_usd"] == pytest.approx(3e-4)


def test_a_capped_decision_is_decided_again_rather_than_resumed() -> None:
    """Resuming a decision (a route call lost to a Router crash) cannot give back the output
    limit its reservation covers: the decision is dropped, its reservation released."""
    router = _router(budget=1.0)
    router.add_tenant(TenantSpec(id="a", budget_usd=1.0, hard_cap=True), NOON)
    router.add_tenant(TenantSpec(id="b", usd_per_request=1e-3), NOON)
    rng = np.random.default_rng(8)
    capped = router.route(_x(rng), LIMITS, request_id="r1", tenant="a", now=NOON)
    assert capped.max_tokens is not None
    assert router.resume("r1", direct=False) is None
    assert router.tenant_report("a", NOON)["in_flight"] == 0 and not router.is_pending("r1")
    again = router.route(_x(rng), LIMITS, request_id="r1", tenant="a", now=NOON)
    assert again.max_tokens is not None
    router.route(_x(rng), LIMITS, request_id="r2", tenant="b", now=NOON)
    assert router.resume("r2", direct=False).request_id == "r2"  # uncapped: resumed


def test_a_fallback_records_the_new_models_reservation(tmp_path) -> None:
    """After a capped request falls back, a restart restores the bound of the model it now
    waits on, not the failed one's (which may be smaller)."""
    import asyncio

    from core.state.durable import DurabilityConfig, DurableRouter
    from core.state.store import StateStore

    config = DurabilityConfig(snapshot_every_events=10_000, snapshot_every_s=1e9)

    def reopen() -> DurableRouter:
        store = StateStore(tmp_path / "state.db")
        durable, _ = DurableRouter.open(store, lambda: _router(1.0), config, NOON, lambda: NOON)
        return durable

    durable = reopen()
    rng = np.random.default_rng(9)

    async def route_then_fall_back():
        durable.router.add_tenant(TenantSpec(id="a", budget_usd=1.0, hard_cap=True), NOON)
        await durable.snapshot_now()
        d = durable.route(_x(rng), LIMITS, None, NOON, "r", "a")
        await durable.recorded()
        nxt = durable.fallback("r", d.model, NOON, 503)
        await durable.recorded()
        return d, nxt

    first, nxt = asyncio.run(route_then_fall_back())
    assert nxt is not None and nxt.model != first.model
    assert nxt.reserved_usd != first.reserved_usd
    durable.store.close()
    back = reopen().router
    assert back.reserved_for("r") == pytest.approx(nxt.reserved_usd)
    assert back.tenant_report("a", NOON)["reserved_usd"] == pytest.approx(nxt.reserved_usd)
