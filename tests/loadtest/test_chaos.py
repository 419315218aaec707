"""A short chaos run (the documented long one: `paretoserve loadtest chaos --minutes 10`):
traffic with delayed feedback while the Router replica is SIGKILLed and providers fail 20% of
attempts. Every answered chat is charged, every acknowledged feedback is applied exactly once
to the model that answered, and requests survive the restarts and the faults."""

from __future__ import annotations

import json

import pytest

from paretoserve_cli.main import main

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    rc = main(
        [
            "loadtest", "chaos", "--minutes", "0.8", "--kill-every-s", "15",
            "--fault-rate", "0.2", "--concurrency", "8", "--feedback-delay-ms", "1000",
            "--sim-time-scale", "0.05", "--tenant-cap-usd", "0.02", "--json", str(out),
        ]
    )  # fmt: skip
    data = json.loads(out.read_text())
    data["exit_code"] = rc
    return data


def test_the_router_was_killed_and_requests_survived(report) -> None:
    assert len(report["router_kills"]) >= 2
    recoveries = report["router_recoveries"]
    assert len(recoveries) == len(report["router_kills"])
    for r in recoveries:  # each killed replica went, a new one answered with nothing undone
        assert r["killed"] == "replica" and r["old_router_gone_s"] is not None, r
        assert r["recovered_s"] is not None, r
        assert all(r["after"][k] >= r["before"][k] for k in r["before"]), r
    req = report["requests"]
    assert req["sent"] > 50
    assert req["answered_share"] >= 0.99, req["errors"]
    # faults were injected and fell back: more than one model answered
    assert len(req["answered_by"]) >= 2


def test_no_acknowledged_feedback_lost_or_applied_twice(report) -> None:
    fb = report["feedback"]
    assert fb["acknowledged"] >= report["requests"]["answered"] - fb["never_acknowledged"]
    assert fb["lost"] == 0
    assert fb["double_applied"] == 0
    assert report["exit_code"] == 0


def test_every_answered_chat_was_charged(report) -> None:
    spend = report["spend"]
    assert spend["router_charges"] >= report["requests"]["answered"]
    assert spend["router_spend_usd"] >= spend["answered_cost_usd"] * (1 - 1e-9)


def test_tenants_lose_no_spend_count_none_twice_and_the_cap_holds(report) -> None:
    """Half the clients used a tenant capped at $0.02 a day (it ran out during the run), half
    an uncapped tenant; the Router was killed meanwhile."""
    tenants = report["tenants"]
    capped = tenants["chaos-capped"]
    assert capped["refused_by_cap"] > 0 and capped["answered"] > 0, capped
    assert capped["within_cap"] and capped["router_spend_usd"] <= 0.02, capped
    for name, t in tenants.items():
        assert not t["spend_lost"] and not t["charges_lost"], (name, t)
        assert not t["charged_twice"], (name, t)
        assert t["router_spend_usd"] >= t["answered_cost_usd"] * (1 - 1e-9), (name, t)
        assert t["reserved_usd_left"] == 0.0, (name, t)
    assert tenants["chaos-open"]["refused_by_cap"] == 0
