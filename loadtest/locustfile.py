"""Locust load test of the paretoserve HTTP API (FastHttpUser).

Each simulated user sends chat requests with `model: "auto"` (prompts drawn from a reward file,
or from a small built-in set), then posts feedback after a random delay: the recorded reward the
simulated provider returns in replay mode, else a reward drawn at random. A share of requests
streams (SSE read to `[DONE]`), and a small share are admin reads.

Headless, from the repository root (the service on :8000, e.g. `make run`):

    PARETOSERVE_ADMIN_KEY=... .venv/bin/locust -f loadtest/locustfile.py --headless \\
        --host http://127.0.0.1:8000 -u 32 -r 8 -t 2m --csv out/locust \\
        --data ../shared/data/val.jsonl

Options (after the locust ones): --data FILE, --feedback-delay-ms MS (uniform in [0, MS]),
--stream-share, --admin-share. Stats land in out/locust_stats.csv and friends.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import gevent
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # locust puts only loadtest/ there
from core.replay.prompts import BUILTIN_PROMPTS, load_prompts  # noqa: E402

PROMPTS: list[str] = list(BUILTIN_PROMPTS)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--data", default="", help="reward file (.jsonl) to draw prompts from")
    parser.add_argument("--feedback-delay-ms", type=float, default=2000.0)
    parser.add_argument("--stream-share", type=float, default=0.05)
    parser.add_argument("--admin-share", type=float, default=0.02)


@events.test_start.add_listener
def _load_prompts(environment, **_kw) -> None:
    PROMPTS[:] = load_prompts(environment.parsed_options.data)


class RouterUser(FastHttpUser):
    """One application: chat, stream now and then, judge the answer later, peek at admin."""

    # Short think time: the service's capacity, not the users, should set the pace.
    def wait_time(self) -> float:
        return random.uniform(0.0, 0.2)

    def on_start(self) -> None:
        key = os.environ.get("PARETOSERVE_ADMIN_KEY", "")
        self.admin_headers = {"Authorization": f"Bearer {key}"} if key else None
        api_key = os.environ.get("PARETOSERVE_API_KEY", "")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @task
    def chat_or_other(self) -> None:
        opts = self.environment.parsed_options
        roll = random.random()
        if roll < opts.admin_share and self.admin_headers:
            self.admin_read()
        elif roll < opts.admin_share + opts.stream_share:
            self.chat(stream=True)
        else:
            self.chat(stream=False)

    def chat(self, stream: bool) -> None:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "stream": stream,
        }
        name = "/v1/chat/completions" + (" [stream]" if stream else "")
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            rid = r.headers.get("x-request-id")
            reward = None
            if stream:
                events_ = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
                if not events_ or events_[-1] != "[DONE]":
                    r.failure("stream did not end with [DONE]")
                    return
                last = json.loads(events_[-2]) if len(events_) > 1 else {}
                reward = (last.get("paretoserve") or {}).get("recorded_reward")
            else:
                reward = (r.json().get("paretoserve") or {}).get("recorded_reward")
        if rid:
            if reward is None:
                reward = random.random()  # no judge: any valid reward exercises the path
            delay = random.uniform(0.0, self.environment.parsed_options.feedback_delay_ms) / 1e3
            gevent.spawn_later(delay, self.feedback, rid, reward)

    def feedback(self, request_id: str, reward: float) -> None:
        body = {"request_id": request_id, "reward": reward}
        with self.client.post(
            "/v1/feedback", json=body, headers=self.headers, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    def admin_read(self) -> None:
        path = random.choice(["/admin/state", "/admin/models"])
        self.client.get(path, headers=self.admin_headers, name=path)
        self.client.get("/v1/models", headers=self.headers, name="/v1/models")
