"""Client API keys (PARETOSERVE_API_KEYS) on the real service (`serve run`): the chat, feedback
and models endpoints need one of the keys, health does not, the admin API takes only the admin
key, and no key ever shows up in the service's logs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loadtest.server import base_config, serve_app

pytestmark = pytest.mark.ray

KEYS = ["client-key-a-7Hq2", "client-key-b-Zp91"]
WRONG = "client-key-wrong-Xx00"


@pytest.fixture(scope="module")
def served(tmp_path_factory, svc):
    workdir = tmp_path_factory.mktemp("keys")
    args = base_config()["applications"][0]["args"]
    args["state_path"] = str(workdir / "state.db")
    args["providers"]["simulated"]["options"]["time_scale"] = 0
    with svc.env_set(PARETOSERVE_API_KEYS=",".join(KEYS)), serve_app(args, workdir) as app:
        yield app


def _chat(app, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    return httpx.post(
        f"{app.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
    )


def test_client_endpoints_need_one_of_the_keys(served) -> None:
    for key in (None, WRONG, served.admin_key):
        r = _chat(served, key)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "authentication_error"
    for key in KEYS:
        r = _chat(served, key)
        assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    fb = {"request_id": rid, "reward": 0.5}
    assert httpx.post(f"{served.base_url}/v1/feedback", json=fb).status_code == 401
    ok = httpx.post(
        f"{served.base_url}/v1/feedback", json=fb, headers={"authorization": f"Bearer {KEYS[0]}"}
    )
    assert ok.status_code == 200 and ok.json()["status"] == "applied", ok.text
    assert httpx.get(f"{served.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{served.base_url}/healthz").status_code == 200


def test_admin_takes_only_the_admin_key(served) -> None:
    url = f"{served.base_url}/admin/state"
    assert httpx.get(url, headers={"authorization": f"Bearer {KEYS[0]}"}).status_code == 401
    r = httpx.get(url, headers={"authorization": f"Bearer {served.admin_key}"})
    assert r.status_code == 200, r.text


def test_no_key_appears_in_any_log(served) -> None:
    _chat(served, WRONG)  # a rejected key is not logged either
    logs = [
        served.log_path,
        *Path(served.ray_dir).rglob("*.log"),
        *Path(served.ray_dir).rglob("*.err"),
        *Path(served.ray_dir).rglob("*.out"),
    ]
    secrets = [*KEYS, WRONG, served.admin_key]
    seen = 0
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        seen += 1
        for secret in secrets:
            assert secret not in text, f"a key appears in {path}"
    assert seen > 5  # the service's own log and Ray's session logs were read
