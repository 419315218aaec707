"""The Judge deployment: scores sampled answers and posts the scores as feedback
(core/service/judge.py has the steps). One replica: it owns the judge's daily spend account,
kept in the state store so that a restart keeps the day's spend."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge

from core.method.registry import ModelSpec
from core.service.judge import Judge
from core.service.judge_account import JudgeAccount
from core.service.judge_rubric import JudgedExchange
from core.service.settings import JudgeSettings
from core.state.open_store import open_store
from deployments.ports import ServeProviders

JUDGE_DOC = "judge_account"
log = logging.getLogger("ray.serve")


class _Feedback:
    """The Feedback deployment as the Judge's feedback port."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def has_feedback(self, request_id: str) -> bool:
        return await self.handle.has_feedback.remote(request_id)

    async def submit(self, request_id: str, reward: float) -> str:
        return await self.handle.submit.remote(request_id, reward)


@serve.deployment(name="Judge")  # replica options: graphs/app.py, from the settings tree
class JudgeDeployment:
    def __init__(
        self,
        settings: JudgeSettings | dict,
        spec: ModelSpec | dict,
        feedback: DeploymentHandle,
        providers: dict[str, DeploymentHandle],
        state_path: str,
    ) -> None:
        settings = JudgeSettings.model_validate(settings)
        spec = ModelSpec.model_validate(spec)
        self.store = open_store(state_path)
        stored = self.store.get_doc(JUDGE_DOC)
        doc, self.version = stored if stored is not None else (None, 0)
        self._saving = asyncio.Lock()
        self._m_outcomes = Counter(
            "paretoserve_judge_exchanges", "judged exchanges by outcome", tag_keys=("outcome",)
        )
        self._m_spend = Gauge("paretoserve_judge_spend_usd", "judge spend this UTC day")
        self.judge = Judge(
            settings,
            spec,
            ServeProviders(providers, lambda hop, ms: None),
            _Feedback(feedback),
            JudgeAccount.from_doc(settings.daily_cap_usd, doc),
            self._save,
            log=log,
        )
        self.judge.on_outcome(lambda outcome: self._m_outcomes.inc(tags={"outcome": outcome}))

    async def _save(self, account: JudgeAccount) -> None:
        """Persist the account as it is now; one write at a time, versions in order."""
        async with self._saving:
            doc = account.to_doc()
            await asyncio.to_thread(self.store.put_doc, JUDGE_DOC, doc, self.version + 1)
            self.version += 1
        self._m_spend.set(doc["spent_usd"])

    async def offer(self, exchange: JudgedExchange) -> bool:
        return self.judge.offer(exchange)

    async def stats(self) -> dict[str, Any]:
        return self.judge.stats()

    async def drain(self) -> dict[str, Any]:
        """Wait for every offered exchange to finish; the figures after (load runs, tests)."""
        await self.judge.drain()
        return self.judge.stats()
