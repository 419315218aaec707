"""The Router's node fails and the Router comes back on another node from PostgreSQL.

A two-node Ray cluster on this machine (loadtest/cluster.py: head `a`, node `b`), a throwaway
PostgreSQL server (tests/pg_server.py), and the service deployed with `state_path` = that
database's DSN. The Router prefers node b (a label selector, with node a as its fallback),
so it starts there. Chat traffic with delayed feedback runs (loadtest/chaos.py) while node b's
raylet is SIGKILLed: the node dies with everything on it, and Serve starts the Router again on
node a, where it recovers from the database. Nothing the clients were told is lost: every
acknowledged feedback is applied exactly once (per model, the bandit's updates grew by the
acknowledged count), every answered chat is charged, and the journal in PostgreSQL holds
every acknowledged feedback and every answered chat's charge. Figures: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from core.replay.prompts import load_prompts
from core.state.pg_store import PgStateStore
from loadtest.chaos import ChaosConfig, run_chaos
from loadtest.cluster import NodeSpec, local_cluster
from loadtest.server import base_config, raylet_of, replica_pids, serve_app

pytestmark = pytest.mark.ray

NODE = "paretoserve-node"


def _app_args(dsn: str) -> dict:
    args = base_config()["applications"][0]["args"]
    args.update(state_path=dsn, budget_usd_per_request=6.64e-4)
    args["judge"] = {**args.get("judge", {}), "enabled": False}  # only the driver's feedback
    args["providers"]["simulated"]["options"]["time_scale"] = 0.05
    args["durability"] = {**args.get("durability", {}), "snapshot_every_s": 2}
    return args


def _router_pid(app) -> int:
    pids = replica_pids(app).get("Router", [])
    assert len(pids) == 1, pids
    return pids[0]


@pytest.fixture(scope="module")
def failover(pg_server, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("pg-failover")
    dsn = pg_server.create_database("paretoserve")
    nodes = [
        NodeSpec("a", num_cpus=3, labels={NODE: "a"}),
        NodeSpec("b", num_cpus=1, labels={NODE: "b"}, resources={"node_b": 1}),
    ]
    router_options = {
        "ray_actor_options": {
            "num_cpus": 0.25,
            "label_selector": {NODE: "b"},
            "fallback_strategy": [{"label_selector": {NODE: "a"}}],
        }
    }
    with (
        local_cluster(nodes, work / "cluster") as cluster,
        serve_app(
            _app_args(dsn),
            work / "service",
            deployments={"Router": router_options},
            address=cluster.address,
            ray_dir=cluster.ray_dir,
        ) as app,
    ):
        first = _router_pid(app)
        first_raylet = raylet_of(first)
        raylets = {n: cluster.raylet_pid(n) for n in ("a", "b")}
        cfg = ChaosConfig(
            seconds=45, kill_every_s=12, fault_rate=0.0, concurrency=4,
            feedback_delay_ms=500.0, seed=0, kill_node=True,
        )  # fmt: skip
        report = asyncio.run(run_chaos(app, load_prompts(None), cfg, with_ids=True))
        second = _router_pid(app)
        report["cluster"] = {
            "raylets": raylets,
            "router_first": {"pid": first, "raylet": first_raylet},
            "router_after": {"pid": second, "raylet": raylet_of(second)},
            "raylets_alive_after": {n: cluster.raylet_pid(n) for n in ("a", "b")},
        }
    with PgStateStore(dsn) as store:
        report["journal"] = {
            "feedback_ids": [e.request_id for e in store.events_after(0) if e.kind == "feedback"],
            "charge_ids": [e.request_id for e in store.events_after(0) if e.kind == "charge"],
        }
    (work / "failover.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("ids", "journal")}))
    return report


def test_the_router_started_on_node_b_and_came_back_on_node_a(failover: dict) -> None:
    c = failover["cluster"]
    assert c["router_first"]["raylet"] == c["raylets"]["b"]  # the label selector held
    (kill,) = failover["router_recoveries"]
    assert kill["killed"] == "node" and kill["pids"] == [c["raylets"]["b"]]
    assert c["raylets_alive_after"] == {"a": c["raylets"]["a"], "b": None}
    assert c["router_after"]["raylet"] == c["raylets"]["a"]
    assert c["router_after"]["pid"] != c["router_first"]["pid"]
    assert kill["old_router_gone_s"] is not None  # the orphaned replica did not live on
    assert kill["recovered_s"] is not None and kill["recovered_s"] < 120


def test_no_acknowledged_feedback_or_spend_was_lost(failover: dict) -> None:
    (kill,) = failover["router_recoveries"]
    before, after = kill["before"], kill["after"]
    for key in ("charges", "total_spend_usd", "updates"):
        assert after[key] >= before[key], (key, before, after)
    fb, req, spend = failover["feedback"], failover["requests"], failover["spend"]
    assert req["answered"] > 30 and fb["acknowledged"] > 20
    assert fb["lost"] == 0 and fb["double_applied"] == 0
    assert spend["router_charges"] >= req["answered"]
    assert spend["router_spend_usd"] >= spend["answered_cost_usd"] * (1 - 1e-9)


def test_the_postgresql_journal_holds_what_the_clients_were_told(failover: dict) -> None:
    journal = failover["journal"]
    acked = set(failover["ids"]["acknowledged"])
    assert acked and acked <= set(journal["feedback_ids"])
    assert len(journal["feedback_ids"]) == len(set(journal["feedback_ids"]))  # exactly once
    answered = set(failover["ids"]["answered"])
    assert answered and answered <= set(journal["charge_ids"])
