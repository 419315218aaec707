"""The judge's rubric: the paper's (0.4 reasoning + 0.3 instruction following + 0.3
communication), asked of a judge model as strict JSON, and the one parser that turns its answer
into a reward in [0, 1] or refuses it.

An answer is a reward only if it is one JSON object whose three criteria are numbers in
[0, 10]: anything malformed, out of range or missing raises `JudgeAnswerError` and becomes no
reward (the Judge counts it as failed).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, Field

from core.method.registry import ModelSpec
from core.service.protocol import ProviderRequest

# criterion -> weight (the paper's rubric); scores are on a 0-10 scale.
RUBRIC: dict[str, float] = {"reasoning": 0.4, "instruction_following": 0.3, "communication": 0.3}
SCORE_MAX = 10.0
JUDGE_MAX_TOKENS = 200  # the verdict is a small JSON object

SYSTEM_PROMPT = (
    "You are a strict evaluator of an AI assistant's answer. Score the answer to the user's "
    "request on three criteria, each a number from 0 (worst) to 10 (best):\n"
    "- reasoning: correctness and soundness of the content and its reasoning;\n"
    "- instruction_following: how fully and exactly it does what the user asked;\n"
    "- communication: clarity, organisation and appropriate length.\n"
    "Reply with one JSON object and nothing else, exactly of the form "
    '{"reasoning": <number>, "instruction_following": <number>, "communication": <number>}.'
)


class JudgeAnswerError(ValueError):
    """The judge model's answer is not a valid verdict; the message says what is wrong."""


class JudgedExchange(BaseModel):
    """What the judge sees of one answered request: the request as the answering model got it
    (its spec is the model that answered) and the answer (text, or the tool calls as JSON)."""

    request: ProviderRequest
    answer: str
    forced: bool = False
    answered_at: float = Field(description="epoch seconds when the answer was complete")

    @property
    def request_id(self) -> str:
        return self.request.request_id


def judge_request(exchange: JudgedExchange, judge: ModelSpec) -> ProviderRequest:
    """The rubric request for the judge model, carrying the exchange it judges (`judged`: a
    simulated judge reads it; real providers send only the messages)."""
    transcript = "\n".join(
        f"[{m.get('role', 'user')}] {_text_of(m.get('content'))}" for m in exchange.request.messages
    )
    user = (
        f"CONVERSATION:\n{transcript}\n\nANSWER TO SCORE:\n{exchange.answer}\n\n"
        "Reply with the JSON object only."
    )
    return ProviderRequest(
        request_id=f"judge-{exchange.request_id}",
        model_id=judge.id,
        upstream_model=judge.upstream_name,
        spec=judge,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        prompt_text=f"{SYSTEM_PROMPT}\n{user}",
        max_tokens=JUDGE_MAX_TOKENS,
        temperature=0.0,
        response_format={"type": "json_object"},
        judged=exchange.request,
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones (an image is marked)
        return " ".join(
            p.get("text", "") if p.get("type") == "text" else f"<{p.get('type', 'part')}>"
            for p in content
            if isinstance(p, dict)
        )
    return "" if content is None else json.dumps(content)


def reward_of(answer: str) -> float:
    """The weighted rubric score in [0, 1] of a judge model's answer; JudgeAnswerError if the
    answer is not exactly one JSON object with every criterion a number in [0, 10]."""
    try:
        verdict = json.loads(answer)
    except (json.JSONDecodeError, TypeError) as exc:
        raise JudgeAnswerError(f"not JSON: {answer[:80]!r}") from exc
    if not isinstance(verdict, dict):
        raise JudgeAnswerError(f"not a JSON object: {answer[:80]!r}")
    total = 0.0
    for criterion, weight in RUBRIC.items():
        if criterion not in verdict:
            raise JudgeAnswerError(f"missing score: {criterion}")
        score = verdict[criterion]
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise JudgeAnswerError(f"{criterion} is not a number: {score!r}")
        if not (math.isfinite(score) and 0.0 <= score <= SCORE_MAX):
            raise JudgeAnswerError(f"{criterion} out of [0, {SCORE_MAX:g}]: {score!r}")
        total += weight * score
    return min(1.0, max(0.0, total / SCORE_MAX))
