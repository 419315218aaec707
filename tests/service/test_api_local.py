"""The HTTP API of DESIGN.md against the real app on a local Ray (one app for the module).

The app is graphs.app:build_app with serve_config.yaml's args, except: state in a temp dir,
max_prompt_chars=2000, and simulated answers that are instant for every model but one slow
streamer (see _simulated_options). Serve's proxy listens on a free port; `_local_testing_mode`
has no HTTP proxy, so it cannot serve a FastAPI ingress over HTTP (see conftest). Tests run in
file order and share the app: the ones that change admin state (budget, registry) restore it
before they return.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.ray

MAX_PROMPT_CHARS = 2000
CHEAP = "meta-llama/llama-3.1-8b-instruct"
MID = "mistralai/mistral-large-2512"
DEAR = "google/gemini-2.5-pro"
SLOW_STREAM = "acme/slow-stream"  # added at runtime by the abandoned-stream test only


def _simulated_options() -> dict[str, Any]:
    """Answers in real time (time_scale 1) but effectively instant (no time to first token,
    a million tokens per second), except SLOW_STREAM, which streams at 40 tokens per second."""
    quality = {"fast": 0.78, "balanced": 0.88, "slow": 0.92}
    return {
        "seed": 0,
        "time_scale": 1.0,
        "speed_profiles": {
            k: {"ttft_s": 0.0, "tokens_per_s": 1e6, "quality": q} for k, q in quality.items()
        },
        "profiles": {SLOW_STREAM: {"tokens_per_s": 40.0, "mean_completion_tokens": 400.0}},
    }


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, make_app_args, local_app):
    providers = {"simulated": {"kind": "simulated", "options": _simulated_options()}}
    args = make_app_args(
        tmp_path_factory.mktemp("api-state"),
        max_prompt_chars=MAX_PROMPT_CHARS,
        providers=providers,
    )
    with local_app(args) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def _messages(text: str = "What is the capital of France?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("messages", _messages())
    return client.post("/v1/chat/completions", json=body)


def _ok_chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = _chat(client, **body)
    assert r.status_code == 200, r.text
    return r.json()


def _state(client: httpx.Client, admin_headers: dict[str, str]) -> dict[str, Any]:
    r = client.get("/admin/state", headers=admin_headers)
    assert r.status_code == 200, r.text
    return r.json()


def _active(state: dict[str, Any]) -> set[str]:
    """The active models of /admin/state (removed ones stay listed, inactive)."""
    return {m for m, arm in state["models"].items() if arm["active"]}


def _expected_cost(body: dict[str, Any], spec: dict[str, Any]) -> float:
    usage = body["usage"]
    return (
        usage["prompt_tokens"] * spec["input_per_m"]
        + usage["completion_tokens"] * spec["output_per_m"]
    ) / 1e6


# ---- a fresh start (first in the file: nothing has been fed back yet) -----------------------


def test_fresh_app_starts_warm_from_the_default_priors(client, admin_headers) -> None:
    """serve_config.yaml's `priors_path: default`: before any feedback, every model's estimated
    quality is the committed priors' (core/artifacts/priors.json), not a cold 0.0."""
    state = _state(client, admin_headers)
    assert {m: arm["updates"] for m, arm in state["models"].items()} == dict.fromkeys(
        (CHEAP, MID, DEAR), 0
    )
    r = client.post("/admin/explain", json={"prompt": "What is 17 * 23?"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    quality = {m: e["quality"] for m, e in r.json().items()}
    assert set(quality) == {CHEAP, MID, DEAR}
    assert all(0.3 < q < 1.2 for q in quality.values()), quality


# ---- chat -----------------------------------------------------------------------------------


def test_chat_auto_is_openai_shaped_and_priced(client, config_models) -> None:
    r = _chat(client, model="auto")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    info = body["paretoserve"]
    rid = info["request_id"]
    assert 0 < len(rid) <= 200  # Serve's request id (a UUID unless the client sent one)
    assert body["id"] == f"chatcmpl-{rid}"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["created"] > 0
    assert body["model"] in config_models
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith(f"[simulated {body['model']}]")
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert info["routed"] is True
    assert isinstance(info["forced"], bool) and math.isfinite(info["dual"])
    # Realised cost = usage x the answering model's list prices; the header carries it too.
    cost = info["cost_usd"]
    assert cost > 0
    assert cost == pytest.approx(_expected_cost(body, config_models[body["model"]]), rel=1e-12)
    assert float(r.headers["x-paretoserve-cost-usd"]) == pytest.approx(cost, rel=1e-9)
    assert rid in r.headers.get_list("x-request-id")


def test_chat_has_exactly_one_x_request_id_header(client) -> None:
    r = _chat(client, model="auto")
    assert r.status_code == 200, r.text
    assert r.headers.get_list("x-request-id") == [r.json()["paretoserve"]["request_id"]]


@pytest.mark.parametrize("model", [CHEAP, MID, DEAR])
def test_explicit_model_bypasses_the_bandit(client, admin_headers, config_models, model) -> None:
    before = _state(client, admin_headers)["models"][model]["pulls"]
    body = _ok_chat(client, model=model)
    assert body["model"] == model
    assert body["choices"][0]["message"]["content"].startswith(f"[simulated {model}]")
    assert body["paretoserve"]["routed"] is False
    assert body["paretoserve"]["forced"] is False
    assert body["paretoserve"]["cost_usd"] == pytest.approx(
        _expected_cost(body, config_models[model]), rel=1e-12
    )
    # The decision is recorded against that model (and feedback can refer to it).
    assert _state(client, admin_headers)["models"][model]["pulls"] == before + 1


def test_allowed_models_limit_is_honoured(client) -> None:
    body = _ok_chat(client, model="auto", paretoserve={"allowed_models": [MID]})
    assert body["model"] == MID
    assert body["paretoserve"]["routed"] is True


def test_max_blended_price_limit_is_honoured(client, openai_error) -> None:
    body = _ok_chat(client, model="auto", paretoserve={"max_blended_per_m": 0.2})
    assert body["model"] == CHEAP  # the only model at or below US$0.2/M blended
    r = _chat(client, model="auto", paretoserve={"max_blended_per_m": 0.01})
    assert r.status_code == 400, r.text
    err = openai_error(r)
    assert err["code"] == "no_eligible_model"
    assert "max_blended_per_m" in err["message"]


@pytest.mark.parametrize(
    "limits", [{"allowed_models": [CHEAP]}, {"max_blended_per_m": 0.2}], ids=["allowed", "price"]
)
def test_explicit_model_outside_the_request_limits_is_rejected(client, limits) -> None:
    r = _chat(client, model=DEAR, paretoserve=limits)
    assert r.status_code == 400, r.json().get("model")


def test_unknown_model_is_404_naming_it(client, openai_error) -> None:
    r = _chat(client, model="acme/does-not-exist")
    assert r.status_code == 404, r.text
    err = openai_error(r)
    assert err["param"] == "model"
    assert err["code"] == "model_not_found"
    assert "acme/does-not-exist" in err["message"]


def test_malformed_json_is_422(client, openai_error) -> None:
    r = client.post(
        "/v1/chat/completions",
        content=b'{"model": "auto", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "JSON" in openai_error(r)["message"]


def test_malformed_json_error_names_no_field(client, openai_error) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{bad", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert openai_error(r)["param"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "auto", "messages": []}, "messages"),
        ({"model": "auto"}, "messages"),
        ({"model": "auto", "messages": [{"role": "user", "content": "   \n"}]}, "messages"),
        ({"model": "auto", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "auto", "messages": _messages(), "temperature": "hot"}, "temperature"),
        ({"model": "auto", "messages": _messages(), "temperature": 2.5}, "temperature"),
        ({"model": "auto", "messages": _messages(), "stream": "yes"}, "stream"),
        ({"model": "auto", "messages": _messages(), "max_tokens": 0}, "max_tokens"),
        ({"model": 7, "messages": _messages()}, "model"),
        (
            {"model": "auto", "messages": _messages(), "paretoserve": {"max_price": 1.0}},
            "paretoserve.max_price",
        ),
    ],
)
def test_bad_chat_bodies_are_422_naming_the_field(client, openai_error, body, field) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    err = openai_error(r)
    assert err["param"] == field
    assert field in err["message"]


def test_prompt_over_the_limit_is_413_and_at_the_limit_is_served(client, openai_error) -> None:
    r = _chat(client, messages=_messages("x" * (MAX_PROMPT_CHARS + 1)))
    assert r.status_code == 413, r.text
    err = openai_error(r)
    assert err["param"] == "messages" and err["code"] == "prompt_too_long"
    assert str(MAX_PROMPT_CHARS) in err["message"]
    assert _chat(client, messages=_messages("y" * MAX_PROMPT_CHARS)).status_code == 200


def test_prompt_limit_counts_every_message(client) -> None:
    messages = [
        {"role": "system", "content": "s" * (MAX_PROMPT_CHARS + 1)},
        {"role": "user", "content": "hi"},
    ]
    assert _chat(client, messages=messages).status_code == 413


def test_stream_sends_sse_chunks_then_done(client, admin_headers, svc, config_models) -> None:
    r = _chat(client, model="auto", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = svc.sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert r.text.endswith("data: [DONE]\n\n")
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3  # role, at least one piece of content, the final chunk
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and len({c["model"] for c in chunks}) == 1
    model = chunks[0]["model"]
    assert model in config_models
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content.startswith(f"[simulated {model}]") and len(content) > len(model) + 12
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    info = final["paretoserve"]
    rid = info["request_id"]
    assert final["id"] == f"chatcmpl-{rid}"
    assert rid in r.headers.get_list("x-request-id")
    assert info["routed"] is True
    usage = final["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert info["cost_usd"] > 0
    assert info["cost_usd"] == pytest.approx(_expected_cost(final, config_models[model]), rel=1e-12)
    # The streamed request was recorded and charged: its feedback is accepted.
    fb = client.post("/v1/feedback", json={"request_id": rid, "reward": 0.5})
    assert fb.status_code == 200 and fb.json()["status"] == "applied"


def test_abandoned_stream_is_still_charged(client, admin_headers, svc) -> None:
    spec = {"id": SLOW_STREAM, "provider": "simulated", "input_per_m": 1.0, "output_per_m": 2.0}
    assert client.post("/admin/models", json=spec, headers=admin_headers).status_code == 201
    try:
        charges = _state(client, admin_headers)["charges"]
        body = {"model": SLOW_STREAM, "stream": True, "messages": _messages("a long essay")}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk; then hang up
        # At 40 tokens/s the full stream takes ~10 s; allow for it to run to its end.
        # Generous: on a loaded 2-core machine the detached charge can take a while to land.
        svc.wait_until(lambda: _state(client, admin_headers)["charges"] > charges, 60, "a charge")
    finally:
        client.delete(f"/admin/models/{SLOW_STREAM}", headers=admin_headers)


# ---- feedback -------------------------------------------------------------------------------


def test_feedback_applied_once_then_duplicate(client, admin_headers) -> None:
    body = _ok_chat(client, model="auto")
    rid, model = body["paretoserve"]["request_id"], body["model"]
    before = _state(client, admin_headers)["models"]
    r = client.post("/v1/feedback", json={"request_id": rid, "reward": 0.75})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "applied", "request_id": rid}
    again = client.post("/v1/feedback", json={"request_id": rid, "reward": 0.1})
    assert again.status_code == 200, again.text
    assert again.json() == {"status": "duplicate", "request_id": rid}
    after = _state(client, admin_headers)["models"]
    assert after[model]["updates"] == before[model]["updates"] + 1
    for other in set(after) - {model}:
        assert after[other]["updates"] == before[other]["updates"]


def test_feedback_accepts_integer_rewards(client) -> None:
    for reward in (0, 1):
        rid = _ok_chat(client)["paretoserve"]["request_id"]
        r = client.post("/v1/feedback", json={"request_id": rid, "reward": reward})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text


def test_feedback_for_an_unknown_id_is_404(client, openai_error) -> None:
    r = client.post("/v1/feedback", json={"request_id": "0" * 32, "reward": 0.5})
    assert r.status_code == 404, r.text
    err = openai_error(r)
    assert err["param"] == "request_id"
    assert "0" * 32 in err["message"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"request_id": "%s", "reward": 1.5}', "reward"),
        ('{"request_id": "%s", "reward": -0.01}', "reward"),
        ('{"request_id": "%s", "reward": NaN}', "reward"),
        ('{"request_id": "%s", "reward": Infinity}', "reward"),
        ('{"request_id": "%s", "reward": "x"}', "reward"),
        ('{"request_id": "%s", "reward": true}', "reward"),
        ('{"request_id": "%s"}', "reward"),
        ('{"request_id": "%s", "reward": 0.5, "rewrd": 0.5}', "rewrd"),
    ],
)
def test_bad_feedback_is_422_and_changes_nothing(
    client, admin_headers, openai_error, raw, field
) -> None:
    body = _ok_chat(client)
    rid, model = body["paretoserve"]["request_id"], body["model"]
    updates = _state(client, admin_headers)["models"][model]["updates"]
    r = client.post(
        "/v1/feedback", content=(raw % rid).encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert openai_error(r)["param"] == field
    assert _state(client, admin_headers)["models"][model]["updates"] == updates
    # The rejected feedback did not consume the request id.
    ok = client.post("/v1/feedback", json={"request_id": rid, "reward": 0.25})
    assert ok.status_code == 200 and ok.json()["status"] == "applied", ok.text


# ---- models, health, OpenAPI ----------------------------------------------------------------


def test_models_lists_the_registry_plus_auto(client, config_models) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [*config_models, "auto"]
    assert all(m["object"] == "model" for m in body["data"])
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    assert owners["auto"] == "paretoserve"
    assert all(owners[m] == "simulated" for m in config_models)


def test_healthz(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nope"), ("GET", "/v1/feedback")])
def test_unknown_routes_answer_openai_errors(client, openai_error, method, path) -> None:
    r = client.request(method, path)
    assert r.status_code in (404, 405)
    openai_error(r)


def test_openapi_document_is_served(client) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "paretoserve"
    for path in (
        "/v1/chat/completions",
        "/v1/feedback",
        "/v1/models",
        "/healthz",
        "/admin/models",
        "/admin/models/{model_id}",
        "/admin/state",
        "/admin/budget",
    ):
        assert path in doc["paths"], sorted(doc["paths"])


# ---- admin ----------------------------------------------------------------------------------

_ADMIN_CALLS = [
    ("GET", "/admin/state", None),
    ("GET", "/admin/models", None),
    ("PUT", "/admin/budget", {"usd_per_request": 0.5}),
    (
        "POST",
        "/admin/models",
        {
            "id": "auth/should-not-exist",
            "provider": "simulated",
            "input_per_m": 1,
            "output_per_m": 1,
        },
    ),
    ("PATCH", f"/admin/models/{MID}", {"input_per_m": 9.0}),
    ("DELETE", f"/admin/models/{CHEAP}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), _ADMIN_CALLS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", "Bearer", "Basic {key}", "{key}", "Bearer {key}x"],
    ids=["no-key", "wrong-key", "empty-key", "wrong-scheme", "no-scheme", "key-prefix"],
)
def test_admin_without_the_key_is_401(
    client, openai_error, svc, method, path, body, authorization
) -> None:
    headers = (
        {} if authorization is None else {"authorization": authorization.format(key=svc.admin_key)}
    )
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert openai_error(r)["type"] == "authentication_error"


def test_admin_state_after_rejected_calls_is_unchanged(client, admin_headers, config_models):
    """Runs after the 401 tests: none of them changed anything."""
    state = _state(client, admin_headers)
    assert state["budget_usd_per_request"] == pytest.approx(0.000664)
    assert _active(state) == set(config_models)
    assert state["models"][MID]["blended_usd_per_m"] == pytest.approx((0.5 + 1.5) / 2)
    r = client.get("/admin/models", headers=admin_headers)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()] == list(config_models)


def test_admin_state_reports_pacer_and_arms(client, admin_headers, config_models) -> None:
    state = _state(client, admin_headers)
    assert state["budget_usd_per_request"] == pytest.approx(0.000664)
    assert math.isfinite(state["dual"]) and state["dual"] >= 0
    assert math.isfinite(state["spend_ema_usd"]) and state["spend_ema_usd"] > 0
    assert state["t"] > 0 and state["charges"] > 0 and state["total_spend_usd"] > 0
    assert _active(state) == set(config_models)
    for model, spec in config_models.items():
        arm = state["models"][model]
        assert arm["active"] is True
        assert isinstance(arm["pulls"], int) and arm["pulls"] >= 1  # each was asked explicitly
        assert isinstance(arm["updates"], int) and arm["updates"] >= 0
        assert arm["forced_pulls_left"] == 0  # configured models start without forced pulls
        assert arm["blended_usd_per_m"] == pytest.approx(
            (spec["input_per_m"] + spec["output_per_m"]) / 2
        )
    assert sum(a["pulls"] for a in state["models"].values()) == state["t"]


def test_admin_budget_put_changes_it_and_bad_values_change_nothing(
    client, admin_headers, openai_error
) -> None:
    original = _state(client, admin_headers)["budget_usd_per_request"]
    try:
        r = client.put("/admin/budget", json={"usd_per_request": 0.002}, headers=admin_headers)
        assert r.status_code == 200, r.text
        assert r.json()["budget_usd_per_request"] == pytest.approx(0.002)
        assert _state(client, admin_headers)["budget_usd_per_request"] == pytest.approx(0.002)
        for bad in (-0.001, 0, "cheap", None, 1e308, 100.5):
            r = client.put("/admin/budget", json={"usd_per_request": bad}, headers=admin_headers)
            assert r.status_code == 422, (bad, r.text)
            assert openai_error(r)["param"] == "usd_per_request"
        # Outside the documented range [1e-9, 100]: refused at the boundary, naming the field;
        # NaN / Infinity literals and 1e309 (read as inf) too.
        r = client.put("/admin/budget", json={"usd_per_request": 1e308}, headers=admin_headers)
        assert "usd_per_request" in openai_error(r)["message"] and "100" in r.text, r.text
        for literal in ("NaN", "Infinity", "1e309"):
            r = client.put(
                "/admin/budget",
                content=f'{{"usd_per_request": {literal}}}'.encode(),
                headers={**admin_headers, "content-type": "application/json"},
            )
            assert r.status_code == 422, (literal, r.text)
            assert openai_error(r)["param"] == "usd_per_request", literal
        r = client.put("/admin/budget", json={"budget": 0.001}, headers=admin_headers)
        assert r.status_code == 422, r.text
        assert _state(client, admin_headers)["budget_usd_per_request"] == pytest.approx(0.002)
    finally:
        client.put("/admin/budget", json={"usd_per_request": original}, headers=admin_headers)
    assert _state(client, admin_headers)["budget_usd_per_request"] == pytest.approx(original)


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ({"input_per_m": 0, "output_per_m": 1}, {"input_per_m"}),
        ({"input_per_m": 1, "output_per_m": 0}, {"output_per_m"}),
        ({"input_per_m": -1, "output_per_m": 1}, {"input_per_m"}),
        ({"input_per_m": 1, "output_per_m": float("inf")}, {"output_per_m"}),
        ({"input_per_m": 1e308, "output_per_m": 1}, {"input_per_m"}),
        ({"input_per_m": 1, "output_per_m": 1, "context_length": 10**12}, {"context_length"}),
        (
            {"input_per_m": 1, "output_per_m": 1, "simulation": {"timeout_s": 1e308}},
            {"simulation.timeout_s"},
        ),
        ({"id": None, "input_per_m": 1, "output_per_m": 1}, {"id"}),
        ({"input_per_m": 1, "output_per_million": 1}, {"output_per_m", "output_per_million"}),
    ],
    ids=[
        "input-0",
        "output-0",
        "input-negative",
        "output-inf",
        "input-huge",
        "context-huge",
        "sim-wait-huge",
        "no-id",
        "typo",
    ],
)
def test_admin_add_with_bad_spec_is_422_and_changes_nothing(
    client, admin_headers, openai_error, config_models, spec, fields
) -> None:
    version = _state(client, admin_headers)["registry_version"]
    body = {"id": "acme/bad", "provider": "simulated", **spec}
    body = {k: v for k, v in body.items() if v is not None}
    content = json.dumps(body).encode()  # json.dumps writes inf as Infinity
    r = client.post(
        "/admin/models",
        content=content,
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert openai_error(r)["param"] in fields
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [*config_models, "auto"]
    state = _state(client, admin_headers)
    assert state["registry_version"] == version
    assert _active(state) == set(config_models)


def test_admin_add_with_an_unconfigured_provider_is_rejected(
    client, admin_headers, openai_error, config_models
) -> None:
    version = _state(client, admin_headers)["registry_version"]
    spec = {"id": "acme/elsewhere", "provider": "nope", "input_per_m": 1, "output_per_m": 1}
    r = client.post("/admin/models", json=spec, headers=admin_headers)
    assert 400 <= r.status_code < 500, r.text
    assert "'nope'" in openai_error(r)["message"]
    assert _state(client, admin_headers)["registry_version"] == version
    assert _active(_state(client, admin_headers)) == set(config_models)


def test_admin_add_with_an_unconfigured_provider_is_422_naming_provider(
    client, admin_headers, openai_error
) -> None:
    spec = {"id": "acme/elsewhere", "provider": "nope", "input_per_m": 1, "output_per_m": 1}
    r = client.post("/admin/models", json=spec, headers=admin_headers)
    assert r.status_code == 422
    assert openai_error(r)["param"] == "provider"


def test_admin_checks_the_key_before_the_body(client) -> None:
    assert client.put("/admin/budget", json={"usd_per_request": "x"}).status_code == 401


def test_admin_patch_and_delete_of_unknown_models_are_404(client, admin_headers, openai_error):
    version = _state(client, admin_headers)["registry_version"]
    r = client.patch("/admin/models/acme/ghost", json={"input_per_m": 1.0}, headers=admin_headers)
    assert r.status_code == 404, r.text
    assert "acme/ghost" in openai_error(r)["message"]
    r = client.delete("/admin/models/acme/ghost", headers=admin_headers)
    assert r.status_code == 404, r.text
    assert "acme/ghost" in openai_error(r)["message"]
    for bad in ({}, {"input_per_m": 0}, {"input_per_m": "1"}, {"price": 1.0}):
        r = client.patch(f"/admin/models/{MID}", json=bad, headers=admin_headers)
        assert r.status_code == 422, (bad, r.text)
    assert _state(client, admin_headers)["registry_version"] == version


def test_admin_model_lifecycle(client, admin_headers, openai_error, config_models) -> None:
    """Add -> routable by id -> a second add conflicts -> re-price -> remove -> 404 by id."""
    new = {
        "id": "acme/local-extra",
        "provider": "simulated",
        "input_per_m": 0.2,
        "output_per_m": 0.4,
    }
    try:
        r = client.post("/admin/models", json=new, headers=admin_headers)
        assert r.status_code == 201, r.text
        assert r.json()["change"]["kind"] == "add"
        assert r.json()["change"]["model_id"] == new["id"]
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == [*config_models, new["id"], "auto"]
        arm = _state(client, admin_headers)["models"][new["id"]]
        assert arm["active"] is True and arm["forced_pulls_left"] == 20
        assert arm["blended_usd_per_m"] == pytest.approx(0.3)
        body = _ok_chat(client, model=new["id"])
        assert body["model"] == new["id"] and body["paretoserve"]["routed"] is False
        assert body["paretoserve"]["cost_usd"] == pytest.approx(_expected_cost(body, new))
        again = client.post("/admin/models", json=new, headers=admin_headers)
        assert again.status_code == 409, again.text
        r = client.patch(
            f"/admin/models/{new['id']}", json={"output_per_m": 0.8}, headers=admin_headers
        )
        assert r.status_code == 200, r.text
        arm = _state(client, admin_headers)["models"][new["id"]]
        assert arm["blended_usd_per_m"] == pytest.approx(0.5)
        listed = {m["id"]: m for m in client.get("/admin/models", headers=admin_headers).json()}
        assert listed[new["id"]]["output_per_m"] == pytest.approx(0.8)
        body = _ok_chat(client, model=new["id"])
        assert body["paretoserve"]["cost_usd"] == pytest.approx(
            _expected_cost(body, {**new, "output_per_m": 0.8})
        )
    finally:
        r = client.delete(f"/admin/models/{new['id']}", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["change"]["kind"] == "remove"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [*config_models, "auto"]
    assert _state(client, admin_headers)["models"][new["id"]]["active"] is False
    gone = _chat(client, model=new["id"])
    assert gone.status_code == 404, gone.text
    assert new["id"] in openai_error(gone)["message"]


def test_admin_explain_weighs_every_model_without_routing(client, admin_headers) -> None:
    t_before = _state(client, admin_headers)["t"]
    body = {"prompt": "Is 91 a prime number?", "paretoserve": {"max_blended_per_m": 1.0}}
    r = client.post("/admin/explain", json=body, headers=admin_headers)
    assert r.status_code == 200, r.text
    explain = r.json()
    assert {"quality", "bonus", "cost_penalty", "score", "eligible"} <= set(
        next(iter(explain.values()))
    )
    # gemini-pro's blended price (5.625 $/M) is above the caller's 1.0 limit, and says so.
    pro = explain["google/gemini-2.5-pro"]
    assert pro["eligible"] is False and "max_blended_per_m" in pro["reason"]
    assert explain["meta-llama/llama-3.1-8b-instruct"]["eligible"] is True
    assert _state(client, admin_headers)["t"] == t_before  # explaining routes nothing
    assert client.post("/admin/explain", json=body).status_code == 401
    assert (
        client.post("/admin/explain", json={"prompt": ""}, headers=admin_headers).status_code == 422
    )
