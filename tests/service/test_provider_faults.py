"""Provider faults through the real app on a local Ray: fallback, cool-down, Retry-After, clean
errors for explicit models, streaming fallback, runtime simulation knobs (PATCH), and a model
added at runtime served by a provider deployment of 2 replicas.

One app for the module: serve_config.yaml's models and simulated provider (instant answers),
a budget high enough that the pacer never holds back forced exploration, the Provider
deployment fixed at 2 replicas, short cool-downs. Every test that adds a failing model removes
it before it returns, so the others see only the configured models. Faults are injected with
rate 1.0 (or 0): the outcomes are certain, not sampled.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.ray

CHEAP = "meta-llama/llama-3.1-8b-instruct"
MID = "mistralai/mistral-large-2512"
DEAR = "google/gemini-2.5-pro"
CONFIGURED = {CHEAP, MID, DEAR}
COOLDOWN_S = 2.0


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, make_app_args, local_app):
    providers = {
        "simulated": {
            "kind": "simulated",
            "options": {"seed": 0, "time_scale": 0},
            "replicas": 2,
            # no backoff wait in tests; a Retry-After over 1 s is not waited for
            "retry": {"max_attempts": 2, "backoff_s": 0.0, "max_retry_after_s": 1.0},
        }
    }
    args = make_app_args(
        tmp_path_factory.mktemp("faults-state"),
        budget_usd_per_request=1.0,
        providers=providers,
        faults={"cooldown_s": COOLDOWN_S, "factor": 2.0, "max_cooldown_s": 60.0},
    )
    with local_app(args) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def _chat(client: httpx.Client, text: str = "What is the capital of France?", **body: Any):
    body.setdefault("messages", [{"role": "user", "content": text}])
    return client.post("/v1/chat/completions", json=body)


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()


def _state(client: httpx.Client, admin_headers: dict[str, str]) -> dict[str, Any]:
    r = client.get("/admin/state", headers=admin_headers)
    assert r.status_code == 200, r.text
    return r.json()


def _add(client, admin_headers, model_id: str, simulation: dict | None = None) -> None:
    spec = {"id": model_id, "provider": "simulated", "input_per_m": 0.05, "output_per_m": 0.05}
    if simulation is not None:
        spec["simulation"] = simulation
    r = client.post("/admin/models", json=spec, headers=admin_headers)
    assert r.status_code == 201, r.text


def _remove(client, admin_headers, model_id: str) -> None:
    r = client.delete(f"/admin/models/{model_id}", headers=admin_headers)
    assert r.status_code == 200, r.text


def test_model_added_at_runtime_is_served_by_every_provider_replica(client, admin_headers, svc):
    from ray import serve

    def running() -> bool:
        app = serve.status().applications["paretoserve"]
        return app.deployments["Provider_simulated"].replica_states.get("RUNNING") == 2

    svc.wait_until(running, 120, "2 running Provider_simulated replicas")
    _add(client, admin_headers, "acme/new-at-runtime")
    try:
        # Before the table travelled in each request, the registry's push reached one replica
        # and about half of these failed with "not served by this provider".
        for i in range(24):
            r = _chat(client, f"question {i}", model="acme/new-at-runtime")
            assert _ok(r)["model"] == "acme/new-at-runtime"
    finally:
        _remove(client, admin_headers, "acme/new-at-runtime")


def test_failing_model_falls_back_cools_down_then_is_tried_again(
    client, admin_headers, svc
) -> None:
    bad = "acme/always-5xx"
    # A new model gets forced exploration pulls: auto-routing picks it first.
    _add(client, admin_headers, bad, {"error_rate": 1.0})
    try:
        first = _ok(_chat(client, "fallback one"))
        assert first["model"] in CONFIGURED
        assert first["paretoserve"]["fallback_from"] == [bad]
        assert first["paretoserve"]["routed"] is True
        cd = _state(client, admin_headers)["cooldowns"][bad]
        assert (cd["failures"], cd["status"]) == (1, 503)
        assert 0 < cd["remaining_s"] <= COOLDOWN_S

        # The charge and the feedback went to the model that answered.
        rid = first["paretoserve"]["request_id"]
        before = _state(client, admin_headers)["models"][first["model"]]["updates"]
        r = client.post("/v1/feedback", json={"request_id": rid, "reward": 1.0})
        assert r.json()["status"] == "applied"
        after = _state(client, admin_headers)["models"]
        assert after[first["model"]]["updates"] == before + 1
        assert after[bad]["updates"] == 0

        # While it cools down (forced pulls left or not), auto-routing skips it.
        cooling = _ok(_chat(client, "fallback two"))
        if _state(client, admin_headers)["cooldowns"][bad]["remaining_s"] > 0:
            assert cooling["model"] != bad and cooling["paretoserve"]["fallback_from"] is None

        # After the cool-down it is tried again (its forced pull was given back), fails again,
        # and cools down for twice as long.
        svc.wait_until(
            lambda: _state(client, admin_headers)["cooldowns"][bad]["remaining_s"] == 0,
            COOLDOWN_S + 30,
            "the cool-down to end",
            every_s=0.25,
        )
        ended = _state(client, admin_headers)["cooldowns"][bad]
        again = _ok(_chat(client, "fallback three"))
        assert again["paretoserve"]["fallback_from"] == [bad]
        cd = _state(client, admin_headers)["cooldowns"][bad]
        assert cd["failures"] == 2 and cd["until_unix"] > ended["until_unix"]
        assert _state(client, admin_headers)["models"][bad]["pulls"] >= 2
    finally:
        _remove(client, admin_headers, bad)


def test_429_retry_after_is_honoured_as_the_cooldown(client, admin_headers, openai_error):
    limited = "acme/rate-limited"
    _add(client, admin_headers, limited, {"rate_limit_rate": 1.0, "retry_after_s": 30.0})
    try:
        out = _ok(_chat(client, "rate limited auto"))
        assert out["model"] != limited and out["paretoserve"]["fallback_from"] == [limited]
        cd = _state(client, admin_headers)["cooldowns"][limited]
        assert cd["status"] == 429
        assert 20.0 < cd["remaining_s"] <= 30.0  # the Retry-After, not the 2 s default

        # An explicit request does not fall back: a 429 with the upstream's Retry-After.
        r = _chat(client, "rate limited explicit", model=limited)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "30"
        err = openai_error(r)
        assert (err["type"], err["code"]) == ("rate_limit_error", "429")
    finally:
        _remove(client, admin_headers, limited)


@pytest.mark.parametrize(
    ("simulation", "status", "code"),
    [
        ({"error_rate": 1.0}, 503, "503"),
        ({"error_rate": 1.0, "error_status": 500}, 502, "500"),
        ({"timeout_rate": 1.0, "timeout_s": 0.0}, 504, "timeout"),
    ],
)
def test_explicit_model_failure_is_a_clean_error_and_no_decision(
    client, admin_headers, openai_error, simulation, status, code
) -> None:
    broken = "acme/broken-explicit"
    _add(client, admin_headers, broken, simulation)
    try:
        pending = _state(client, admin_headers)["pending"]
        r = _chat(client, "explicit failure", model=broken)
        assert r.status_code == status, r.text
        err = openai_error(r)
        assert (err["type"], err["code"]) == ("upstream_error", code)
        assert "simulated" in err["message"]
        # Not a reward signal: its decision is gone, so feedback on it is refused.
        rid = r.headers["x-request-id"]
        fb = client.post("/v1/feedback", json={"request_id": rid, "reward": 0.0})
        assert fb.status_code == 404, fb.text
        state = _state(client, admin_headers)
        assert state["pending"] == pending
        assert state["models"][broken]["updates"] == 0
    finally:
        _remove(client, admin_headers, broken)


def test_stream_error_before_the_first_token_falls_back(client, admin_headers, svc) -> None:
    bad = "acme/stream-5xx"
    _add(client, admin_headers, bad, {"error_rate": 1.0})
    try:
        body = {"messages": [{"role": "user", "content": "stream fallback"}], "stream": True}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        events = svc.sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        models = {c["model"] for c in chunks}
        assert len(models) == 1 and models <= CONFIGURED
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert chunks[-1]["paretoserve"]["fallback_from"] == [bad]
    finally:
        _remove(client, admin_headers, bad)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"simulation": {"error_rate": 1.5}}, "simulation.error_rate"),
        ({"simulation": {"reward_scale": -0.1}}, "simulation.reward_scale"),
        ({"simulation": {"reward_scale": "0.5"}}, "simulation.reward_scale"),
        ({"simulation": {"bogus": 1}}, "simulation.bogus"),
        ({"simulation": {"error_rate": 0.6, "rate_limit_rate": 0.6}}, "simulation"),
        ({"input_per_m": 9.0, "simulation": {"timeout_rate": 2}}, "simulation.timeout_rate"),
        ({"input_per_m": 9.0, "simulation": []}, "simulation"),
    ],
)
def test_patch_simulation_validation_is_422_and_changes_nothing(
    client, admin_headers, openai_error, body, field
) -> None:
    before = client.get("/admin/models", headers=admin_headers).json()
    r = client.patch(f"/admin/models/{MID}", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert openai_error(r)["param"] == field
    assert client.get("/admin/models", headers=admin_headers).json() == before


def test_patch_reward_scale_shows_in_recorded_reward(client, admin_headers) -> None:
    prompt = "Explain recursion in one line."
    base = _ok(_chat(client, prompt, model=MID))["paretoserve"]["recorded_reward"]
    assert base > 0
    r = client.patch(
        f"/admin/models/{MID}",
        json={"simulation": {"reward_scale": 0.5}},
        headers=admin_headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["change"]["kind"] == "simulate"
    try:
        listed = {m["id"]: m for m in client.get("/admin/models", headers=admin_headers).json()}
        assert listed[MID]["simulation"]["reward_scale"] == 0.5
        assert listed[MID]["input_per_m"] == 0.5  # prices untouched
        for _ in range(4):  # every request, whichever provider replica answers it
            scaled = _ok(_chat(client, prompt, model=MID))["paretoserve"]["recorded_reward"]
            assert scaled == pytest.approx(base * 0.5, abs=1e-12)
    finally:
        r = client.patch(f"/admin/models/{MID}", json={"simulation": None}, headers=admin_headers)
        assert r.status_code == 200, r.text
    restored = _ok(_chat(client, prompt, model=MID))["paretoserve"]["recorded_reward"]
    assert restored == base
