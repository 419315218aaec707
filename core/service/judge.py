"""The Judge: scores sampled answers with a judge model and posts the score as feedback.

Plain async code over ports (no Ray): deployments/judge.py adapts Serve handles to them.
For each offered exchange (core/service/judge_sampling.py decides which):

1. wait `client_grace_s` after the answer: the application's own feedback wins, so if it has
   arrived by then the exchange is skipped and nothing is spent;
2. reserve the call's cost bound in the judge's daily account (JudgeAccount), else skip;
3. ask the judge model through the provider port with the rubric (core/service/judge_rubric.py),
   retrying a retryable failure with doubling backoff, then counting it failed and dropping it;
4. book the realised cost (the judge's account only, never a routing budget);
5. a verdict that is not valid JSON with every criterion in range is failed, no reward;
6. post the reward through the feedback port: the same exactly-once path as a client's, so a
   client's feedback that arrived meanwhile makes the judge's a duplicate (counted skipped).

What is waiting or in flight lives in memory: a restart of the Judge loses those exchanges
(they are samples; none is half-applied), never the day's spend, which is saved after each call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from core.method.costs import realised_cost_usd
from core.method.registry import ModelSpec
from core.replay.simulator import prompt_tokens_of
from core.service.judge_account import JudgeAccount
from core.service.judge_rubric import (
    JUDGE_MAX_TOKENS,
    JudgeAnswerError,
    JudgedExchange,
    judge_request,
    reward_of,
)
from core.service.ports import ProviderError, ProviderPort
from core.service.protocol import ProviderRequest, ProviderResponse
from core.service.settings import JudgeSettings


class FeedbackPort(Protocol):
    """The exactly-once feedback path (the Feedback deployment)."""

    async def has_feedback(self, request_id: str) -> bool: ...

    async def submit(self, request_id: str, reward: float) -> str:
        """'applied' or 'duplicate'; raises for an unknown (expired) request id."""
        ...


class Judge:
    def __init__(
        self,
        settings: JudgeSettings,
        spec: ModelSpec,
        providers: ProviderPort,
        feedback: FeedbackPort,
        account: JudgeAccount,
        save_account: Callable[[JudgeAccount], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ) -> None:
        self.settings, self.spec = settings, spec
        self.providers, self.feedback = providers, feedback
        self.account, self.save_account = account, save_account
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # why exchanges were skipped or failed
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._on_outcome: Callable[[str], None] = lambda outcome: None

    def on_outcome(self, callback: Callable[[str], None]) -> None:
        """Called with each outcome as it is counted (offered, judged, applied, skipped,
        failed): the deployment's metrics."""
        self._on_outcome = callback

    def _count(self, outcome: str, reason: str | None = None) -> None:
        self.counts[outcome] += 1
        if reason is not None:
            self.reasons[f"{outcome}:{reason}"] += 1
        self._on_outcome(outcome)

    # ---- intake -------------------------------------------------------------------------

    def offer(self, exchange: JudgedExchange) -> bool:
        """Take an answered exchange to judge later; False (counted skipped) when too many
        are already waiting."""
        self._count("offered")
        if len(self._tasks) >= self.settings.max_outstanding:
            self._count("skipped", "queue_full")
            return False
        task = asyncio.get_running_loop().create_task(self._judge(exchange))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait until every offered exchange is finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def outstanding(self) -> int:
        return len(self._tasks)

    # ---- one exchange ---------------------------------------------------------------------

    async def _judge(self, exchange: JudgedExchange) -> None:
        try:
            await self._steps(exchange)
        except Exception:  # counted, logged, dropped: never a crash of the replica's loop
            self._count("failed", "internal")
            self.log.exception("judging %s failed", exchange.request_id)

    async def _steps(self, exchange: JudgedExchange) -> None:
        rid = exchange.request_id
        wait = exchange.answered_at + self.settings.client_grace_s - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self._slots:
            if await self.feedback.has_feedback(rid):
                self._count("skipped", "client_feedback")
                return
            req = judge_request(exchange, self.spec)
            bound = realised_cost_usd(
                prompt_tokens_of(req),
                req.max_tokens or JUDGE_MAX_TOKENS,
                self.spec.input_per_m,
                self.spec.output_per_m,
            )
            if not self.account.reserve(bound, self.clock()):
                self._count("skipped", "daily_cap")
                return
            try:
                resp = await self._ask(req)
            except ProviderError as exc:
                self.account.release(bound)
                self._count("failed", "provider")
                self.log.warning("judge call for %s failed: %s", rid, exc)
                return
            except BaseException:  # anything else (or cancellation): nothing stays reserved
                self.account.release(bound)
                raise
            cost = realised_cost_usd(
                resp.usage.prompt_tokens,
                resp.usage.completion_tokens,
                self.spec.input_per_m,
                self.spec.output_per_m,
            )
            self.account.settle(bound, cost, self.clock())
            await self.save_account(self.account)
        self._count("judged")
        try:
            reward = reward_of(resp.content)
        except JudgeAnswerError as exc:
            self._count("failed", "invalid_verdict")
            self.log.warning("judge verdict for %s refused: %s", rid, exc)
            return
        try:
            status = await self.feedback.submit(rid, reward)
        except Exception as exc:  # an unknown (expired) id, or the feedback path down
            self._count("failed", "feedback")
            self.log.warning("judge feedback for %s not applied: %s", rid, exc)
            return
        if status == "applied":
            self._count("applied")
        else:  # the client's feedback arrived while the judge was scoring: the client's wins
            self._count("skipped", "client_feedback")

    async def _ask(self, req: ProviderRequest) -> ProviderResponse:
        """The judge call, retried with doubling backoff while the failure is retryable."""
        s = self.settings
        for attempt in range(s.max_attempts):
            try:
                return await self.providers.complete(req)
            except ProviderError as exc:
                if attempt == s.max_attempts - 1 or not exc.retryable:
                    raise
                await asyncio.sleep(s.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    # ---- reporting ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The figures /admin/state reports under `judge`."""
        outcomes = ("offered", "judged", "applied", "skipped", "failed")
        return {
            "enabled": True,
            "model": self.spec.id,
            "sample_rate": self.settings.sample_rate,
            "client_grace_s": self.settings.client_grace_s,
            **{k: self.counts[k] for k in outcomes},
            "reasons": dict(sorted(self.reasons.items())),
            "outstanding": self.outstanding,
            **self.account.figures(self.clock()),
        }
