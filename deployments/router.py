"""The Router deployment: the one stateful replica. A thin async shell over a DurableRouter.

Decisions are made on the event loop (microseconds). Everything that touches the database runs
in the DurableRouter's writer task (core/state/durable.py), in order, in a worker thread:
decision records are flushed, then each charge or feedback is journalled durably and only then
applied and acknowledged (write-ahead), then a snapshot is taken when due. A killed replica
restarts from the last snapshot plus the journal, so an acknowledged feedback is applied
exactly once.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Gauge

from core.method.registry import ModelSpec
from core.method.router import FeedbackStatus, RouteLimits, Router
from core.service.decision import RouteDecision
from core.service.settings import RouterSettings
from core.service.warm_start import fresh_router
from core.state.durable import DurableRouter
from core.state.reconcile import reconcile
from core.state.store import StateStore

log = logging.getLogger("ray.serve")
REGISTRY_DOC = "registry"


def registry_table(store: StateStore, default: list[ModelSpec]) -> tuple[list[ModelSpec], int]:
    """The registry's persisted model table, or the configured one before the first change."""
    doc = store.get_doc(REGISTRY_DOC)
    if doc is None:
        return default, 0
    return [ModelSpec.model_validate(m) for m in doc[0]["models"]], doc[1]


@serve.deployment(name="Router")  # replica options: graphs/app.py, from the settings tree
class RouterDeployment:
    def __init__(self, settings: RouterSettings | dict) -> None:
        self.settings = RouterSettings.model_validate(settings)
        self.store = StateStore(self.settings.state_path)
        table, _ = registry_table(self.store, self.settings.models)
        self.durable, self.recovery = DurableRouter.open(
            self.store, lambda: self._fresh_router(table), self.settings.durability, time.time()
        )
        # Cool-downs are transient (not in snapshots): a restarted router tries every model.
        self.durable.router.configure_cooldowns(self.settings.faults)
        changed = reconcile(self.durable.router, table)  # registry changes made while down
        log.info("router ready: %s; registry reconciled: %s", self.recovery, changed or "none")
        self._m_decisions = Counter(
            "paretoserve_decisions", "routing decisions", tag_keys=("model", "routed")
        )
        self._m_feedback = Counter(
            "paretoserve_feedback", "feedback by outcome", tag_keys=("status",)
        )
        self._m_spend = Counter("paretoserve_spend_usd", "realised spend", tag_keys=("model",))
        self._m_dual = Gauge("paretoserve_pacer_dual", "the pacer's dual variable")
        self._m_ema = Gauge("paretoserve_pacer_spend_ema_usd", "spend EMA per request")
        self._m_budget = Gauge("paretoserve_pacer_budget_usd", "budget per request")
        self._m_fallbacks = Counter(
            "paretoserve_fallbacks",
            "requests moved to another model after a provider failure",
            tag_keys=("from_model", "to_model"),
        )
        self._m_cooldowns = Counter(
            "paretoserve_cooldowns",
            "models cooled down after a provider failure",
            tag_keys=("model", "status"),
        )

    def _fresh_router(self, table: list[ModelSpec]) -> Router:
        # No snapshot yet: the configured tuning and table, warm-started as priors_path says
        # (core/service/warm_start.py: a stale default priors file is a warning, not an error).
        start = fresh_router(self.settings, table)
        (log.warning if start.refused else log.info)("%s", start.note)
        return start.router

    # ---- the request path ---------------------------------------------------------------

    async def route(
        self,
        x: list[float],
        limits: dict | None = None,
        model: str | None = None,
        request_id: str | None = None,
    ) -> RouteDecision:
        self._start_writer()
        d = self.durable.route(
            np.asarray(x, dtype=np.float64),
            RouteLimits.model_validate(limits) if limits else None,
            model,
            time.time(),
            request_id,
        )
        self._m_decisions.inc(tags={"model": d.model, "routed": str(not d.direct).lower()})
        return self._decision(d)

    def _decision(self, d) -> RouteDecision:
        return RouteDecision.of(d, self.durable.router.registry.specs[d.model])

    async def resume(self, request_id: str, direct: bool = False) -> RouteDecision | None:
        """The pending decision under `request_id` (see core.method.router.Router.resume)."""
        d = self.durable.router.resume(request_id, direct)
        return None if d is None else self._decision(d)

    async def fallback(
        self,
        request_id: str,
        failed_model: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        limits: dict | None = None,
    ) -> RouteDecision | None:
        """The request's model failed (after retries): cool it down and re-decide (see
        core.method.router.Router.fallback). None: no fallback left, the decision is dropped."""
        self._start_writer()
        d = self.durable.fallback(
            request_id,
            failed_model,
            time.time(),
            status,
            retry_after_s,
            RouteLimits.model_validate(limits) if limits else None,
        )
        self._m_cooldowns.inc(tags={"model": failed_model, "status": str(status)})
        if d is None:
            return None
        self._m_fallbacks.inc(tags={"from_model": failed_model, "to_model": d.model})
        return self._decision(d)

    async def fail(
        self,
        request_id: str | None,
        model: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        cool: bool = True,
    ) -> dict | None:
        """The request failed for good on `model` (no fallback): cool the model down (unless
        `cool` is False) and drop the decision (a failed attempt is no reward signal and is not
        charged). Returns the model's cool-down, if any."""
        self._start_writer()
        now = time.time()
        cd = self.durable.fail(request_id, model, now, status, retry_after_s, cool)
        if cd is None:
            return None
        self._m_cooldowns.inc(tags={"model": model, "status": str(status)})
        return cd.to_json(now)

    async def charge(
        self,
        request_id: str,
        cost_usd: float,
        model: str = "",
        x: list[float] | None = None,
        forced: bool = False,
    ) -> str:
        """Charge an answered request, write-ahead (core.state.durable.DurableRouter.charge).
        With its context `x`, a decision this replica does not know (made by a predecessor that
        died before flushing it) or keyed to another model (a lost fallback re-key) is first
        restored, so the answer is always accounted."""
        status = await self.durable.charge(
            request_id,
            cost_usd,
            time.time(),
            model,
            None if x is None else np.asarray(x, dtype=np.float64),
            forced,
        )
        if status == FeedbackStatus.APPLIED:
            self._m_spend.inc(cost_usd, tags={"model": model or "unknown"})
        self._publish_pacer()
        return status.value

    async def feedback(self, request_id: str, reward: float) -> str:
        status = await self.durable.feedback(request_id, reward, time.time())
        self._m_feedback.inc(tags={"status": status.value})
        return status.value

    async def explain(self, x: list[float], limits: dict | None = None) -> dict:
        lim = RouteLimits.model_validate(limits) if limits else None
        return self.durable.router.explain(np.asarray(x, dtype=np.float64), lim, time.time())

    # ---- administration (pushed by the Registry) ----------------------------------------

    async def apply_registry(self, table: list[dict]) -> list[str]:
        changes = reconcile(self.durable.router, [ModelSpec.model_validate(m) for m in table])
        if changes:
            await self.durable.snapshot_now()
        return changes

    async def set_budget(self, usd_per_request: float) -> dict:
        self.durable.router.set_budget(usd_per_request)
        await self.durable.snapshot_now()
        self._publish_pacer()
        return await self.state()

    async def state(self) -> dict:
        return {
            **self.durable.router.state(time.time()),
            "recovery": vars(self.recovery),
            "journal_seq": self.durable.applied_seq,
        }

    # ---- the writer (core.state.durable.DurableRouter: all database work, in order) -------

    def _start_writer(self) -> None:
        self.durable.start_writer()

    def _publish_pacer(self) -> None:
        p = self.durable.router.pacer
        self._m_dual.set(p.dual)
        self._m_ema.set(p.state.cost_ema)
        self._m_budget.set(p.budget)
