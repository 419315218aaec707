"""A real Prometheus scrapes the running service (`serve run` on a fresh local Ray cluster,
loadtest/server.py) and PromQL over Prometheus's HTTP API returns what the service itself
reports: spend per model (the chats' x-paretoserve-cost-usd headers; the total is /admin/state's
`total_spend_usd`), requests per model, the budget; every query of the Grafana dashboard
docs/grafana/paretoserve.json runs; and, once the code defines the tenant metrics, each
tenant's spend and requests (`GET /admin/tenants/{id}`'s `spend_usd` and `requests`).

Prometheus finds Ray's metrics endpoints through the service-discovery file Ray's head node
writes into its session directory (`<temp dir>/ray/session_latest/
prom_metrics_service_discovery.json`: the metrics agent's export port on each node, plus the
dashboard's and the autoscaler's). Application metrics come out with the prefix `ray_`, a
counter with the suffix `_total` (tests/metric_names.py). Needs the `prometheus` binary
(Debian package `prometheus`; .ci/run installs it) and skips without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from metric_names import dashboard, dashboard_exprs

from core.net import free_port
from loadtest.server import REPO, ServedApp, base_config, serve_app

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
)
if PROMETHEUS is None:
    pytest.skip(
        "the prometheus binary is absent (Debian: apt-get install prometheus; .ci/run installs it)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.ray

SD_FILE = "prom_metrics_service_discovery.json"
# Ray's processes export their metrics to the node's agent every metrics_report_interval_ms
# (10 s by default, kept here: a shorter one also shortens how long the agent keeps a gauge),
# so a scraped counter trails the service by up to about 11 s.
REPORT_INTERVAL_S = 10.0
CONVERGE_S = 120.0
WINDOW = "10m"  # longer than the module runs


def _tenant_metrics_defined() -> bool:
    return any(
        "paretoserve_tenant_spend_usd" in p.read_text(encoding="utf-8")
        for p in (REPO / "deployments").rglob("*.py")
    )


# ---- Prometheus ---------------------------------------------------------------------------


def _wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (OSError, httpx.HTTPError) as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last})")


def _ray_service_discovery_file(app: ServedApp) -> Path:
    """The file Ray's head node keeps listing its metrics endpoints in."""
    session = Path(app.ray_dir) / "ray" / "session_latest"
    return _wait_for(
        lambda: (session / SD_FILE).exists() and (session / SD_FILE).resolve(),
        60,
        f"Ray's {SD_FILE} under {session}",
    )


@contextlib.contextmanager
def run_prometheus(sd_file: Path, workdir: Path) -> Iterator[str]:
    """Prometheus on a free port, scraping every target of `sd_file` each second, its storage
    in `workdir`; yields its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"prometheus exited ({proc.returncode}):\n{tail}")
        return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200

    try:
        _wait_for(ready, 60, "Prometheus to be ready")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ---- the service and Prometheus, with what the chats were charged ------------------------


@dataclass
class Rig:
    app: ServedApp
    prom: str
    spent: dict[str, float] = field(default_factory=dict)  # model -> sum of cost headers
    answered: Counter[str] = field(default_factory=Counter)  # model -> chats answered

    def chat(self, content: str, model: str = "auto", key: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        r = httpx.post(
            f"{self.app.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
        )
        assert r.status_code == 200, r.text
        answered_by = r.json()["model"]
        cost = float(r.headers["x-paretoserve-cost-usd"])
        self.spent[answered_by] = self.spent.get(answered_by, 0.0) + cost
        self.answered[answered_by] += 1
        return r

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"authorization": f"Bearer {self.app.admin_key}"}
        r = httpx.request(
            method, f"{self.app.base_url}{path}", headers=headers, timeout=60, **kwargs
        )
        assert r.status_code in (200, 201), f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def query(self, promql: str) -> list[dict]:
        """An instant query over Prometheus's HTTP API: the result vector."""
        r = httpx.get(f"{self.prom}/api/v1/query", params={"query": promql}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{promql}: {r.text}"
        return body["data"]["result"]

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(promql)}


def _close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a
    )


def converged(read: Callable[[], dict[str, float]], want: Callable[[], dict[str, float]]):
    """Poll until Prometheus's values equal the service's (both re-read each time), or time
    out; returns the last pair either way, for the assertion to show."""
    deadline = time.monotonic() + CONVERGE_S
    while True:
        got, expected = read(), want()
        if _close(got, expected) or time.monotonic() > deadline:
            return got, expected
        time.sleep(1.0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("prometheus")
    args = base_config()["applications"][0]["args"]
    args["state_path"] = str(workdir / "state.db")
    args["providers"]["simulated"]["options"]["time_scale"] = 0
    args["judge"]["enabled"] = False  # its own account; nothing here reads it
    with serve_app(args, workdir / "service") as app:
        sd_file = _ray_service_discovery_file(app)
        with run_prometheus(sd_file, workdir / "prometheus") as prom:
            yield Rig(app, prom)


def test_promql_spend_by_model_is_what_the_service_charged(rig: Rig) -> None:
    models = [m["id"] for m in rig.admin("GET", "/admin/models")]
    assert len(models) == 3
    for i in range(3):
        for model in models:  # a named model bypasses the bandit and is charged the same way
            rig.chat(f"Name {i + 2} prime numbers.", model=model)
        rig.chat(f"What is {i + 17} * 23?")
    assert set(rig.spent) == set(models)

    got, expected = converged(
        lambda: rig.by_label("sum by (model) (ray_paretoserve_spend_usd_total)", "model"),
        lambda: dict(rig.spent),
    )
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)

    state = rig.admin("GET", "/admin/state")
    assert sum(got.values()) == pytest.approx(state["total_spend_usd"], rel=1e-9, abs=1e-12)
    assert state["charges"] == sum(rig.answered.values())

    requests, answered = converged(
        lambda: rig.by_label("sum by (model) (ray_paretoserve_requests_total)", "model"),
        lambda: {m: float(n) for m, n in rig.answered.items()},
    )
    assert requests == answered
    # A gauge may miss a scrape between two sets (Ray drops it 20 s after its last one), so its last
    # scraped value is read over a window, which skips Prometheus's staleness markers.
    budget = rig.by_label(f"max(last_over_time(ray_paretoserve_pacer_budget_usd[{WINDOW}]))", "")
    assert budget == pytest.approx({"": state["budget_usd_per_request"]})


def test_every_dashboard_query_runs_on_prometheus(rig: Rig) -> None:
    """The Grafana dashboard's PromQL, its variables filled in as Grafana fills them, is valid
    on a real Prometheus, and its spend panels have data."""
    fill = {"$__rate_interval": "1m", "$__range": "10m", "$tenant": ".*"}

    def filled(expr: str) -> str:
        for var, value in fill.items():
            expr = expr.replace(var, value)
        return expr

    must_have_data = {
        "sum by (model) (increase(ray_paretoserve_spend_usd_total[$__range]))",
        "3600 * sum by (model) (rate(ray_paretoserve_spend_usd_total[$__rate_interval]))",
        "sum by (model, routed) (rate(ray_paretoserve_requests_total[$__rate_interval]))",
    }

    def spend_panels_have_data() -> bool:
        # rate() over 1m needs two samples of the series within the last minute: traffic
        # continues until they are there (earlier tests may have ended over a minute ago).
        rig.chat("What is 2 + 2?")
        return all(rig.query(filled(e)) for e in must_have_data)

    _wait_for(spend_panels_have_data, CONVERGE_S, "data in the spend panels")
    empty = [
        expr
        for expr in dashboard_exprs(dashboard())
        if not expr.startswith("label_values(")  # Grafana's own function, not PromQL
        and not rig.query(filled(expr))
    ]
    assert must_have_data <= set(dashboard_exprs(dashboard()))
    assert not must_have_data & set(empty), empty


@pytest.mark.skipif(not _tenant_metrics_defined(), reason="tenant metrics not defined yet")
def test_promql_spend_by_tenant_is_each_tenants_spend(rig: Rig) -> None:
    keys = {}
    for tenant in ("a", "b"):
        rig.admin("POST", "/admin/tenants", json={"id": tenant, "budget_usd": 1.0, "period": "day"})
        keys[tenant] = rig.admin("POST", f"/admin/tenants/{tenant}/keys")["api_key"]
    for i in range(4):
        rig.chat(f"Tenant a asks question {i}: what is {i} + 5?", key=keys["a"])
    for i in range(2):
        rig.chat(f"Tenant b asks question {i}: name a colour.", key=keys["b"])

    def tenant_spend() -> dict[str, float]:
        return {t: float(rig.admin("GET", f"/admin/tenants/{t}")["spend_usd"]) for t in keys}

    got, expected = converged(
        lambda: {
            t: v
            for t, v in rig.by_label(
                f"max by (tenant) (last_over_time(ray_paretoserve_tenant_spend_usd[{WINDOW}]))",
                "tenant",
            ).items()
            if t in keys
        },
        tenant_spend,
    )
    assert all(v > 0 for v in expected.values()), expected
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)

    requests, reported = converged(
        lambda: {
            t: v
            for t, v in rig.by_label(
                "sum by (tenant) (ray_paretoserve_tenant_requests_total)", "tenant"
            ).items()
            if t in keys
        },
        lambda: {t: float(rig.admin("GET", f"/admin/tenants/{t}")["requests"]) for t in keys},
    )
    assert requests == reported == {"a": 4.0, "b": 2.0}


def test_a_pacer_gauge_stays_in_prometheus_while_the_service_is_idle(rig: Rig) -> None:
    """Ray drops a gauge from its metrics endpoint two report intervals (20 s) after its last
    set(); the Router sets its gauges again at every health check (10 s), so an idle service
    still shows its budget, dual and spend EMA."""
    rig.chat("What is 6 * 7?")
    ema = rig.admin("GET", "/admin/state")["spend_ema_usd"]

    def scraped_this_charge() -> bool:  # the EMA moves with every charge
        got = rig.by_label("max(ray_paretoserve_pacer_spend_ema_usd)", "")
        return math.isclose(got.get("", math.nan), ema, rel_tol=1e-9)

    _wait_for(scraped_this_charge, CONVERGE_S, "the spend EMA of the last charge")
    time.sleep(2.5 * REPORT_INTERVAL_S + 3)  # idle past Ray's gauge TTL (2 report intervals)
    assert rig.query("ray_paretoserve_pacer_spend_ema_usd")
