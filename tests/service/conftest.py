"""Fixtures of the service tests: the real app on a real local Ray (no mocks of our code).

Every test here starts Ray (they carry `pytest.mark.ray`). Environment for every Ray/Serve
process the tests start: HF_HUB_OFFLINE=1 (MiniLM comes from a package, nothing is downloaded),
RAY_USAGE_STATS_ENABLED=0, and RAY_AUTH_MODE=disabled unless the environment sets it (with a
token in ~/.ray, Ray would otherwise switch token auth on for the local test clusters).

`_local_testing_mode` is not used: it runs deployments in-process behind handles and starts no
HTTP proxy, so a FastAPI ingress cannot be reached over HTTP there. The tests use a real local
Ray instance with Serve's proxy on a free port instead.

Helpers are handed out as fixtures (`svc`, `make_app_args`, `local_app`): a module cannot
import this conftest reliably, as tests/conftest.py has the same module name.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from core.net import free_port  # the same helpers the load tools and benchmarks use
from loadtest.server import fast_path_ports, kill_ray_dir, ray_env

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY_ENV = "PARETOSERVE_ADMIN_KEY"
ADMIN_KEY = "svc-test-admin-key-3f9c"

RAY_ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
for _k, _v in RAY_ENV.items():
    os.environ[_k] = _v
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# ---- small helpers ------------------------------------------------------------------------


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; its exceptions count as 'not yet'."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last})")


def wait_healthy(base_url: str, timeout_s: float = 240.0, alive: Callable[[], bool] | None = None):
    """/healthz answers 200, then one chat succeeds (the Embedder has loaded MiniLM)."""

    def healthy() -> bool:
        if alive is not None and not alive():
            raise RuntimeError("the service process exited")
        return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200

    wait_until(healthy, timeout_s, f"{base_url}/healthz")
    body = {"model": "auto", "messages": [{"role": "user", "content": "warm-up"}]}

    def chat_ok() -> bool:
        if alive is not None and not alive():
            raise RuntimeError("the service process exited")
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
        return r.status_code == 200

    wait_until(chat_ok, timeout_s, "a first chat completion", every_s=1.0)


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("data:")]
        if lines:
            events.append("\n".join(ln[len("data:") :].strip() for ln in lines))
    return events


@contextlib.contextmanager
def env_set(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- configuration ------------------------------------------------------------------------


def load_service_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())


@pytest.fixture(scope="session")
def service_config() -> dict[str, Any]:
    """The repo's serve_config.yaml, parsed (a fresh copy for each caller to edit)."""
    return load_service_config()


@pytest.fixture(scope="session")
def config_models(service_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Model id -> spec, as configured in serve_config.yaml."""
    return {m["id"]: m for m in service_config["applications"][0]["args"]["models"]}


@pytest.fixture(scope="session")
def make_app_args(service_config: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """`args` of graphs.app:build_app from serve_config.yaml: state under `state_dir`
    (absolute), simulated answers instant (time_scale 0), the Judge off, then `overrides`
    (top-level keys)."""

    def make(state_dir: Path, **overrides: Any) -> dict[str, Any]:
        args = copy.deepcopy(service_config["applications"][0]["args"])
        args["state_path"] = str(Path(state_dir).resolve() / "paretoserve.db")
        args["providers"]["simulated"]["options"]["time_scale"] = 0
        # The Judge posts feedback of its own; tests that count feedback turn it on themselves.
        args["judge"] = {**args.get("judge", {}), "enabled": False}
        args.update(overrides)
        return args

    return make


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def svc() -> SimpleNamespace:
    """Helper functions for the test modules."""
    return SimpleNamespace(
        free_port=free_port,
        wait_until=wait_until,
        wait_healthy=wait_healthy,
        sse_events=sse_events,
        kill_ray_dir=kill_ray_dir,
        env_set=env_set,
        load_service_config=load_service_config,
        repo=REPO,
        admin_key=ADMIN_KEY,
        admin_key_env=ADMIN_KEY_ENV,
        ray_env=ray_env,
    )


# ---- the app on a local Ray, in this process -----------------------------------------------


@contextlib.contextmanager
def _local_app(args: dict[str, Any], num_cpus: int = 8) -> Iterator[str]:
    """Start a fresh local Ray (never an existing cluster), Serve's proxy on a free port and
    the app built by graphs.app:build_app(args); yield the base URL; always tear down."""
    import ray
    from ray import serve

    from graphs.app import build_app

    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    # Replicas inherit the raylet's environment, which is this process's at ray.init.
    with env_set(**{ADMIN_KEY_ENV: ADMIN_KEY}, **fast_path_ports()):
        for attempt in range(2):
            try:
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                )
                break
            except Exception as exc:
                # Ray gives its raylet a fixed 30 s to register; an overloaded machine can
                # miss that once. Anything else, or a second miss, is a real failure.
                if attempt or "timed out during startup" not in str(exc):
                    raise
                ray.shutdown()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="paretoserve", route_prefix="/", blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url)
        yield base_url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def local_app() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with local_app(args) as base_url:` the app on a fresh local Ray in this process."""
    return _local_app


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error object of a response (asserts the shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    return err


@pytest.fixture(scope="session")
def openai_error() -> Callable[[httpx.Response], dict[str, Any]]:
    return error_of
