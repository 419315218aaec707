"""The application metrics the code defines, read from its source, the names under which Ray's
Prometheus endpoint exports them, and the PromQL of the Grafana dashboard that reads them.

A metric is a `Counter(`, `Gauge(` or `Histogram(` of `ray.util.metrics` whose first argument
is a literal `"paretoserve_..."` name. Ray prefixes every application metric with `ray_`, adds
`_total` to a counter, and exports a histogram as `_bucket`, `_count` and `_sum` series
(checked against a running service by tests/test_prometheus_scrape.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("deployments", "core")
DASHBOARD = REPO / "docs" / "grafana" / "paretoserve.json"

_DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(paretoserve_[a-z0-9_]+)\"")
_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum")}


def defined_metrics(repo: Path = REPO) -> dict[str, str]:
    """Metric name (as the code spells it) -> kind (Counter, Gauge or Histogram)."""
    found: dict[str, str] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((repo / folder).rglob("*.py")):
            for kind, name in _DEFINITION.findall(path.read_text(encoding="utf-8")):
                if found.setdefault(name, kind) != kind:
                    raise ValueError(f"{name} is defined as both {found[name]} and {kind}")
    return found


def exported_name(name: str, kind: str) -> list[str]:
    """The series names Ray's Prometheus endpoint exports for one metric."""
    return [f"ray_{name}{suffix}" for suffix in _SUFFIXES[kind]]


def exported_series(repo: Path = REPO) -> dict[str, str]:
    """Every exported series name -> the metric name the code defines it under."""
    return {
        series: name
        for name, kind in defined_metrics(repo).items()
        for series in exported_name(name, kind)
    }


def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    exprs = [t["expr"] for p in dashboard_panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs
