"""Property-based fuzzing of the service's HTTP API from its own OpenAPI document (schemathesis).

Every operation of /openapi.json gets generated requests, valid and invalid (the admin key is
sent, so the admin API is fuzzed too: it adds, re-prices and removes models, and sets the
budget); the check is `not_a_server_error`: no response may be a 5xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_schemathesis(
    base_url: str, admin_key: str, out_dir: Path, max_examples: int, seed: int = 1
) -> dict:
    """Run `st run` and summarise its JSON report: cases generated, server errors, failures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "schemathesis.json"
    cmd = [
        str(Path(sys.executable).parent / "st"), "run", f"{base_url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        # One worker: with two, hypothesis' code introspection raced in threads once
        # ("AST constructor recursion depth mismatch"), a tool error, not a finding.
        "--workers", "1",
        "--request-timeout", "60",
        "--header", f"Authorization: Bearer {admin_key}",
        "--output-sanitize", "true",  # keys never reach the report
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)  # its cache dir
    (out_dir / "schemathesis.log").write_text(proc.stdout + proc.stderr)
    summary = summarise(json.loads(report.read_text())) if report.exists() else {}
    if not summary:
        raise RuntimeError(f"schemathesis wrote no report:\n{proc.stdout[-3000:]}{proc.stderr}")
    return {"exit_code": proc.returncode, **summary}


def summarise(report: dict) -> dict:
    """Counts from schemathesis' JSON run report."""
    server_errors = sum(
        f.get("count", 1) for f in report.get("failures", []) if f.get("code") == "ST101"
    )
    return {
        "cases_generated": report["test_cases"]["generated"],
        "operations_tested": report["operations"]["tested"],
        "operations_total": report["operations"]["total"],
        "server_errors": server_errors,
        "failures": report.get("failures", []),
        "errors": report.get("errors", []),
        "complete": report.get("complete"),
        "seconds": report.get("running_time"),
    }
