"""Provider faults without Ray: retry delays, fallback eligibility, cool-downs, the router's
fallback re-decision and its durable record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from core.method.config import PacerConfig, RouterConfig
from core.method.errors import UnknownRequestError
from core.method.faults import CooldownConfig, Cooldowns, RetryPolicy, can_fall_back
from core.method.registry import ModelSpec
from core.method.router import FeedbackStatus, RouteLimits, Router
from core.state.durable import DurabilityConfig, DurableRouter
from core.state.store import StateStore

A = ModelSpec(id="a", input_per_m=0.1, output_per_m=0.1)
B = ModelSpec(id="b", input_per_m=0.5, output_per_m=1.5)
C = ModelSpec(id="c", input_per_m=1.25, output_per_m=10.0)
NOW = 1_000.0


# ---------------------------------------------------------------- retry policy


def test_retry_delays_back_off_exponentially_up_to_the_cap() -> None:
    p = RetryPolicy(max_attempts=5, backoff_s=0.1, backoff_factor=2.0, max_backoff_s=0.5)
    assert [p.delay(a, 503, True, None) for a in range(5)] == [0.1, 0.2, 0.4, 0.5, None]


def test_retry_honours_a_short_retry_after_and_gives_up_on_a_long_one() -> None:
    p = RetryPolicy(max_attempts=3, max_retry_after_s=2.0)
    assert p.delay(0, 429, True, 1.5) == 1.5
    assert p.delay(0, 429, True, 2.0) == 2.0
    assert p.delay(0, 429, True, 2.5) is None  # fall back instead; the model cools down
    assert p.delay(2, 429, True, 0.5) is None  # tries used up


def test_no_retry_for_what_retrying_cannot_fix() -> None:
    p = RetryPolicy(max_attempts=3)
    assert p.delay(0, 400, False, None) is None
    assert RetryPolicy(max_attempts=1).delay(0, 503, True, None) is None


@pytest.mark.parametrize(
    ("status", "retryable", "expected"),
    [
        (None, True, True),  # timeout, connection error
        (None, False, True),  # a missing API key: another provider may have one
        (500, True, True),
        (503, True, True),
        (429, True, True),
        (401, False, True),
        (403, False, True),
        (404, False, True),
        (400, False, False),  # the caller's own bad input: every model refuses it
        (413, False, False),
        (422, False, False),
    ],
)
def test_can_fall_back(status: int | None, retryable: bool, expected: bool) -> None:
    assert can_fall_back(status, retryable) is expected


# ---------------------------------------------------------------- cool-downs


def test_cooldown_doubles_per_failure_in_a_row_up_to_the_cap() -> None:
    cds = Cooldowns(CooldownConfig(cooldown_s=10.0, factor=2.0, max_cooldown_s=35.0))
    assert [cds.fail("a", NOW).until - NOW for _ in range(4)] == [10.0, 20.0, 40.0 - 5.0, 35.0]
    assert cds.get("a").failures == 4


def test_cooldown_honours_retry_after_capped_and_never_shortens() -> None:
    cds = Cooldowns(CooldownConfig(cooldown_s=10.0, max_cooldown_s=60.0))
    assert cds.fail("a", NOW, 429, retry_after_s=30.0).until == NOW + 30.0
    assert cds.fail("b", NOW, 429, retry_after_s=600.0).until == NOW + 60.0
    assert cds.fail("c", NOW, 429, retry_after_s=1.0).until == NOW + 10.0
    # a later failure with a shorter wait keeps the longer cool-down
    assert cds.fail("a", NOW + 1.0, 503).until == NOW + 30.0
    assert cds.get("a").failures == 2 and cds.get("a").status == 503


def test_cooling_ends_and_success_resets_the_streak_but_not_a_running_cooldown() -> None:
    cds = Cooldowns(CooldownConfig(cooldown_s=10.0))
    assert not cds and cds.cooling(NOW) == frozenset()
    cds.fail("a", NOW)
    cds.fail("b", NOW)
    assert cds.cooling(NOW + 9.9) == {"a", "b"}
    cds.succeed("a")  # a request routed before the cool-down answered
    assert cds.cooling(NOW + 9.9) == {"a", "b"}
    assert cds.get("a").failures == 0
    assert cds.cooling(NOW + 10.0) == frozenset()
    assert cds.get("a") is None  # ended with no streak: forgotten
    assert cds.get("b").failures == 1  # ended, but its streak stands: the next failure doubles
    assert cds.fail("b", NOW + 11.0).until == NOW + 11.0 + 20.0
    assert cds.to_json(NOW + 21.0) == {
        "b": {"until_unix": NOW + 31.0, "remaining_s": 10.0, "failures": 2, "status": None}
    }


# ---------------------------------------------------------------- the router


QUALITY = {"a": 0.2, "b": 0.5, "c": 0.9}  # so the scores rank c > b > a, with no ties


def _x(seed: int = 0) -> np.ndarray:
    return np.append(np.random.default_rng(seed).normal(size=25), 1.0)


def _router(models=(A, B, C), **cooldown) -> Router:
    cfg = RouterConfig(pacer=PacerConfig(budget_usd=1.0), seed=0)
    r = Router(cfg, list(models), cooldowns=CooldownConfig(**cooldown))
    for i in range(30):  # learn each model's quality by direct routes
        for m in r.arms.slot_models:
            rid = f"train-{i}-{m}"
            r.route(_x(100 + i), model=m, request_id=rid)
            r.charge(rid, 0.0)
            r.feedback(rid, QUALITY[m])
    return r


def _scores(router: Router, x: np.ndarray) -> dict[str, float]:
    return {m: v["score"] for m, v in router.explain(x).items()}


def test_route_skips_cooling_models_unless_none_is_left() -> None:
    r = _router(cooldown_s=10.0)
    x = _x()
    first = r.route(x, request_id="r0", now=NOW).model
    assert first == "c"
    r.cooldowns.fail(first, NOW)
    d = r.route(x, request_id="r1", now=NOW + 1)
    assert d.model != first
    assert "cooling down" in d.reasons[first]
    # without `now` (the offline replay) cool-downs are not consulted
    assert r.route(x, request_id="r2").model == first
    # every eligible model cooling: route anyway rather than refuse
    only = RouteLimits(allowed_models=(first,))
    assert r.route(x, only, request_id="r3", now=NOW + 1).model == first
    # after the cool-down it is routed to again
    assert r.route(x, request_id="r4", now=NOW + 10).model == first


def test_fallback_takes_the_next_best_score_and_rekeys_the_decision() -> None:
    r = _router(cooldown_s=10.0)
    x = _x(1)
    ranked = sorted(_scores(r, x).items(), key=lambda kv: -kv[1])
    assert [m for m, _ in ranked] == ["c", "b", "a"]
    d = r.route(x, request_id="q", now=NOW)
    assert d.model == "c"
    fb = r.fallback("q", d.model, NOW, status=503)
    assert fb is not None and fb.model == "b" and fb.request_id == "q"
    assert (fb.t, fb.direct, fb.forced) == (d.t, False, False)
    assert r.cooldowns.cooling(NOW) == {d.model}
    # the charge and the feedback go to the model that answered
    updates = dict(zip(r.arms.slot_models, r.bandit.updates.tolist(), strict=True))
    assert r.charge("q", 0.001) == FeedbackStatus.APPLIED
    assert r.feedback("q", 0.9) == FeedbackStatus.APPLIED
    after = dict(zip(r.arms.slot_models, r.bandit.updates.tolist(), strict=True))
    assert after[fb.model] == updates[fb.model] + 1 and after[d.model] == updates[d.model]
    assert r.cooldowns.get(fb.model) is None


def test_fallback_never_retries_a_failed_model_and_stops_at_max_fallbacks() -> None:
    r = _router(cooldown_s=0.0, max_fallbacks=2)  # cool-downs end at once: only `failed` counts
    d = r.route(_x(2), request_id="q", now=NOW)
    second = r.fallback("q", d.model, NOW)
    third = r.fallback("q", second.model, NOW)
    assert [d.model, second.model, third.model] == ["c", "b", "a"]
    assert r.fallback("q", third.model, NOW) is None  # a third fallback: over max_fallbacks
    assert "q" not in r.ledger
    with pytest.raises(UnknownRequestError):
        r.feedback("q", 1.0)


def test_fallback_honours_the_callers_limits_and_ends_when_none_is_left() -> None:
    r = _router()
    only_ab = RouteLimits(allowed_models=("a", "b"))
    d = r.route(_x(3), only_ab, request_id="q", now=NOW)
    fb = r.fallback("q", d.model, NOW, limits=only_ab)
    assert fb.model == ({"a", "b"} - {d.model}).pop()
    assert r.fallback("q", fb.model, NOW, limits=only_ab) is None
    assert "q" not in r.ledger


def test_fallback_for_another_model_or_an_answered_request_is_refused() -> None:
    r = _router()
    d = r.route(_x(4), request_id="q", now=NOW)
    other = ({"a", "b", "c"} - {d.model}).pop()
    with pytest.raises(ValueError, match="not awaiting"):
        r.fallback("q", other, NOW)
    r.charge("q", 0.0)
    with pytest.raises(ValueError, match="answered"):
        r.fallback("q", d.model, NOW)
    with pytest.raises(UnknownRequestError):
        r.fallback("nope", d.model, NOW)


def test_fallback_gives_a_forced_pull_back_to_the_failed_newcomer() -> None:
    r = _router(models=(A, B))
    r.add_model(C)  # 20 forced exploration pulls by default
    left = int(r.arms.forced_left[r.arms.slots["c"]])
    d = r.route(_x(5), request_id="q", now=NOW)
    assert d.model == "c" and d.forced and r.arms.forced_left[r.arms.slots["c"]] == left - 1
    fb = r.fallback("q", "c", NOW)
    assert fb.model in {"a", "b"} and not fb.forced
    assert r.arms.forced_left[r.arms.slots["c"]] == left


def test_fail_cools_down_and_drops_the_decision_unless_charged() -> None:
    r = _router(cooldown_s=5.0)
    d = r.route(_x(6), model="b", request_id="explicit", now=NOW)
    assert d.direct
    cd = r.fail("explicit", "b", NOW, status=429, retry_after_s=30.0)
    assert (cd.until, cd.status) == (NOW + 30.0, 429)
    assert "explicit" not in r.ledger
    # the caller's own bad input: no cool-down, the decision still goes
    r.route(_x(6), model="a", request_id="bad-input", now=NOW)
    assert r.fail("bad-input", "a", NOW, status=400, cool=False) is None
    assert r.cooldowns.get("a") is None and "bad-input" not in r.ledger
    # a charged request (a stream that failed mid-way) keeps its decision for feedback
    r.route(_x(6), model="c", request_id="mid-stream", now=NOW)
    r.charge("mid-stream", 0.0001)
    r.fail("mid-stream", "c", NOW)
    assert r.feedback("mid-stream", 0.5) == FeedbackStatus.APPLIED


def test_state_reports_cooldowns() -> None:
    r = _router(cooldown_s=10.0)
    r.cooldowns.fail("b", NOW, 503)
    assert r.state(NOW + 4.0)["cooldowns"] == {
        "b": {"until_unix": NOW + 10.0, "remaining_s": 6.0, "failures": 1, "status": 503}
    }
    assert r.state()["cooldowns"]["b"]["remaining_s"] is None


# ---------------------------------------------------------------- the durable record


def _durable(path: Path) -> DurableRouter:
    store = StateStore(path)
    durable, _ = DurableRouter.open(store, _router, DurabilityConfig(), NOW, clock=lambda: NOW)
    return durable


def _flush(durable: DurableRouter) -> None:
    asyncio.run(durable.flush_decisions())


def test_fallback_rekeys_the_recorded_decision_and_recovery_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    durable = _durable(path)
    # re-keyed before its row was written: the row is written with the new model
    d1 = durable.route(_x(7), None, None, NOW, "early")
    fb1 = durable.fallback("early", d1.model, NOW)
    # re-keyed after: the row is updated
    d2 = durable.route(_x(8), None, None, NOW, "late")
    _flush(durable)
    assert durable.store.get_pending("late").model == d2.model
    fb2 = durable.fallback("late", d2.model, NOW)
    # failed for good after its row was written: the row goes
    durable.route(_x(9), None, "a", NOW, "gone")
    _flush(durable)
    durable.fail("gone", "a", NOW)
    _flush(durable)
    assert durable.store.get_pending("early").model == fb1.model != d1.model
    assert durable.store.get_pending("late").model == fb2.model != d2.model
    assert durable.store.get_pending("gone") is None
    durable.store.close()

    # a restart (no snapshot yet) replays the decisions: feedback reaches the answering model
    again = _durable(path)
    r = again.router
    assert set(r.pending_ids()) == {"early", "late"}
    assert r.arms.slot_models[r.ledger.get("late").slot] == fb2.model
    with pytest.raises(UnknownRequestError):
        r.feedback("gone", 1.0)
    again.store.close()


# ---------------------------------------------------------------- a Router that died mid-request


def test_resume_returns_a_pending_uncharged_decision_only() -> None:
    r = _router()
    d = r.route(_x(1), request_id="rid")
    back = r.resume("rid", direct=False)
    assert (back.request_id, back.model, back.t, back.forced) == ("rid", d.model, d.t, d.forced)
    assert r.resume("unknown", direct=False) is None
    r.charge("rid", 1e-4)
    assert r.resume("rid", direct=False) is None  # answered already: route anew is wrong too


def test_answered_by_restores_a_lost_decision_and_a_lost_rekey(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    durable = _durable(path)
    d = durable.route(_x(3), None, None, NOW, "kept")
    _flush(durable)
    durable.store.close()  # the Router dies: "kept" was flushed, "lost" never existed here

    again = _durable(path)
    r = again.router
    other = next(m for m in ("a", "b", "c") if m != d.model)
    # "kept" was re-keyed by a fallback the dead replica never flushed: the answer says `other`
    assert again.answered_by("kept", other, _x(3), False, NOW) == "rekeyed"
    assert r.arms.slot_models[r.ledger.get("kept").slot] == other
    assert again.answered_by("kept", other, _x(3), False, NOW) == "known"
    # "lost" was routed to a and answered, but its decision died with the replica
    t0, pulls_a = r.t, int(r.bandit.pulls[r.arms.slots["a"]])
    assert again.answered_by("lost", "a", _x(4), False, NOW) == "adopted"
    assert r.t == t0 + 1 and int(r.bandit.pulls[r.arms.slots["a"]]) == pulls_a + 1
    assert r.charge("lost", 2e-4) == FeedbackStatus.APPLIED
    assert r.feedback("lost", 0.5) == FeedbackStatus.APPLIED
    _flush(durable := again)
    assert durable.store.get_pending("kept").model == other
    assert durable.store.get_pending("lost").model == "a"
    again.store.close()


def test_a_rekey_after_the_snapshot_survives_recovery(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    durable = _durable(path)
    d = durable.route(_x(5), None, None, NOW, "r")
    _flush(durable)
    asyncio.run(durable.snapshot_now())  # holds "r" on its first model
    fb = durable.fallback("r", d.model, NOW)
    _flush(durable)  # the re-key reaches the recorded row, not the snapshot
    durable.store.close()

    again = _durable(path)
    r = again.router
    assert r.arms.slot_models[r.ledger.get("r").slot] == fb.model != d.model
    again.store.close()


# ---------------------------------------------------------------- the write-ahead order


def test_charge_and_feedback_are_journalled_before_they_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    durable = _durable(path)
    charges, updates = durable.router.pacer.state.charges, int(durable.router.bandit.updates.sum())
    journalled_first: list[bool] = []
    for name in ("charge", "feedback"):
        real = getattr(durable.router, name)

        def spy(rid: str, value: float, *rest, real=real, kind=name) -> FeedbackStatus:
            journalled_first.append(durable.store.has_event(rid, kind))
            return real(rid, value, *rest)

        monkeypatch.setattr(durable.router, name, spy)

    async def traffic() -> list[FeedbackStatus]:
        durable.route(_x(1), None, None, NOW, "w")
        return [
            await durable.charge("w", 1e-4, NOW),
            await durable.charge("w", 1e-4, NOW),
            await durable.feedback("w", 0.5, NOW),
            await durable.feedback("w", 0.5, NOW),
            # answered by "a" after the router lost the decision: adopted, then charged
            await durable.charge("lost", 2e-4, NOW, "a", _x(2)),
        ]

    applied, duplicate = FeedbackStatus.APPLIED, FeedbackStatus.DUPLICATE
    assert asyncio.run(traffic()) == [applied, duplicate, applied, duplicate, applied]
    assert journalled_first == [True, True, True]  # each applied event was on disk first
    assert durable.store.count_events() == 3 and durable.applied_seq == 3
    assert durable.store.get_pending("lost").model == "a"
    durable.store.close()

    # a restart (no snapshot) replays decisions and journal: each event applies exactly once
    again = _durable(path)
    r = again.router
    assert r.pacer.state.charges == charges + 2 and int(r.bandit.updates.sum()) == updates + 1
    assert not r.is_pending("w") and r.is_pending("lost")
    assert asyncio.run(again.feedback("w", 0.5, NOW)) == duplicate
    again.store.close()
