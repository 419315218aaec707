"""Autoscaling under a locust load: replica counts of every deployment over time.

Starts the service (loadtest/server.py: `serve run` on a free port), runs the locustfile
headless for --load-s seconds, keeps watching for --cooldown-s seconds after, and polls the
Ray dashboard's Serve REST API every --every-s seconds for each deployment's replica states.
Writes <out>/timeline.json, <out>/replicas.png and locust's CSV stats (<out>/locust_*.csv).

    .venv/bin/python -m loadtest.autoscale_run --users 96 --load-s 150 --cooldown-s 150 \\
        --data ../shared/data/val.jsonl --out docs/results/autoscale

The dashboard must be this cluster's (default http://127.0.0.1:8265; the run checks that the
dashboard reports the service's own HTTP port and stops if not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from loadtest.server import REPO, base_config, serve_app


def replica_states(dashboard: str, port: int) -> dict[str, dict[str, int]]:
    d = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).json()
    if (d.get("http_options") or {}).get("port") != port:
        raise RuntimeError(f"the dashboard at {dashboard} belongs to another Serve instance")
    app = d["applications"]["paretoserve"]
    return {
        name: dict(Counter(r["state"] for r in dep["replicas"]))
        for name, dep in app["deployments"].items()
    }


def watch(dashboard: str, port: int, every_s: float, stop: threading.Event, out: list) -> None:
    start = time.monotonic()
    while not stop.is_set():
        try:
            out.append(
                {"t_s": time.monotonic() - start, "replicas": replica_states(dashboard, port)}
            )
        except httpx.HTTPError:
            pass  # the dashboard may lag behind the app at start-up
        stop.wait(every_s)


def plot(timeline: list[dict], load_s: tuple[float, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for p in timeline for n in p["replicas"]})
    fig, ax = plt.subplots(figsize=(10, 4))
    t = [p["t_s"] for p in timeline]
    for i, n in enumerate(names):
        running = [p["replicas"].get(n, {}).get("RUNNING", 0) + 0.03 * i for p in timeline]
        ax.step(t, running, where="post", label=n)
    ax.axvspan(*load_s, color="orange", alpha=0.15, label="locust load")
    ax.set_xlabel("seconds since the service came up")
    ax.set_ylabel("RUNNING replicas")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=96)
    ap.add_argument("--spawn-rate", type=float, default=16)
    ap.add_argument("--load-s", type=int, default=150)
    ap.add_argument("--cooldown-s", type=int, default=150)
    ap.add_argument("--every-s", type=float, default=2.0)
    ap.add_argument("--data", default="", help="reward file for prompts (default: built-in)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="simulated latency scale")
    ap.add_argument("--dashboard", default="http://127.0.0.1:8265")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    app_args = base_config()["applications"][0]["args"]
    workdir = Path(tempfile.mkdtemp(prefix="paretoserve-autoscale-"))
    app_args["state_path"] = str(workdir / "state" / "paretoserve.db")
    app_args["providers"]["simulated"]["options"]["time_scale"] = args.time_scale
    with serve_app(app_args, workdir) as app:
        port = int(app.base_url.rsplit(":", 1)[1])
        timeline: list[dict] = []
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch, args=(args.dashboard, port, args.every_s, stop, timeline), daemon=True
        )
        watcher.start()
        time.sleep(10)  # a baseline before the load
        load_start = timeline[-1]["t_s"] if timeline else 0.0
        cmd = [
            str(Path(sys.executable).parent / "locust"),
            "-f", str(REPO / "loadtest" / "locustfile.py"),
            "--headless", "--host", app.base_url,
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.load_s}s",
            "--csv", str(out / "locust"), "--only-summary",
        ]  # fmt: skip
        if args.data:
            cmd += ["--data", str(Path(args.data).resolve())]
        env = dict(os.environ, PARETOSERVE_ADMIN_KEY=app.admin_key)
        with open(out / "locust.log", "wb") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        load_end = timeline[-1]["t_s"] if timeline else 0.0
        time.sleep(args.cooldown_s)
        stop.set()
        watcher.join()
    peak = {
        n: max(p["replicas"].get(n, {}).get("RUNNING", 0) for p in timeline)
        for n in sorted({n for p in timeline for n in p["replicas"]})
    }
    final = timeline[-1]["replicas"] if timeline else {}
    report = {
        "users": args.users,
        "load_s": [load_start, load_end],
        "locust_exit": rc,
        "peak_running": peak,
        "final": final,
        "timeline": timeline,
    }
    (out / "timeline.json").write_text(json.dumps(report, indent=1))
    plot(timeline, (load_start, load_end), out / "replicas.png")
    print(json.dumps({k: report[k] for k in ("users", "load_s", "locust_exit", "peak_running")}))
    print("final:", json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
