"""Kill the Router replica (SIGKILL of its process) while chats and feedback flow, let Serve
restart it, and check what the durability design (core/state/durable.py, deployments/router.py)
guarantees.

What the design guarantees, and so what is asserted:

- A decision is made in memory and recorded asynchronously (the writer task flushes decision
  rows before it journals any event). A chat is answered only after its charge was journalled
  (Ingress awaits Router.charge, which journals then applies), so every chat that got a 200
  has a durable decision and a durable charge. In-flight chats may fail (5xx, timeouts): they
  are counted, not failed on; their decisions and charges may or may not have survived.
  => pulls, charges and time t grew by at least the number of answered chats and at most the
     number attempted; per model, pulls grew by at least the chats it answered.
- A feedback is journalled before it is applied and acknowledged; recovery = newest snapshot +
  the decisions and journal events after it; the Feedback deployment answers repeats from the
  journal. => every feedback acknowledged "applied" is reflected exactly once, and a repeat of
  it answers "duplicate". A feedback that failed in flight may or may not be journalled: a
  retry answers "applied" (it was not) or "duplicate" (it was), never 404 (its chat was
  answered, so its decision is durable). After those retries every request id that got
  feedback is journalled exactly once, so, per model, the bandit's `updates` grew by exactly
  the number of those request ids answered by that model.
- Registry changes and budget changes are persisted before they are acknowledged (the
  registry table document; set_budget and apply_registry snapshot at once) => the model table,
  a re-price, a runtime-added model and the budget set before the kill are all intact.
- Recovery replays every journalled event (none is skipped for want of its context).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.ray

CHEAP = "meta-llama/llama-3.1-8b-instruct"
MID = "mistralai/mistral-large-2512"
SURVIVOR = {
    "id": "acme/survivor",
    "provider": "simulated",
    "input_per_m": 0.08,
    "output_per_m": 0.24,
    "speed": "fast",
}
BUDGET = 0.0009
ACKS_BEFORE_KILL = 30
ACKS_AFTER_RESTART = 15
FEEDBACK_LAG = 5


def _router_pids() -> set[int]:
    """PIDs of the live Router replica actors (Serve names them SERVE_REPLICA::app#Router#id)."""
    import ray

    pids = set()
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "#Router#" not in actor["name"]:
            continue
        try:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            pids.add(ray.get(handle.__ray_call__.remote(lambda _: os.getpid()), timeout=5))
        except Exception:  # noqa: BLE001 - a dead or not yet started replica
            continue
    return pids


@dataclass
class Traffic:
    """What the clients saw. Lists are appended from the traffic threads only."""

    chats_attempted: int = 0
    chat_ok: dict[str, str] = field(default_factory=dict)  # request id -> answering model
    chat_failures: list[str] = field(default_factory=list)
    feedback: dict[str, list[str]] = field(default_factory=dict)  # request id -> outcomes
    acked_at: dict[str, float] = field(default_factory=dict)  # request id -> time of "applied"

    def applied(self, after: float = 0.0) -> int:
        return sum(t > after for t in list(self.acked_at.values()))


def _outcome(r: httpx.Response) -> str:
    if r.status_code == 200:
        return r.json()["status"]
    return f"http {r.status_code}"


def _chat_loop(base_url: str, traffic: Traffic, todo: queue.Queue, stop: threading.Event):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        i = 0
        while not stop.is_set():
            i += 1
            body = {
                "model": CHEAP if i % 5 == 0 else "auto",
                "messages": [
                    {"role": "user", "content": f"restart test prompt {i}: what is {i}+{i}?"}
                ],
            }
            traffic.chats_attempted += 1
            try:
                r = c.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                traffic.chat_failures.append(type(exc).__name__)
                continue
            if r.status_code == 200:
                rid = r.json()["paretoserve"]["request_id"]
                traffic.chat_ok[rid] = r.json()["model"]
                todo.put(rid)
            else:
                traffic.chat_failures.append(f"http {r.status_code}")
            time.sleep(0.02)


def _feedback_loop(base_url: str, traffic: Traffic, todo: queue.Queue, stop: threading.Event):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        n = 0
        while not (stop.is_set() and todo.empty()):
            # Lag behind the chats, so that answered requests always await feedback: across the
            # kill, their contexts must come back from the snapshot or the decision records.
            if todo.qsize() < FEEDBACK_LAG and not stop.is_set():
                time.sleep(0.02)
                continue
            try:
                rid = todo.get(timeout=0.1)
            except queue.Empty:
                continue
            n += 1
            try:
                r = c.post("/v1/feedback", json={"request_id": rid, "reward": (n % 11) / 10})
                outcome = _outcome(r)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            traffic.feedback.setdefault(rid, []).append(outcome)
            if outcome == "applied":
                traffic.acked_at[rid] = time.monotonic()
            time.sleep(0.02)


@dataclass
class Scenario:
    traffic: Traffic
    before: dict[str, Any]  # /admin/state with no traffic in flight, before the traffic
    registry_before: list[dict[str, Any]]
    after: dict[str, Any]  # /admin/state once every feedback id is settled
    registry_after: list[dict[str, Any]]
    old_pid: int
    new_pids: set[int]
    retries: dict[str, str]  # request id -> outcome of the retry of a failed feedback
    repeats: dict[str, str]  # request id -> outcome of repeating an acknowledged feedback
    expected_updates: dict[str, int]  # model -> request ids with a journalled feedback


def _sum(state: dict[str, Any], key: str) -> int:
    return sum(m[key] for m in state["models"].values())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, make_app_args, local_app, admin_headers, svc):
    # Snapshots every second (default 5 s): the kill then lands after periodic snapshots that
    # hold pending contexts, with a journal tail behind the newest one.
    args = make_app_args(
        tmp_path_factory.mktemp("restart-state"), durability={"snapshot_every_s": 1.0}
    )
    with local_app(args) as base_url, httpx.Client(base_url=base_url, timeout=60) as c:

        def state() -> dict[str, Any]:
            r = c.get("/admin/state", headers=admin_headers)
            assert r.status_code == 200, r.text
            return r.json()

        # Administration before the kill: re-price, a new model, a new budget.
        r = c.patch(
            f"/admin/models/{MID}",
            json={"input_per_m": 0.3, "output_per_m": 0.9},
            headers=admin_headers,
        )
        assert r.status_code == 200, r.text
        assert c.post("/admin/models", json=SURVIVOR, headers=admin_headers).status_code == 201
        r = c.put("/admin/budget", json={"usd_per_request": BUDGET}, headers=admin_headers)
        assert r.status_code == 200, r.text
        registry_before = c.get("/admin/models", headers=admin_headers).json()
        before = state()
        [old_pid] = _router_pids()

        traffic, todo, stop = Traffic(), queue.Queue(), threading.Event()
        threads = [
            threading.Thread(target=_chat_loop, args=(base_url, traffic, todo, stop), daemon=True),
            threading.Thread(
                target=_feedback_loop, args=(base_url, traffic, todo, stop), daemon=True
            ),
        ]
        for t in threads:
            t.start()
        try:
            svc.wait_until(
                lambda: traffic.applied() >= ACKS_BEFORE_KILL, 120, "feedback before the kill"
            )
            os.kill(old_pid, signal.SIGKILL)

            def restarted() -> set[int]:
                pids = _router_pids() - {old_pid}
                return pids if pids and state() else set()

            new_pids = svc.wait_until(restarted, 180, "Serve to restart the Router", every_s=1)
            back = time.monotonic()
            svc.wait_until(
                lambda: traffic.applied(after=back) >= ACKS_AFTER_RESTART,
                120,
                "feedback after the restart",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
        assert not any(t.is_alive() for t in threads), "traffic threads did not stop"

        # Settle every feedback whose outcome the client did not see.
        retries = {}
        for rid, outcomes in traffic.feedback.items():
            if outcomes[-1] not in ("applied", "duplicate"):
                r = c.post("/v1/feedback", json={"request_id": rid, "reward": 0.5})
                retries[rid] = _outcome(r)
        repeats = {}
        for rid in traffic.acked_at:
            r = c.post("/v1/feedback", json={"request_id": rid, "reward": 0.5})
            repeats[rid] = _outcome(r)
        journalled = [rid for rid in traffic.feedback if rid in traffic.acked_at or rid in retries]
        expected_updates = Counter(traffic.chat_ok[rid] for rid in journalled)
        base_updates = {m: a["updates"] for m, a in before["models"].items()}

        def settled() -> dict[str, Any] | None:
            now = state()
            grown = {m: a["updates"] - base_updates[m] for m, a in now["models"].items()}
            return now if grown == {m: expected_updates.get(m, 0) for m in grown} else None

        try:
            after = svc.wait_until(settled, 15, "updates to match the journalled feedback")
        except TimeoutError:
            after = state()  # the tests report the mismatch
        yield Scenario(
            traffic=traffic,
            before=before,
            registry_before=registry_before,
            after=after,
            registry_after=c.get("/admin/models", headers=admin_headers).json(),
            old_pid=old_pid,
            new_pids=new_pids,
            retries=retries,
            repeats=repeats,
            expected_updates=dict(expected_updates),
        )


def test_the_router_was_killed_and_restarted(scenario: Scenario) -> None:
    assert scenario.old_pid not in scenario.new_pids and len(scenario.new_pids) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(scenario.old_pid, 0)
    recovery = scenario.after["recovery"]
    assert recovery["from_snapshot"] is True  # the admin changes forced a snapshot
    assert recovery["skipped_events"] == 0, recovery
    assert scenario.after["journal_seq"] >= scenario.before["journal_seq"]
    t = scenario.traffic
    assert t.applied() >= ACKS_BEFORE_KILL + ACKS_AFTER_RESTART


def test_acknowledged_feedback_is_applied_exactly_once(scenario: Scenario) -> None:
    t = scenario.traffic
    # No request id was acknowledged twice, and a first attempt is never a duplicate.
    assert all(outcomes.count("applied") <= 1 for outcomes in t.feedback.values())
    assert all(outcomes[0] != "duplicate" for outcomes in t.feedback.values())
    # No feedback for an answered chat was ever unknown (404) or rejected (4xx).
    seen = Counter(o for outcomes in t.feedback.values() for o in outcomes)
    assert not [o for o in seen if o.startswith("http 4")], seen
    # Every acknowledged feedback now answers "duplicate".
    assert set(scenario.repeats.values()) <= {"duplicate"}, Counter(scenario.repeats.values())
    # Every feedback that failed in flight was either journalled or not: never lost context.
    assert set(scenario.retries.values()) <= {"applied", "duplicate"}, scenario.retries
    # And the bandit learned from each journalled feedback exactly once.
    grown = {
        m: a["updates"] - scenario.before["models"][m]["updates"]
        for m, a in scenario.after["models"].items()
    }
    expected = {m: scenario.expected_updates.get(m, 0) for m in grown}
    assert grown == expected, (grown, expected, seen, Counter(scenario.retries.values()))


def test_answered_decisions_and_charges_survive(scenario: Scenario) -> None:
    t, before, after = scenario.traffic, scenario.before, scenario.after
    answered, attempted = len(t.chat_ok), t.chats_attempted
    assert answered > 0
    for key, grown in (
        ("pulls", _sum(after, "pulls") - _sum(before, "pulls")),
        ("charges", after["charges"] - before["charges"]),
        ("t", after["t"] - before["t"]),
    ):
        assert answered <= grown <= attempted, (key, grown, answered, attempted)
    for model, n in Counter(t.chat_ok.values()).items():
        assert after["models"][model]["pulls"] - before["models"][model]["pulls"] >= n, model
    assert after["total_spend_usd"] > before["total_spend_usd"]


def test_registry_and_budget_survive(scenario: Scenario) -> None:
    before, after = scenario.before, scenario.after
    assert scenario.registry_after == scenario.registry_before
    assert {m["id"] for m in scenario.registry_after} >= {SURVIVOR["id"], MID, CHEAP}
    assert after["budget_usd_per_request"] == pytest.approx(BUDGET)
    assert after["registry_version"] == before["registry_version"]
    assert after["models"][MID]["blended_usd_per_m"] == pytest.approx(0.6)
    assert after["models"][SURVIVOR["id"]]["blended_usd_per_m"] == pytest.approx(0.16)
    for model, arm in before["models"].items():
        assert after["models"][model]["active"] == arm["active"]
        assert after["models"][model]["blended_usd_per_m"] == arm["blended_usd_per_m"]
        # Forced exploration never runs backwards (no pull is given twice after a restart).
        assert after["models"][model]["forced_pulls_left"] <= arm["forced_pulls_left"]
