"""Shared fixtures. Pure unit tests (tests/unit) run with Ray made impossible to start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PARETOSERVE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# With Serve's fast paths (the Makefile's exports) every Ingress replica drains for 30 s before
# it stops, so that HAProxy stops sending it requests first: a test cluster has no one to drain
# for, and 30 s per teardown would add many minutes to the suite.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
# The throughput mode runs a handle's router on the caller's event loop, and then refuses a
# handle's synchronous `.result()` (tests call handles from plain functions); the separate
# router loop, Serve's default outside that mode, keeps them working. Replicas call handles
# with `await` only, so this changes nothing they do.
os.environ.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "1")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "val.jsonl").exists():
        pytest.skip(f"reward data not found at {SHARED_DATA} (../shared/data is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the session (tests/pg_server.py); tests skip, naming
    the reason, where none can be started. fsync is off: these tests kill clients, not it."""
    from pg_server import PgServer, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with PgServer(fsync=False) as server:
        yield server


class _RayForbidden:
    """Stands in for the ray package: any use in a unit test is an error."""

    def __getattr__(self, name: str):
        raise RuntimeError(f"unit tests must not use Ray (ray.{name})")


@pytest.fixture(autouse=True)
def _forbid_ray_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if "tests/unit" in str(request.node.path).replace(os.sep, "/"):
        for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "ray", _RayForbidden())
    yield


# ---- a deterministic end -----------------------------------------------------------------
# The suite loads Ray (core worker and its gRPC threads), ONNX Runtime and torch (their
# intra-op thread pools) into this process. At interpreter exit, CPython tears down modules
# while those native threads may still run, and their static destructors race that teardown:
# one `make test` in several died with SIGSEGV after printing a green summary. Everything a
# test needs written is written by then (pytest's cache at sessionfinish), so the process
# shuts Ray down (its node processes would otherwise be orphaned), flushes, and leaves with
# pytest's own exit status without running the finalisers.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _EXIT_STATUS:
        return
    ray = sys.modules.get("ray")
    if ray is not None and not isinstance(ray, _RayForbidden) and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
