"""A Ray cluster of several nodes on this machine: `ray start --head`, then `ray start --address`
for each further node, every node with ports of its own, all in one fresh RAY_TMPDIR. The
service is deployed on it with `serve_app(..., address=, ray_dir=)`; a node is made to fail by
SIGKILLing its raylet (`LocalCluster.raylet_pid`). The end SIGKILLs exactly the processes of
that RAY_TMPDIR (`kill_ray_dir`); `ray stop` is never used, it would stop every Ray process on
the machine.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.net import free_port
from loadtest.server import kill_ray_dir, pids_of_ray_dir, ray_env


@dataclass(frozen=True)
class NodeSpec:
    name: str
    num_cpus: int
    labels: dict[str, str] = field(default_factory=dict)  # for label_selector
    resources: dict[str, float] = field(default_factory=dict)
    object_store_mib: int = 256


@dataclass(frozen=True)
class Node:
    spec: NodeSpec
    head: bool
    node_manager_port: int


@dataclass
class LocalCluster:
    address: str  # the GCS address, for `ray start --address` and `serve run --address`
    ray_dir: str
    nodes: list[Node]
    log_path: Path

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.spec.name == name)

    def raylet_pid(self, name: str) -> int | None:
        """The pid of the node's raylet, or None once it is gone."""
        flag = f"--node_manager_port={self.node(name).node_manager_port}".encode()
        for pid in pids_of_ray_dir(self.ray_dir):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if Path(argv[0].decode(errors="replace")).name == "raylet" and flag in argv:
                    return pid
        return None

    def node_of_raylet(self, raylet_pid: int) -> Node | None:
        return next((n for n in self.nodes if self.raylet_pid(n.spec.name) == raylet_pid), None)


def _node_args(spec: NodeSpec, node_manager_port: int) -> list[str]:
    args = [
        f"--num-cpus={spec.num_cpus}",
        f"--node-manager-port={node_manager_port}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--object-store-memory={spec.object_store_mib * 1024 * 1024}",
        "--min-worker-port=0",  # ports the OS picks: none shared with another node
        "--max-worker-port=0",
        "--disable-usage-stats",
    ]
    if spec.labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()))
    if spec.resources:
        args.append(f"--resources={json.dumps(spec.resources)}")
    return args


@contextlib.contextmanager
def local_cluster(
    specs: Sequence[NodeSpec],
    workdir: Path,
    *,
    system_env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[LocalCluster]:
    """The first spec is the head. `system_env` adds environment to every node (e.g. Ray's
    `RAY_health_check_*` settings, read by the GCS)."""
    ray_dir = tempfile.mkdtemp(prefix="psray-", dir="/tmp")  # short: Ray puts sockets here
    env = ray_env(ray_dir) | (system_env or {})
    ray = str(Path(sys.executable).parent / "ray")
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "ray_start.log"
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    nodes: list[Node] = []
    try:
        with open(log_path, "ab") as log:
            for i, spec in enumerate(specs):
                port = free_port()
                if i == 0:
                    where = ["--head", f"--port={gcs_port}", "--include-dashboard=false",
                             f"--dashboard-port={free_port()}",
                             f"--ray-client-server-port={free_port()}"]  # fmt: skip
                else:
                    where = [f"--address={address}"]
                cmd = [ray, "start", *where, *_node_args(spec, port)]
                log.write(f"$ {' '.join(cmd)}\n".encode())
                log.flush()
                rc = subprocess.run(  # the nodes' processes work in `workdir`
                    cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                ).returncode  # fmt: skip
                if rc != 0:
                    raise RuntimeError(f"ray start of node {spec.name!r} failed ({rc}): {log_path}")
                nodes.append(Node(spec, i == 0, port))
        cluster = LocalCluster(address, ray_dir, nodes, log_path)
        deadline = time.monotonic() + timeout_s
        while any(cluster.raylet_pid(n.spec.name) is None for n in nodes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every raylet of {[s.name for s in specs]} is up")
            time.sleep(0.5)
        yield cluster
    except BaseException:
        # Ray's own logs of every node, for the failure's report (the folder goes next).
        logs = Path(ray_dir) / "ray" / "session_latest" / "logs"
        with contextlib.suppress(OSError):
            shutil.copytree(logs, workdir / "ray-logs", dirs_exist_ok=True)
        raise
    finally:
        kill_ray_dir(ray_dir)
