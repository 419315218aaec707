"""The decision ledger: duplicates, settling, caps, expiry and its snapshot round trip."""

from __future__ import annotations

import numpy as np
import pytest

from core.method.errors import UnknownRequestError
from core.method.ledger import Ledger

X = np.arange(4.0)


def test_a_decision_settles_when_charged_and_rewarded_and_repeats_are_duplicates() -> None:
    ledger = Ledger(max_pending=10)
    ledger.open("r", slot=1, x=X, t=1, forced=False)
    assert "r" in ledger and ledger.in_use("r") and not ledger.settled("r")
    entry = ledger.charge_due("r")
    ledger.charged("r", entry)
    assert ledger.charge_due("r") is None  # charged already
    entry = ledger.reward_due("r")
    ledger.rewarded("r", entry)
    assert "r" not in ledger and ledger.settled("r") and ledger.in_use("r")
    assert ledger.charge_due("r") is None and ledger.reward_due("r") is None
    with pytest.raises(UnknownRequestError):
        ledger.charge_due("other")
    with pytest.raises(UnknownRequestError):
        ledger.reward_due("other")


def test_caps_forget_the_oldest_and_restore_is_uncapped() -> None:
    ledger = Ledger(max_pending=2)
    for i in range(3):
        ledger.open(f"r{i}", 0, X, i, False)
    assert ledger.ids() == ["r1", "r2"]
    ledger.restore("r0", 0, X, 0, False)  # recovery: no cap
    assert ledger.ids() == ["r1", "r2", "r0"]
    for rid in ("r1", "r2", "r0"):
        ledger.rewarded(rid, ledger.reward_due(rid))
    assert ledger.applied_ids() == ["r2", "r0"]
    assert ledger.expire(["r1", "r2", "gone"]) == 2 and ledger.ids() == ["r0"]


def test_state_round_trip() -> None:
    ledger = Ledger(max_pending=10)
    ledger.open("a", 0, X, 1, True)
    ledger.open("b", 2, X + 1, 2, False)
    ledger.charged("b", ledger.charge_due("b"))
    ledger.open("c", 1, X + 2, 3, False)
    ledger.rewarded("c", ledger.reward_due("c"))
    arrays, meta = ledger.to_state(dim=4)
    twin = Ledger(max_pending=10)
    twin.load_state(arrays, meta)
    assert twin.ids() == ledger.ids() and twin.applied_ids() == ledger.applied_ids()
    for rid in ledger.ids():
        a, b = ledger.get(rid), twin.get(rid)
        assert (a.slot, a.t, a.forced, a.charged, a.rewarded) == (
            b.slot,
            b.t,
            b.forced,
            b.charged,
            b.rewarded,
        )
        np.testing.assert_array_equal(a.x, b.x)
