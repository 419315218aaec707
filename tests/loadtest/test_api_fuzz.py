"""Schemathesis over the service's own OpenAPI document (a bounded run; the long one is the
documented `paretoserve loadtest fuzz --max-examples 200`): no request may get a 5xx."""

from __future__ import annotations

import json

import pytest

from paretoserve_cli.main import main

pytestmark = pytest.mark.ray


def test_fuzzing_every_operation_finds_no_server_error(tmp_path) -> None:
    out = tmp_path / "fuzz.json"
    rc = main(["loadtest", "fuzz", "--start-server", "--max-examples", "8", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["operations_tested"] == report["operations_total"] >= 10
    assert report["cases_generated"] > 200
    assert report["server_errors"] == 0, report["failures"]
    assert rc == 0
