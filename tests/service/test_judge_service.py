"""The Judge in the real graph (local Ray): it judges every forced-exploration pull of a model
added at runtime even at sample rate 0, its rewards go through the exactly-once feedback path,
and an application's own feedback within the grace period wins.

The app is graphs.app:build_app with serve_config.yaml's args, except: state in a temp dir,
instant simulated answers, and the Judge on with sample_rate 0 and a grace period of 3 s."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from core.state.store import StateStore

pytestmark = pytest.mark.ray

NEWCOMER = {
    "id": "acme/newcomer-8b",
    "provider": "simulated",
    "input_per_m": 0.08,
    "output_per_m": 0.08,
    "speed": "fast",
}
CLIENT_REWARD = 0.123
GRACE_S = 3.0


@pytest.fixture(scope="module")
def app(tmp_path_factory, make_app_args, local_app):
    state_dir = tmp_path_factory.mktemp("judge-state")
    judge = {"enabled": True, "sample_rate": 0.0, "client_grace_s": GRACE_S, "daily_cap_usd": 1.0}
    args = make_app_args(state_dir, judge=judge)
    with local_app(args) as url:
        yield url, args["state_path"]


def _state(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get("/admin/state", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _chat(client: httpx.Client, text: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def test_forced_pulls_are_judged_once_and_the_clients_feedback_wins(app, admin_headers, svc):
    base_url, state_path = app
    with httpx.Client(base_url=base_url, timeout=60) as client:
        before = _state(client, admin_headers)
        assert before["judge"]["offered"] == 0 and before["judge"]["model"]
        r = client.post("/admin/models", json=NEWCOMER, headers=admin_headers)
        assert r.status_code == 201, r.text

        forced, client_posted = [], set()
        for i in range(40):
            r = _chat(client, f"Question {i}: how do tides work?")
            if not r.json()["paretoserve"]["forced"]:
                continue
            rid = r.headers["x-request-id"]
            forced.append(rid)
            if len(forced) % 2:  # every other one: the application answers within the grace
                body = {"request_id": rid, "reward": CLIENT_REWARD}
                fb = client.post("/v1/feedback", json=body)
                assert fb.json()["status"] == "applied", fb.text
                client_posted.add(rid)
        assert len(forced) >= 10

        def judged() -> dict | None:
            j = _state(client, admin_headers)["judge"]
            return j if j["outstanding"] == 0 and j["offered"] == len(forced) else None

        judge = svc.wait_until(judged, 60 + GRACE_S, "the Judge to finish the forced pulls")
        # sample rate 0: only the forced pulls were offered; each judged once or skipped
        assert judge["applied"] == len(forced) - len(client_posted)
        assert judge["skipped"] == len(client_posted)
        assert judge["reasons"] == {"skipped:client_feedback": len(client_posted)}
        assert judge["failed"] == 0 and 0 < judge["spend_usd"] <= judge["daily_cap_usd"]

        # a client's feedback after the Judge's is a duplicate: the Judge's reward stands
        late = next(rid for rid in forced if rid not in client_posted)
        fb = client.post("/v1/feedback", json={"request_id": late, "reward": CLIENT_REWARD})
        assert fb.json()["status"] == "duplicate"

        after = _state(client, admin_headers)
        added = sum(m["updates"] for m in after["models"].values()) - sum(
            m["updates"] for m in before["models"].values()
        )
        assert added == len(forced)  # every forced pull learnt from exactly once

    with StateStore(state_path) as store:
        rewards = {ev.request_id: ev.value for ev in store.events_after(0) if ev.kind == "feedback"}
    assert set(rewards) == set(forced)
    for rid in forced:
        if rid in client_posted:
            assert rewards[rid] == CLIENT_REWARD
        else:  # the simulated judge: the answer's reward plus small noise, never the client's
            assert 0.0 <= rewards[rid] <= 1.0 and rewards[rid] != CLIENT_REWARD
