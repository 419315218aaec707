"""docs/grafana/paretoserve.json cannot drift from the code: every series its PromQL reads is
one the code defines (under the name Ray's Prometheus endpoint exports), and every metric the
code defines has a panel. The six per-tenant series are the one exception while the code
defines no tenant metric yet; once it defines one, they are checked like the rest."""

from __future__ import annotations

import re

import pytest
from metric_names import (
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    defined_metrics,
    exported_series,
)

_SERIES = re.compile(r"\bray_paretoserve_[a-z0-9_]+")
# Being added (issue 13): Ray gauges and counters with the tag key `tenant`.
TENANT_SERIES = {
    "ray_paretoserve_tenant_spend_usd": ("paretoserve_tenant_spend_usd", "Gauge"),
    "ray_paretoserve_tenant_remaining_usd": ("paretoserve_tenant_remaining_usd", "Gauge"),
    "ray_paretoserve_tenant_dual": ("paretoserve_tenant_dual", "Gauge"),
    "ray_paretoserve_tenant_requests_total": ("paretoserve_tenant_requests", "Counter"),
    "ray_paretoserve_tenant_degraded_total": ("paretoserve_tenant_degraded", "Counter"),
    "ray_paretoserve_tenant_refused_total": ("paretoserve_tenant_refused", "Counter"),
}


def _referenced(dash: dict) -> set[str]:
    return {s for e in dashboard_exprs(dash) for s in _SERIES.findall(e)}


def _tenant_metrics_defined() -> bool:
    return any(name.startswith("paretoserve_tenant_") for name in defined_metrics())


def test_the_code_defines_metrics_and_the_parser_finds_them() -> None:
    defined = defined_metrics()
    assert defined["paretoserve_spend_usd"] == "Counter"
    assert defined["paretoserve_pacer_dual"] == "Gauge"
    assert defined["paretoserve_hop_latency_ms"] == "Histogram"
    assert len(defined) >= 15, defined


def test_the_dashboard_imports_into_grafana_10_with_a_prometheus_datasource_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "paretoserve" and dash["title"] == "paretoserve"
    assert dash["schemaVersion"] >= 36  # Grafana 10
    grafana = next(r for r in dash["__requires"] if r["id"] == "grafana")
    assert int(grafana["version"].split(".")[0]) >= 10
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds_vars] == [("DS_PROMETHEUS", "prometheus")]
    panels = [p for p in dashboard_panels(dash) if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]


def test_every_series_the_dashboard_reads_is_one_the_code_defines() -> None:
    exported = exported_series()
    referenced = _referenced(dashboard())
    pending = set() if _tenant_metrics_defined() else set(TENANT_SERIES)
    unknown = sorted(referenced - set(exported) - pending)
    assert not unknown, (
        f"docs/grafana/paretoserve.json reads series no code defines: {unknown}; "
        f"Ray exports these: {sorted(exported)}"
    )


def test_the_dashboard_has_the_tenant_panels() -> None:
    assert set(TENANT_SERIES) <= _referenced(dashboard())


def test_the_tenant_series_are_the_ones_the_code_defines() -> None:
    if not _tenant_metrics_defined():
        pytest.skip("tenant metrics not defined yet (no paretoserve_tenant_* metric in the code)")
    defined = defined_metrics()
    for series, (name, kind) in TENANT_SERIES.items():
        found = defined.get(name)
        assert found == kind, f"{series} needs {name} as a {kind}; the code has {found}"


def test_every_metric_the_code_defines_has_a_panel() -> None:
    referenced = _referenced(dashboard())
    exported = exported_series()
    shown = {exported[s] for s in referenced if s in exported}
    missing = sorted(set(defined_metrics()) - shown)
    assert not missing, f"add a panel to docs/grafana/paretoserve.json for {missing}"
