"""The Judge without Ray (core.service.judge): the rubric's parser, the daily account, and the
steps over the real simulated provider client (time_scale 0, so no waiting) as its judge model.

The feedback port is the one double here: it records what the Judge posts, answering like the
Feedback deployment ('applied' once per request, 'duplicate' after)."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.method.registry import ModelSpec, SimBehaviour
from core.replay.simulator import Simulator, SimulatorConfig
from core.service.decision import RouteDecision
from core.service.judge import Judge
from core.service.judge_account import JudgeAccount
from core.service.judge_rubric import JudgeAnswerError, JudgedExchange, judge_request, reward_of
from core.service.judge_sampling import JudgeSampler
from core.service.protocol import ProviderRequest
from core.service.settings import AppArgs, JudgeSettings
from deployments.clients.simulated import SimulatedClient

ANSWERER = ModelSpec(id="answerer", input_per_m=0.5, output_per_m=1.5)
JUDGE = ModelSpec(id="judge", input_per_m=1.25, output_per_m=10.0)
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingFeedback:
    """Answers like the Feedback deployment: a request's first feedback applies."""

    def __init__(self, client_first: set[str] | None = None) -> None:
        self.applied: dict[str, float] = {}
        self.client = set(client_first or ())

    async def has_feedback(self, request_id: str) -> bool:
        return request_id in self.client or request_id in self.applied

    async def submit(self, request_id: str, reward: float) -> str:
        if await self.has_feedback(request_id):
            return "duplicate"
        self.applied[request_id] = reward
        return "applied"


def exchange(rid: str, prompt: str = "Explain recursion.", spec: ModelSpec = ANSWERER):
    req = ProviderRequest(
        request_id=rid,
        model_id=spec.id,
        upstream_model=spec.id,
        spec=spec,
        messages=[{"role": "user", "content": prompt}],
        prompt_text=prompt,
    )
    return JudgedExchange(request=req, answer="Recursion is ...", answered_at=NOW)


def make_judge(feedback, judge_spec: ModelSpec = JUDGE, **settings) -> Judge:
    saved: list[dict] = []

    async def save(account: JudgeAccount) -> None:
        saved.append(account.to_doc())

    cfg = JudgeSettings(**({"client_grace_s": 0.0, "backoff_s": 0.0} | settings))
    judge = Judge(
        cfg,
        judge_spec,
        SimulatedClient(SimulatorConfig(time_scale=0.0)),
        feedback,
        JudgeAccount(cfg.daily_cap_usd),
        save,
        clock=lambda: NOW,
    )
    judge.saved = saved  # type: ignore[attr-defined]
    return judge


async def judged(judge: Judge, *exchanges: JudgedExchange) -> Judge:
    for ex in exchanges:
        judge.offer(ex)
    await judge.drain()
    return judge


# ---- the rubric -----------------------------------------------------------------------------


def test_a_verdict_is_the_papers_weighted_rubric() -> None:
    verdict = {"reasoning": 10, "instruction_following": 5, "communication": 0}
    assert reward_of(json.dumps(verdict)) == pytest.approx(0.4 * 1.0 + 0.3 * 0.5)
    assert reward_of(
        ' {"reasoning": 7.5, "instruction_following": 7.5, "communication": 7.5}\n'
    ) == (pytest.approx(0.75))


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The answer is good: 8/10",
        '```json\n{"reasoning": 8, "instruction_following": 8, "communication": 8}\n```',
        "[8, 8, 8]",
        '{"reasoning": 8, "instruction_following": 8}',  # one missing
        '{"reasoning": 11, "instruction_following": 8, "communication": 8}',  # out of range
        '{"reasoning": -1, "instruction_following": 8, "communication": 8}',
        '{"reasoning": "8", "instruction_following": 8, "communication": 8}',  # a string
        '{"reasoning": true, "instruction_following": 8, "communication": 8}',  # a bool
        '{"reasoning": NaN, "instruction_following": 8, "communication": 8}',
        '{"reasoning": null, "instruction_following": 8, "communication": 8}',
    ],
)
def test_no_malformed_out_of_range_or_missing_score_becomes_a_reward(answer: str) -> None:
    with pytest.raises(JudgeAnswerError):
        reward_of(answer)


def test_the_rubric_request_shows_the_conversation_and_the_answer_and_asks_for_json() -> None:
    req = judge_request(exchange("r1", "What is 2+2?"), JUDGE)
    assert req.model_id == "judge" and req.request_id == "judge-r1"
    assert req.response_format == {"type": "json_object"} and req.temperature == 0.0
    assert "What is 2+2?" in req.messages[1]["content"]
    assert "Recursion is ..." in req.messages[1]["content"]
    assert req.judged is not None and req.judged.spec == ANSWERER


# ---- the simulated judge ----------------------------------------------------------------------


def test_the_simulated_judge_scores_near_the_answering_models_reward() -> None:
    sim = Simulator(SimulatorConfig(time_scale=0.0))
    for quality in (0.2, 0.5, 0.9):
        spec = ANSWERER.model_copy(
            update={"simulation": SimBehaviour(reward_value=quality)}  # every answer's reward
        )
        rewards = [
            reward_of(sim.plan(req, JUDGE).content)
            for req in (judge_request(exchange(f"r{i}", spec=spec), JUDGE) for i in range(50))
        ]
        assert abs(sum(rewards) / len(rewards) - quality) < 0.01
        assert max(abs(r - quality) for r in rewards) < 0.1  # small noise
    for exact in (0.0, 1.0):  # no noise at the ends of the scale: clipping would bias it
        spec = ANSWERER.model_copy(update={"simulation": SimBehaviour(reward_value=exact)})
        req = judge_request(exchange("r", spec=spec), JUDGE)
        assert reward_of(sim.plan(req, JUDGE).content) == exact


# ---- the account ------------------------------------------------------------------------------


def test_the_account_holds_a_daily_cap_with_calls_in_flight_and_resets_at_utc_midnight() -> None:
    acct = JudgeAccount(daily_cap_usd=1.0)
    assert acct.reserve(0.6, NOW)
    assert not acct.reserve(0.6, NOW)  # 0.6 in flight: a second bound would pass the cap
    acct.settle(0.6, 0.5, NOW)  # it cost less than its bound
    assert acct.reserve(0.5, NOW) and not acct.reserve(0.01, NOW)
    acct.release(0.5)  # failed: nothing booked
    assert acct.figures(NOW)["spend_usd"] == pytest.approx(0.5)
    tomorrow = NOW + 86_400
    assert acct.reserve(1.0, tomorrow) and acct.figures(tomorrow)["spend_usd"] == 0.0
    again = JudgeAccount.from_doc(1.0, JudgeAccount(1.0, "2023-11-14", 0.9).to_doc())
    assert not again.reserve(0.2, NOW)  # a restart keeps the day's spend


# ---- the steps --------------------------------------------------------------------------------


async def test_judged_rewards_are_posted_once_and_spend_is_booked() -> None:
    feedback = RecordingFeedback()
    judge = await judged(make_judge(feedback), *(exchange(f"r{i}") for i in range(5)))
    assert set(feedback.applied) == {f"r{i}" for i in range(5)}
    assert all(0.0 <= r <= 1.0 for r in feedback.applied.values())
    stats = judge.stats()
    assert (stats["offered"], stats["judged"], stats["applied"], stats["failed"]) == (5, 5, 5, 0)
    assert stats["spend_usd"] > 0 and stats["reserved_usd"] == 0.0
    assert judge.saved[-1]["spent_usd"] == pytest.approx(stats["spend_usd"])
    await judged(judge, exchange("r0"))  # offered again: the first reward stands
    assert judge.stats()["skipped"] == 1 and len(feedback.applied) == 5


async def test_the_clients_feedback_wins_and_the_judge_then_spends_nothing() -> None:
    feedback = RecordingFeedback(client_first={"r1"})
    judge = await judged(make_judge(feedback), exchange("r1"), exchange("r2"))
    assert set(feedback.applied) == {"r2"}
    assert judge.stats()["reasons"] == {"skipped:client_feedback": 1}
    assert judge.stats()["judged"] == 1


async def test_the_grace_period_lets_a_late_client_win() -> None:
    feedback = RecordingFeedback()
    judge = make_judge(feedback, client_grace_s=0.2)  # the clock says: just answered
    judge.offer(exchange("r1"))
    await asyncio.sleep(0.05)
    feedback.client.add("r1")  # the client posts within the grace period
    await judge.drain()
    assert feedback.applied == {} and judge.stats()["skipped"] == 1


async def test_the_daily_cap_skips_what_does_not_fit() -> None:
    feedback = RecordingFeedback()
    judge = await judged(
        make_judge(feedback, daily_cap_usd=0.003), *(exchange(f"r{i}") for i in range(10))
    )
    stats = judge.stats()
    assert 0 < stats["applied"] < 10
    assert stats["reasons"]["skipped:daily_cap"] == 10 - stats["applied"]
    assert stats["spend_usd"] <= 0.003


async def test_failing_judge_calls_are_retried_then_counted_and_dropped() -> None:
    feedback = RecordingFeedback()
    broken = JUDGE.model_copy(update={"simulation": SimBehaviour(error_rate=1.0)})
    judge = await judged(make_judge(feedback, broken, max_attempts=3), exchange("r1"))
    stats = judge.stats()
    assert (stats["failed"], stats["applied"], stats["spend_usd"]) == (1, 0, 0.0)
    assert stats["reasons"] == {"failed:provider": 1} and stats["reserved_usd"] == 0.0
    assert feedback.applied == {}


async def test_an_exchange_past_the_outstanding_limit_is_skipped_not_queued() -> None:
    judge = make_judge(RecordingFeedback(), max_outstanding=2)
    accepted = [judge.offer(exchange(f"r{i}")) for i in range(3)]
    await judge.drain()
    assert accepted == [True, True, False]
    assert judge.stats()["reasons"] == {"skipped:queue_full": 1}


# ---- sampling and settings ----------------------------------------------------------------------


def _decision(routed: bool, forced: bool) -> RouteDecision:
    return RouteDecision(
        request_id="r", model="answerer", t=1, dual=0.0, forced=forced, routed=routed, spec=ANSWERER
    )


def test_sampling_takes_a_share_of_routed_answers_and_every_forced_pull() -> None:
    sampler = JudgeSampler(0.2, seed=1)
    share = sum(sampler.wants(_decision(True, False)) for _ in range(10_000)) / 10_000
    assert abs(share - 0.2) < 0.02
    assert all(JudgeSampler(0.0).wants(_decision(True, True)) for _ in range(10))
    assert not any(JudgeSampler(1.0).wants(_decision(False, False)) for _ in range(10))


def _args(**judge) -> dict:
    return {
        "budget_usd_per_request": 1e-3,
        "models": [ANSWERER.model_dump(), JUDGE.model_dump()],
        "judge": judge,
    }


def test_the_judge_is_on_with_simulated_providers_and_off_with_a_real_one() -> None:
    assert AppArgs.model_validate(_args()).judge_spec() == JUDGE  # the dearest model
    assert AppArgs.model_validate(_args(model="answerer")).judge_spec() == ANSWERER
    real = _args() | {
        "providers": {"simulated": {"kind": "simulated"}, "openai": {"kind": "openai"}}
    }
    assert AppArgs.model_validate(real).judge_spec() is None
    forced_on = real | {"judge": {"enabled": True, "model": "judge"}}
    assert AppArgs.model_validate(forced_on).judge_spec() == JUDGE
    with pytest.raises(ValueError, match="not a registered model"):
        AppArgs.model_validate(_args(model="nope"))
    with pytest.raises(ValueError, match="sample_rate"):
        AppArgs.model_validate(_args(sample_rate=1.5))
