"""`make run`'s launcher (tools/serve_run.py) stops the whole service on SIGTERM, HAProxy
included: with the fast paths on, a bare `serve run` killed by SIGTERM leaves HAProxy holding
the service's port (Ray 2.60), and the next start cannot bind it."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from core.net import free_port
from loadtest.server import REPO, base_config, kill_ray_dir, pids_of_ray_dir, ray_env

pytestmark = pytest.mark.ray

FAST_PATHS = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_stops_serve_run_and_haproxy(tmp_path: Path) -> None:
    cfg = copy.deepcopy(base_config())
    port = free_port()
    cfg["http_options"]["port"] = port
    cfg_path = tmp_path / "serve_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ray_dir = tempfile.mkdtemp(prefix="psray-", dir="/tmp")
    env = ray_env(ray_dir) | FAST_PATHS
    launcher = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "serve_run.py"), str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "serve_run.log", "wb"),  # noqa: SIM115 (the child keeps it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # As a launcher started in the background by a shell: SIGINT ignored, which `serve run`
        # would inherit unless the launcher sees to it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        log = (tmp_path / "serve_run.log").read_text(errors="replace")
        assert launcher.poll() is None, log[-3000:]
        assert "HAProxy" in log or any(
            b"haproxy" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids_of_ray_dir(ray_dir)
        ), "the fast paths' HAProxy did not start"

        os.killpg(launcher.pid, signal.SIGTERM)  # what a process manager sends
        assert launcher.wait(timeout=240) == 0
        deadline = time.monotonic() + 30
        while pids_of_ray_dir(ray_dir) and time.monotonic() < deadline:
            time.sleep(1.0)
        left = [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in pids_of_ray_dir(ray_dir)]
        assert not left, left
        assert _port_is_free(port)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        kill_ray_dir(ray_dir)
