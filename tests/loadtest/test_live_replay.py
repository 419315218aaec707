"""`paretoserve loadtest replay --start-server` end to end, on a short slice of the data:
the real `serve run` service, the simulated provider replaying the reward file, HTTP traffic
with delayed feedback, and the scenario's change made through the admin API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paretoserve_cli.main import main

pytestmark = pytest.mark.ray

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LIMIT = 12


@pytest.fixture(scope="module")
def price_cut_report(tmp_path_factory) -> dict:
    if not (DATA / "val.jsonl").exists():
        pytest.skip(f"reward data not found at {DATA} (../shared/data is absent)")
    out = tmp_path_factory.mktemp("live") / "report.json"
    rc = main(
        [
            "loadtest", "replay", "--data", str(DATA / "val.jsonl"), "--holdout-split", "0",
            "--scenario", "price-cut", "--budget", "6.64e-4", "--start-server",
            "--limit", str(LIMIT), "--concurrency", "4", "--feedback-delay-ms", "300",
            "--sim-time-scale", "0", "--json", str(out), "--plot", str(out.with_suffix(".png")),
        ]
    )  # fmt: skip
    assert rc == 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    return json.loads(out.read_text())


def test_every_request_answered_and_every_reward_applied_once(price_cut_report) -> None:
    r = price_cut_report
    assert r["requests"]["warmup"] == LIMIT
    assert r["requests"]["sent"] == r["requests"]["answered"] == 3 * LIMIT
    assert r["requests"]["failed"] == 0 and r["requests"]["no_recorded_reward"] == 0
    # warm-up and evaluation feedback, each applied exactly once
    assert r["feedback"]["statuses"] == {"applied": 4 * LIMIT}
    w = r["warmup"]  # what the warm-up hands over to the evaluation
    assert w["answered"] == LIMIT and sum(w["mix"].values()) == pytest.approx(1.0)
    assert 0.0 <= w["final_dual"] <= w["max_dual"] and 0.0 < w["mean_reward"] <= 1.0


def test_report_follows_the_offline_schema(price_cut_report) -> None:
    r = price_cut_report
    s = r["summary"]
    assert {"mean_reward", "mean_cost", "compliance", "mix"} <= set(s)
    assert [p["name"] for p in r["phases"]] == ["P1", "P2", "P3"]
    assert all(p["steps"] == LIMIT for p in r["phases"])
    costs = r["series"]["costs"]
    assert s["mean_cost"] == pytest.approx(np.mean(costs))
    assert s["compliance"] == pytest.approx(np.mean(costs) / 6.64e-4)
    assert sum(s["mix"].values()) == pytest.approx(1.0)
    assert "quality_lift" in r
    for key in ("p50", "p99"):
        assert r["latency_ms"][key] > 0
    assert r["throughput_rps"] > 0


def test_price_cut_and_restore_go_through_the_admin_api(price_cut_report) -> None:
    actions = price_cut_report["operator_actions"]
    assert [(a["phase"], a["method"], a["status"]) for a in actions] == [
        ("P2", "PATCH", 200),
        ("P3", "PATCH", 200),
    ]
    cut, restored = actions[0]["body"], actions[1]["body"]
    assert cut["input_per_m"] == pytest.approx(restored["input_per_m"] * 0.1 / 5.625)
    assert cut["output_per_m"] == pytest.approx(restored["output_per_m"] * 0.1 / 5.625)
