"""The Judge's rubric through the real `openai` SDK over real HTTP, against a fake OpenAI
server (the only double: it speaks OpenAI's wire format) whose judge models answer a good
verdict, or a malformed, out-of-range or incomplete one. Only the good one becomes a reward."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from thread_server import ThreadServer

from core.method.registry import ModelSpec
from core.service.judge import Judge
from core.service.judge_account import JudgeAccount
from core.service.judge_rubric import RUBRIC, JudgedExchange
from core.service.protocol import ProviderRequest
from core.service.settings import JudgeSettings
from deployments.clients.openai_client import OpenAIClient

pytestmark = pytest.mark.anyio

GOOD = {"reasoning": 9, "instruction_following": 6, "communication": 8}
VERDICTS = {  # upstream model name -> the judge model's answer text
    "judge-good": json.dumps(GOOD),
    "judge-prose": "The answer is accurate and clear. 9/10.",
    "judge-fenced": f"```json\n{json.dumps(GOOD)}\n```",
    "judge-out-of-range": json.dumps(GOOD | {"reasoning": 42}),
    "judge-negative": json.dumps(GOOD | {"communication": -3}),
    "judge-missing": json.dumps({"reasoning": 9, "communication": 8}),
    "judge-string": json.dumps(GOOD | {"instruction_following": "six"}),
    "judge-empty": "",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeOpenAI:
    """/v1/chat/completions answering each model's verdict, recording what it was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict:
            body = await request.json()
            self.seen.append(body)
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": VERDICTS[body["model"]]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
            }

        self.server = ThreadServer(app)
        self.url = self.server.url + "/v1"

    def __enter__(self) -> FakeOpenAI:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIClient]:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    c = OpenAIClient(api_key_env="TEST_OPENAI_KEY", default_base_url=fake.url)
    yield c
    await c.aclose()


class Posted:
    def __init__(self) -> None:
        self.rewards: dict[str, float] = {}

    async def has_feedback(self, request_id: str) -> bool:
        return request_id in self.rewards

    async def submit(self, request_id: str, reward: float) -> str:
        self.rewards[request_id] = reward
        return "applied"


def _exchange(rid: str) -> JudgedExchange:
    spec = ModelSpec(id="answerer", provider="openai", input_per_m=0.5, output_per_m=1.5)
    req = ProviderRequest(
        request_id=rid,
        model_id=spec.id,
        upstream_model=spec.id,
        spec=spec,
        messages=[{"role": "user", "content": "Name three primes."}],
        prompt_text="Name three primes.",
    )
    return JudgedExchange(request=req, answer="2, 3 and 5.", answered_at=0.0)


async def _judge_with(upstream: str, client: OpenAIClient) -> tuple[Judge, Posted]:
    spec = ModelSpec(
        id=f"judge/{upstream}",
        provider="openai",
        provider_model=upstream,
        input_per_m=1.0,
        output_per_m=4.0,
    )

    async def save(account: JudgeAccount) -> None:
        return None

    posted = Posted()
    settings = JudgeSettings(client_grace_s=0.0, backoff_s=0.0)
    judge = Judge(settings, spec, client, posted, JudgeAccount(1.0), save)
    judge.offer(_exchange(f"{upstream}-1"))
    await judge.drain()
    return judge, posted


async def test_a_good_verdict_becomes_the_weighted_reward(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    judge, posted = await _judge_with("judge-good", client)
    expected = sum(w * GOOD[c] for c, w in RUBRIC.items()) / 10
    assert posted.rewards == {"judge-good-1": pytest.approx(expected)}
    sent = fake.seen[-1]
    assert sent["response_format"] == {"type": "json_object"} and sent["temperature"] == 0.0
    assert sent["messages"][0]["role"] == "system" and "reasoning" in sent["messages"][0]["content"]
    assert "Name three primes." in sent["messages"][1]["content"]
    assert "2, 3 and 5." in sent["messages"][1]["content"]
    assert "judged" not in sent  # our own field never goes upstream
    # the judge's spend: the upstream's usage at the judge model's prices
    assert judge.stats()["spend_usd"] == pytest.approx((300 * 1.0 + 20 * 4.0) / 1e6)


@pytest.mark.parametrize("upstream", sorted(set(VERDICTS) - {"judge-good"}))
async def test_a_bad_verdict_becomes_no_reward(upstream: str, client: OpenAIClient) -> None:
    judge, posted = await _judge_with(upstream, client)
    assert posted.rewards == {}
    stats = judge.stats()
    assert stats["failed"] == 1 and stats["reasons"] == {"failed:invalid_verdict": 1}
    assert stats["spend_usd"] > 0  # the call was paid for all the same
