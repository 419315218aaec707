"""Start the real service for a load run: `serve run <config>` in a subprocess, on a free port.

The config is the repo's serve_config.yaml with its application `args` replaced. `serve run`
starts its own local Ray cluster in a fresh RAY_TMPDIR, so it never joins (or is mistaken for)
another cluster on the machine. Stopping sends SIGINT (Serve shuts down, the driver stops its
cluster), SIGKILL after a grace period, then SIGKILL of any process still carrying that
RAY_TMPDIR. `ray stop --force` is never used: it would kill every Ray process on the machine.
With `address`, the app is deployed on a cluster started beforehand (loadtest/cluster.py: several
nodes on this machine) and stopping it leaves that cluster to its owner.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from core.net import free_port

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY_ENV = "PARETOSERVE_ADMIN_KEY"


def base_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())


@dataclass
class ServedApp:
    base_url: str
    admin_key: str
    proc: subprocess.Popen
    log_path: Path
    ray_dir: str
    own_cluster: bool = True  # False: deployed on a cluster someone else stops

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def ray_pids(self) -> list[int]:
        return pids_of_ray_dir(self.ray_dir)


def pids_of_ray_dir(ray_dir: str) -> list[int]:
    """PIDs of the processes of the cluster started with RAY_TMPDIR=ray_dir."""
    env_marker, marker = f"RAY_TMPDIR={ray_dir}".encode(), ray_dir.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or env_marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _wait_healthy(app: ServedApp, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise RuntimeError(f"`serve run` exited ({app.proc.returncode}):\n{app.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{app.base_url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(1.0)
    raise TimeoutError(f"no answer on /healthz in {timeout_s:.0f}s:\n{app.log_tail()}")


def kill_ray_dir(ray_dir: str, timeout_s: float = 20.0) -> None:
    """SIGKILL every process of the cluster in `ray_dir` (until none is left), then delete it."""
    deadline = time.monotonic() + timeout_s
    while (left := pids_of_ray_dir(ray_dir)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    shutil.rmtree(ray_dir, ignore_errors=True)


def fast_path_ports() -> dict[str, str]:
    """Ports of its own for a throwaway cluster, in case Serve's fast paths are on
    (README "Speed"): HAProxy's stats and metrics ports are fixed by default (8404, 9101), so a
    second cluster on the machine could not start its HAProxy; and every cluster's Ingress
    replicas take the first free ports from 30000 (HTTP) and 40000 (gRPC), so two clusters
    could hand each other's ports to their HAProxy. Here: free ports for the first two and a
    random block of 16 in each range (1 in 62 that two clusters share one)."""
    block = random.randrange(62) * 16
    return {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(30_000 + block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(30_000 + block + 15),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(40_000 + block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(40_000 + block + 15),
    }


def ray_env(ray_dir: str) -> dict[str, str]:
    """The environment of a throwaway cluster's processes (and of the drivers joining it)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    env.update(
        {
            **fast_path_ports(),
            "RAY_TMPDIR": ray_dir,
            "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    return env


def _stop(app: ServedApp) -> None:
    if app.proc.poll() is None:
        app.proc.send_signal(signal.SIGINT)  # `serve run` shuts Serve down
        try:
            app.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            app.proc.kill()
            app.proc.wait(timeout=15)
    if app.own_cluster:
        kill_ray_dir(app.ray_dir)


@contextlib.contextmanager
def serve_app(
    args: dict[str, Any],
    workdir: Path,
    *,
    deployments: dict[str, dict[str, Any]] | None = None,
    startup_timeout_s: float = 300.0,
    address: str | None = None,
    ray_dir: str | None = None,
) -> Iterator[ServedApp]:
    """Run the app with these `args` (graphs.app:build_app) until the block exits.
    `deployments` updates the config's per-deployment options by name (e.g. autoscaling).
    `address` and `ray_dir`: deploy on that running cluster (loadtest/cluster.py) instead of a
    new one; its processes have their own environment, so the admin key travels to the
    replicas in the application's runtime_env."""
    cfg = copy.deepcopy(base_config())
    port = free_port()
    cfg["http_options"]["port"] = port
    app_cfg = cfg["applications"][0]
    app_cfg["args"] = args
    for d in app_cfg.get("deployments", []):
        d.update((deployments or {}).get(d["name"], {}))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "serve_config.yaml"

    admin_key = secrets.token_urlsafe(24)
    if (address is None) != (ray_dir is None):
        raise ValueError("serve_app: give both `address` and `ray_dir` of a cluster, or neither")
    own_cluster = ray_dir is None
    if ray_dir is None:
        ray_dir = tempfile.mkdtemp(prefix="psray-", dir="/tmp")  # short: Ray puts sockets here
    else:
        runtime_env = app_cfg.setdefault("runtime_env", {})  # the file lives in `workdir`
        runtime_env.setdefault("env_vars", {})[ADMIN_KEY_ENV] = admin_key
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = ray_env(ray_dir) | {ADMIN_KEY_ENV: admin_key}
    cmd = [str(Path(sys.executable).parent / "serve"), "run", str(cfg_path)]
    if address is not None:
        cmd[2:2] = ["--address", address]
    log_path = workdir / "serve_run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = ServedApp(f"http://127.0.0.1:{port}", admin_key, proc, log_path, ray_dir, own_cluster)
    try:
        _wait_healthy(app, startup_timeout_s)
        yield app
    finally:
        _stop(app)


def replica_pids(app: ServedApp) -> dict[str, list[int]]:
    """Deployment name -> PIDs of its replica processes (Ray titles them
    `ray::ServeReplica:<app>:<deployment>[.<method being run>]`)."""
    out: dict[str, list[int]] = {}
    for pid in app.ray_pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith("ray::ServeReplica:"):
            name = title.rsplit(":", 1)[-1].split(".")[0].strip()
            out.setdefault(name, []).append(pid)
    return out


def raylet_of(pid: int) -> int | None:
    """The raylet that started the worker `pid` (its nearest `raylet` ancestor): the node it
    runs on. None when there is none (or `pid` is gone)."""
    while pid > 1:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if Path(cmd.decode(errors="replace")).name == "raylet":
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the ppid
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def replica_rss_mib(app: ServedApp) -> dict[str, float]:
    """Deployment name -> resident memory of its replicas, summed (MiB)."""
    return {
        name: round(sum(filter(None, (rss_mib(p) for p in pids))), 1)
        for name, pids in sorted(replica_pids(app).items())
    }
