"""End to end, as a user runs it: `serve run <config>` in a subprocess, then the official
`openai` SDK (chat, streaming), httpx for feedback and the admin API.

<config> is the repo's serve_config.yaml with three edits: a free HTTP port, state under a temp
dir, and instant simulated answers (time_scale 0). `serve run` starts its own local Ray cluster;
RAY_TMPDIR points it at a fresh temp dir, so it neither joins nor is confused with another
cluster on this machine. Teardown: SIGINT (serve run shuts Serve down and its driver stops the
cluster it started), SIGKILL after a grace period, then SIGKILL of any process still carrying
that RAY_TMPDIR, by PID. `ray stop --force` is not used: it kills every Ray process on the
machine, other tests' clusters included.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

pytestmark = pytest.mark.ray

CHEAP = "meta-llama/llama-3.1-8b-instruct"
MID = "mistralai/mistral-large-2512"
DEAR = "google/gemini-2.5-pro"
NEWCOMER = {
    "id": "acme/newcomer",
    "provider": "simulated",
    "input_per_m": 0.05,
    "output_per_m": 0.15,
    "context_length": 32000,
    "speed": "fast",
}
FORCED_PULLS = 20  # RouterTuning.forced_exploration_pulls (serve_config.yaml keeps the default)


@dataclass
class Served:
    base_url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _stop(proc: subprocess.Popen, ray_dir: str, svc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    # The cluster `serve run` started is ours alone (its own RAY_TMPDIR): kill what is left.
    svc.kill_ray_dir(ray_dir)


@pytest.fixture(scope="module")
def served(tmp_path_factory, svc):
    tmp = tmp_path_factory.mktemp("e2e")
    port = svc.free_port()
    cfg = svc.load_service_config()
    cfg["http_options"]["port"] = port
    app = cfg["applications"][0]
    app["args"]["state_path"] = str(tmp / "state" / "paretoserve.db")
    app["args"]["providers"]["simulated"]["options"]["time_scale"] = 0
    cfg_path = tmp / "serve_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    for attempt in range(2):
        s, ray_dir = _launch(cfg_path, port, tmp, svc)
        try:
            svc.wait_healthy(s.base_url, timeout_s=300, alive=lambda p=s.proc: p.poll() is None)
            break
        except (TimeoutError, RuntimeError) as exc:
            _stop(s.proc, ray_dir, svc)
            # Ray gives its raylet a fixed 30 s to register; an overloaded machine can miss
            # that once. Anything else, or a second miss, fails the tests.
            if attempt or "timed out during startup" not in s.log_tail(400):
                pytest.fail(f"`serve run` did not come up: {exc}\n{s.log_tail()}")
    try:
        assert (tmp / "state" / "paretoserve.db").exists()  # the config's state_path is used
        yield s
    finally:
        _stop(s.proc, ray_dir, svc)


def _launch(cfg_path: Path, port: int, tmp: Path, svc) -> tuple[Served, str]:
    """`serve run cfg_path` in its own session and Ray temp dir; (the service, that dir)."""
    ray_dir = tempfile.mkdtemp(prefix="psray-", dir="/tmp")  # short: Ray puts sockets here
    env = svc.ray_env(ray_dir) | {svc.admin_key_env: svc.admin_key}
    serve_bin = Path(sys.executable).parent / "serve"
    log_path = tmp / "serve_run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(serve_bin), "run", str(cfg_path)],
            cwd=svc.repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Served(f"http://127.0.0.1:{port}", proc, log_path), ray_dir


@pytest.fixture(scope="module")
def sdk(served: Served):
    client = openai.OpenAI(
        base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=60
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(served: Served):
    with httpx.Client(base_url=served.base_url, timeout=60) as c:
        yield c


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _state(http: httpx.Client, admin_headers) -> dict[str, Any]:
    r = http.get("/admin/state", headers=admin_headers)
    assert r.status_code == 200, r.text
    return r.json()


def _auto_chats(sdk: openai.OpenAI, n: int, tag: str) -> list[dict[str, Any]]:
    """n chats with model="auto": (answering model, the paretoserve info) of each."""
    out = []
    for i in range(n):
        c = sdk.chat.completions.create(
            model="auto", messages=_msgs(f"{tag} question {i}: how do tides work?")
        )
        out.append({"model": c.model, **c.model_extra["paretoserve"]})
    return out


def test_chat_auto_with_the_sdk(sdk, config_models) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=_msgs("Name three prime numbers.")
    )
    completion = raw.parse()
    info = completion.model_extra["paretoserve"]
    assert completion.model in config_models
    assert completion.object == "chat.completion"
    assert completion.id == f"chatcmpl-{info['request_id']}"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.startswith(f"[simulated {completion.model}]")
    assert completion.usage.total_tokens > 0
    assert info["routed"] is True and info["cost_usd"] > 0
    # The feedback key is the one x-request-id header; the cost header matches the body.
    assert raw.headers.get_list("x-request-id") == [info["request_id"]]
    assert float(raw.headers["x-paretoserve-cost-usd"]) == pytest.approx(info["cost_usd"])


def test_stream_with_the_sdk(sdk, config_models) -> None:
    stream = sdk.chat.completions.create(
        model="auto",
        messages=_msgs("Tell me a short story about a lighthouse."),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    model = chunks[0].model
    assert model in config_models and {c.model for c in chunks} == {model}
    assert content.startswith(f"[simulated {model}]") and len(content) > 40
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens > 0
    info = final.model_extra["paretoserve"]
    assert final.id == f"chatcmpl-{info['request_id']}"
    assert info["cost_usd"] > 0


def test_feedback_applied_then_duplicate(sdk, http) -> None:
    c = sdk.chat.completions.create(model="auto", messages=_msgs("Is 91 prime?"))
    rid = c.model_extra["paretoserve"]["request_id"]
    r = http.post("/v1/feedback", json={"request_id": rid, "reward": 0.9})
    assert r.status_code == 200 and r.json() == {"status": "applied", "request_id": rid}, r.text
    r = http.post("/v1/feedback", json={"request_id": rid, "reward": 0.9})
    assert r.status_code == 200 and r.json() == {"status": "duplicate", "request_id": rid}, r.text
    r = http.post("/v1/feedback", json={"request_id": "f" * 32, "reward": 0.9})
    assert r.status_code == 404, r.text


def test_admin_without_key_is_401(sdk, http) -> None:
    for headers in ({}, {"authorization": "Bearer not-the-key"}):
        assert http.get("/admin/state", headers=headers).status_code == 401
        r = http.post("/admin/models", json=NEWCOMER, headers=headers)
        assert r.status_code == 401, r.text
    assert NEWCOMER["id"] not in [m.id for m in sdk.models.list()]


def test_newcomer_is_explored_then_removed(sdk, http, admin_headers) -> None:
    """A model added at runtime gets its forced-exploration pulls from the next auto requests;
    after its removal no request is routed to it and asking for it by id is a 404.

    The budget is raised for the duration: forced exploration pauses while the pacer's spend
    EMA is over budget (core.method.router.Router.route), and the default budget sits below the
    expensive model's cost per request, which the first auto requests may have picked."""
    original_budget = _state(http, admin_headers)["budget_usd_per_request"]
    r = http.put("/admin/budget", json={"usd_per_request": 0.05}, headers=admin_headers)
    assert r.status_code == 200, r.text
    try:
        r = http.post("/admin/models", json=NEWCOMER, headers=admin_headers)
        assert r.status_code == 201, r.text
        assert r.json()["change"]["kind"] == "add"
        assert NEWCOMER["id"] in [m.id for m in sdk.models.list()]
        arm = _state(http, admin_headers)["models"][NEWCOMER["id"]]
        assert (arm["active"], arm["pulls"], arm["forced_pulls_left"]) == (True, 0, FORCED_PULLS)

        explored = _auto_chats(sdk, 30, "explore")
        by_model = Counter(c["model"] for c in explored)
        forced = [c for c in explored if c["forced"]]
        assert by_model[NEWCOMER["id"]] > 0, by_model
        assert all(c["model"] == NEWCOMER["id"] for c in forced)
        # Forced pulls come first and in a row: the newcomer answers the first 20 auto requests.
        assert len(forced) == FORCED_PULLS
        assert [c["forced"] for c in explored[:FORCED_PULLS]] == [True] * FORCED_PULLS
        arm = _state(http, admin_headers)["models"][NEWCOMER["id"]]
        assert arm["pulls"] == by_model[NEWCOMER["id"]]
        assert arm["forced_pulls_left"] == 0
        # Answers from the newcomer are charged at its prices.
        c = sdk.chat.completions.create(model=NEWCOMER["id"], messages=_msgs("direct"))
        expected = (
            c.usage.prompt_tokens * NEWCOMER["input_per_m"]
            + c.usage.completion_tokens * NEWCOMER["output_per_m"]
        ) / 1e6
        assert c.model_extra["paretoserve"]["cost_usd"] == pytest.approx(expected)
    finally:
        removed = http.delete(f"/admin/models/{NEWCOMER['id']}", headers=admin_headers)
        http.put("/admin/budget", json={"usd_per_request": original_budget}, headers=admin_headers)
    assert removed.status_code == 200, removed.text
    assert removed.json()["change"]["kind"] == "remove"
    assert NEWCOMER["id"] not in [m.id for m in sdk.models.list()]
    state = _state(http, admin_headers)
    assert state["models"][NEWCOMER["id"]]["active"] is False
    assert state["budget_usd_per_request"] == pytest.approx(original_budget)
    pulls = state["models"][NEWCOMER["id"]]["pulls"]

    after = _auto_chats(sdk, 30, "after-removal")
    assert NEWCOMER["id"] not in {c["model"] for c in after}
    assert _state(http, admin_headers)["models"][NEWCOMER["id"]]["pulls"] == pulls
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model=NEWCOMER["id"], messages=_msgs("still there?"))
    assert NEWCOMER["id"] in str(err.value)


def test_reprice_shows_in_state_and_in_charges(sdk, http, admin_headers, config_models):
    old = config_models[MID]
    try:
        r = http.patch(
            f"/admin/models/{MID}",
            json={"input_per_m": 0.25, "output_per_m": 0.75},
            headers=admin_headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["change"]["kind"] == "reprice"
        arm = _state(http, admin_headers)["models"][MID]
        assert arm["blended_usd_per_m"] == pytest.approx((0.25 + 0.75) / 2)
        listed = {m["id"]: m for m in http.get("/admin/models", headers=admin_headers).json()}
        assert (listed[MID]["input_per_m"], listed[MID]["output_per_m"]) == (0.25, 0.75)
        c = sdk.chat.completions.create(model=MID, messages=_msgs("re-priced?"))
        expected = (c.usage.prompt_tokens * 0.25 + c.usage.completion_tokens * 0.75) / 1e6
        assert c.model_extra["paretoserve"]["cost_usd"] == pytest.approx(expected)
    finally:
        r = http.patch(
            f"/admin/models/{MID}",
            json={"input_per_m": old["input_per_m"], "output_per_m": old["output_per_m"]},
            headers=admin_headers,
        )
    assert r.status_code == 200, r.text
    arm = _state(http, admin_headers)["models"][MID]
    assert arm["blended_usd_per_m"] == pytest.approx((old["input_per_m"] + old["output_per_m"]) / 2)
