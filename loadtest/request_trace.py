"""A seeded trace of the request path through Serve, to show a refactor changed no decision.

    python -m loadtest.request_trace OUT.json [--requests N] [--data FILE]

Starts the app (serve_config.yaml's args; simulated providers answering at once from the
recorded file, seed 0; state in a temp dir), sends N sequential chats (every fifth streamed)
with the file's prompts and posts feedback after each (the recorded reward, 0.5 for streams),
and writes each request's answering model, charged cost and feedback status. Two code trees
(e.g. `PYTHONPATH=/path/to/old/checkout`) must write identical files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from loadtest.server import base_config, serve_app

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "val.jsonl"


def trace(data: Path, requests: int) -> list[dict]:
    prompts = [json.loads(line)["prompt"] for line in data.open()][:requests]
    args = base_config()["applications"][0]["args"]
    work = Path(tempfile.mkdtemp(prefix="trace-"))
    args["state_path"] = str(work / "state.db")
    options = args["providers"]["simulated"]["options"]
    options.update(time_scale=0, seed=0, replay_file=str(data))
    out = []
    with serve_app(args, work) as app, httpx.Client(base_url=app.base_url, timeout=60) as c:
        for i, p in enumerate(prompts):
            body = {"model": "auto", "messages": [{"role": "user", "content": p}]}
            if i % 5 == 4:
                body["stream"] = True
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    r.read()
                first = next(ln for ln in r.text.splitlines() if ln.startswith("data: {"))
                model, reward = json.loads(first[len("data: ") :])["model"], 0.5
            else:
                r = c.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                j = r.json()
                model = j["model"]
                reward = j.get("paretoserve", {}).get("recorded_reward") or 0.5
            rid, cost = r.headers["x-request-id"], r.headers.get("x-paretoserve-cost-usd")
            f = c.post("/v1/feedback", json={"request_id": rid, "reward": reward})
            f.raise_for_status()
            out.append({"i": i, "model": model, "cost": cost, "feedback": f.json()["status"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.request_trace")
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--data", type=Path, default=DATA)
    a = parser.parse_args()
    rows = trace(a.data, a.requests)
    a.out.write_text(json.dumps({"trace": rows}, indent=0))
    mix = {m: sum(r["model"] == m for r in rows) for m in sorted({r["model"] for r in rows})}
    print(f"{len(rows)} requests; models {mix}")


if __name__ == "__main__":
    main()
