"""Tenants on the real service (local Ray, real HTTP, the openai and anthropic SDKs): the admin
API, keys shown once and revocable, requests paced and charged for the key's tenant, a capped
tenant refused with 429 and Retry-After once nothing fits, and tenants from serve_config."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

pytestmark = pytest.mark.ray

PROMPT = [{"role": "user", "content": "Name three primary colours."}]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, make_app_args, local_app):
    configured = [{"id": "from-config", "usd_per_request": 1e-3}]
    args = make_app_args(tmp_path_factory.mktemp("tenants-state"), tenants=configured)
    with local_app(args) as url:
        yield url


@pytest.fixture(scope="module")
def admin(base_url: str, admin_headers):
    with httpx.Client(base_url=base_url, timeout=60, headers=admin_headers) as c:
        yield c


def _key(admin: httpx.Client, tenant: str) -> dict:
    r = admin.post(f"/admin/tenants/{tenant}/keys")
    assert r.status_code == 201, r.text
    return r.json()


def test_admin_api_creates_reports_patches_and_deletes(admin, openai_error) -> None:
    r = admin.post("/admin/tenants", json={"id": "team-a", "usd_per_request": 5e-4})
    assert r.status_code == 201, r.text
    assert r.json()["spend_usd"] == 0.0 and r.json()["requests"] == 0
    assert admin.post("/admin/tenants", json={"id": "team-a"}).status_code == 409
    bad = admin.post("/admin/tenants", json={"id": "b", "hard_cap": True})
    assert bad.status_code == 422 and "hard_cap" in openai_error(bad)["message"]
    huge = admin.post("/admin/tenants", json={"id": "b", "budget_usd": 1e308})
    assert huge.status_code == 422 and openai_error(huge)["param"] is not None
    ids = {t["id"] for t in admin.get("/admin/tenants").json()}
    assert {"team-a", "from-config"} <= ids
    r = admin.patch("/admin/tenants/team-a", json={"budget_usd": 2.0, "period": "month"})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["usd_per_request"] == 5e-4 and t["budget_usd"] == 2.0 and t["period"] == "month"
    assert admin.patch("/admin/tenants/team-a", json={"colour": "red"}).status_code == 422
    assert admin.get("/admin/tenants/nobody").status_code == 404
    assert admin.delete("/admin/tenants/team-a").status_code == 200
    assert admin.get("/admin/tenants/team-a").status_code == 404


def test_requests_are_charged_to_the_keys_tenant(base_url, admin) -> None:
    assert admin.post("/admin/tenants", json={"id": "paying", "usd_per_request": 1e-3}).is_success
    key = _key(admin, "paying")
    assert key["api_key"].startswith("pst-") and key["key_id"]
    shown = admin.get("/admin/tenants/paying").json()
    assert [k["key_id"] for k in shown["keys"]] == [key["key_id"]]
    assert key["api_key"] not in str(shown)  # shown once, kept hashed

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key["api_key"])
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=PROMPT)
    cost = float(raw.headers["x-paretoserve-cost-usd"])
    claude = anthropic.Anthropic(base_url=base_url, api_key=key["api_key"])
    msg = claude.messages.with_raw_response.create(model="auto", max_tokens=64, messages=PROMPT)
    cost += float(msg.headers["x-paretoserve-cost-usd"])
    time.sleep(1.0)  # the charge lands just after the answer
    t = admin.get("/admin/tenants/paying").json()
    assert t["requests"] == 2
    assert t["spend_usd"] == pytest.approx(cost, rel=1e-9)
    assert t["dual"] is not None and t["target_usd_per_request"] == 1e-3
    # a key-less request is the service's, not the tenant's
    httpx.post(
        f"{base_url}/v1/chat/completions", json={"model": "auto", "messages": PROMPT}, timeout=60
    ).raise_for_status()
    assert admin.get("/admin/tenants/paying").json()["requests"] == 2

    r = admin.delete(f"/admin/tenants/paying/keys/{key['key_id']}")
    assert r.status_code == 200, r.text
    time.sleep(2.5)  # the Ingress remembers a key for 2 s
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="auto", messages=PROMPT)
    fake = openai.OpenAI(base_url=f"{base_url}/v1", api_key="pst-not-a-key")
    with pytest.raises(openai.AuthenticationError):
        fake.chat.completions.create(model="auto", messages=PROMPT)


def test_a_capped_tenant_degrades_then_gets_429_with_retry_after(base_url, admin) -> None:
    spec = {"id": "capped", "budget_usd": 2e-3, "period": "day", "hard_cap": True}
    assert admin.post("/admin/tenants", json=spec).is_success
    key = _key(admin, "capped")["api_key"]
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "auto", "messages": PROMPT, "max_tokens": 400}
    charged, refused = 0.0, None
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as c:
        for _ in range(400):
            r = c.post("/v1/chat/completions", json=body)
            if r.status_code == 429:
                refused = r
                break
            assert r.status_code == 200, r.text
            charged += float(r.headers["x-paretoserve-cost-usd"])
    assert refused is not None, "never refused"
    err = refused.json()["error"]
    assert err["code"] == "tenant_budget_exhausted" and "'capped'" in err["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    time.sleep(1.0)
    t = admin.get("/admin/tenants/capped").json()
    assert t["spend_usd"] == pytest.approx(charged, rel=1e-9)
    assert t["spend_usd"] <= 2e-3 and t["refused"] >= 1 and t["in_flight"] == 0
    # the service's own requests are not held back by the tenant's cap
    r = httpx.post(
        f"{base_url}/v1/chat/completions", json={"model": "auto", "messages": PROMPT}, timeout=60
    )
    assert r.status_code == 200, r.text
