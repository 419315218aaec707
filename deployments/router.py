"""The Router deployment: the one stateful replica. A thin async shell over a DurableRouter.

Decisions are made on the event loop (microseconds). Everything that touches the database runs
in the DurableRouter's writer task (core/state/durable.py), in order, in a worker thread:
decision records are flushed, then each charge or feedback is journalled durably and only then
applied and acknowledged (write-ahead), then a snapshot is taken when due. A killed replica
restarts from the last snapshot plus the journal, so an acknowledged feedback is applied
exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Gauge

from core.method.registry import ModelSpec
from core.method.router import FeedbackStatus, RouteLimits, Router
from core.method.tenants import TenantBudgetExhaustedError, TenantSpec, key_digest
from core.service.decision import RouteDecision
from core.service.settings import RouterSettings
from core.service.warm_start import fresh_router
from core.state.durable import DurableRouter
from core.state.open_store import Store, open_store
from core.state.reconcile import reconcile

log = logging.getLogger("ray.serve")
REGISTRY_DOC = "registry"


def registry_table(store: Store, default: list[ModelSpec]) -> tuple[list[ModelSpec], int]:
    """The registry's persisted model table, or the configured one before the first change."""
    doc = store.get_doc(REGISTRY_DOC)
    if doc is None:
        return default, 0
    return [ModelSpec.model_validate(m) for m in doc[0]["models"]], doc[1]


@serve.deployment(name="Router")  # replica options: graphs/app.py, from the settings tree
class RouterDeployment:
    def __init__(self, settings: RouterSettings | dict) -> None:
        self.settings = RouterSettings.model_validate(settings)
        self.store = open_store(self.settings.state_path)
        table, _ = registry_table(self.store, self.settings.models)
        self.durable, self.recovery = DurableRouter.open(
            self.store, lambda: self._fresh_router(table), self.settings.durability, time.time()
        )
        # Cool-downs are transient (not in snapshots): a restarted router tries every model.
        self.durable.router.configure_cooldowns(self.settings.faults)
        changed = reconcile(self.durable.router, table)  # registry changes made while down
        log.info("router ready: %s; registry reconciled: %s", self.recovery, changed or "none")
        router, now = self.durable.router, time.time()
        for spec in self.settings.tenants:  # the configured ones, unless they exist already
            if spec.id not in router.tenants:
                router.add_tenant(spec, now)
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
        tenant = ("tenant",)
        self._m_tenant_spend = Gauge(
            "paretoserve_tenant_spend_usd", "spend this period", tag_keys=tenant
        )
        self._m_tenant_remaining = Gauge(
            "paretoserve_tenant_remaining_usd",
            "budget left this period, after reservations",
            tag_keys=tenant,
        )
        self._m_tenant_dual = Gauge("paretoserve_tenant_dual", "the tenant's dual", tag_keys=tenant)
        self._m_tenant_requests = Counter(
            "paretoserve_tenant_requests", "requests routed", tag_keys=tenant
        )
        self._m_tenant_degraded = Counter(
            "paretoserve_tenant_degraded",
            "requests sent to a cheaper model because the cap left out a better one",
            tag_keys=tenant,
        )
        self._m_tenant_refused = Counter(
            "paretoserve_tenant_refused", "requests refused: nothing fits the cap", tag_keys=tenant
        )
        for t in self.durable.router.tenants:
            self._publish_tenant(t.id)

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
        tenant: str | None = None,
    ) -> RouteDecision:
        self._start_writer()
        degraded = 0
        if tenant is not None:
            degraded = self.durable.router.tenants.get(tenant).account.degraded
        try:
            d = self.durable.route(
                np.asarray(x, dtype=np.float64),
                RouteLimits.model_validate(limits) if limits else None,
                model,
                time.time(),
                request_id,
                tenant,
            )
        except TenantBudgetExhaustedError:
            self._m_tenant_refused.inc(tags={"tenant": tenant})
            self._publish_tenant(tenant)
            raise
        self._m_decisions.inc(tags={"model": d.model, "routed": str(not d.direct).lower()})
        if tenant is not None:
            tags = {"tenant": tenant}
            self._m_tenant_requests.inc(tags=tags)
            if self.durable.router.tenants.get(tenant).account.degraded > degraded:
                self._m_tenant_degraded.inc(tags=tags)
            self._publish_tenant(tenant)
        if d.reserved_usd:
            # A reservation must outlive a crash before the request goes out: a restarted
            # Router that lost it would let other requests spend the same money.
            await self.durable.recorded()
        return self._decision(d)

    def _decision(self, d) -> RouteDecision:
        return RouteDecision.of(d, self.durable.router.registry.specs[d.model])

    async def resume(self, request_id: str, direct: bool = False) -> RouteDecision | None:
        """The pending decision under `request_id` (see core.method.router.Router.resume)."""
        d = self.durable.resume(request_id, direct)
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
        tenant: str | None = None,
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
            tenant,
        )
        if status == FeedbackStatus.APPLIED:
            self._m_spend.inc(cost_usd, tags={"model": model or "unknown"})
        self._publish_pacer()
        if tenant is not None and tenant in self.durable.router.tenants:
            self._publish_tenant(tenant)
        return status.value

    async def charge_many(self, charges: list[tuple]) -> list[str | Exception]:
        """`charge(*c)` for each of the charges an Ingress gathered, journalled in one writer
        batch (one fsync); a charge that fails gives its exception, the others still land."""
        return await asyncio.gather(*(self.charge(*c) for c in charges), return_exceptions=True)

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

    # ---- tenants (core/method/tenants.py), changed by the admin API ---------------------

    async def add_tenant(self, spec: dict) -> dict:
        report = self.durable.router.add_tenant(TenantSpec.model_validate(spec), time.time())
        await self.durable.snapshot_now()
        self._publish_tenant(report["id"])
        return report

    async def update_tenant(self, tenant_id: str, changes: dict) -> dict:
        """Changes some of a tenant's settings (the others stay)."""
        router = self.durable.router
        current = router.tenants.get(tenant_id).spec.model_dump()
        spec = TenantSpec.model_validate({**current, **changes, "id": tenant_id})
        report = router.update_tenant(spec, time.time())
        await self.durable.snapshot_now()
        self._publish_tenant(tenant_id)
        return report

    async def remove_tenant(self, tenant_id: str) -> dict:
        self.durable.router.remove_tenant(tenant_id)
        await self.durable.snapshot_now()
        return {"id": tenant_id, "deleted": True}

    async def tenant(self, tenant_id: str) -> dict:
        return self.durable.router.tenant_report(tenant_id, time.time())

    async def tenants(self) -> list[dict]:
        return self.durable.router.tenant_reports(time.time())

    async def create_tenant_key(self, tenant_id: str) -> dict:
        """A new API key of the tenant: returned once, kept only as its SHA-256."""
        api_key = "pst-" + secrets.token_urlsafe(32)
        key_id = "key-" + secrets.token_hex(6)
        now = time.time()
        self.durable.router.add_tenant_key(tenant_id, key_digest(api_key), key_id, now)
        await self.durable.snapshot_now()
        return {"tenant": tenant_id, "key_id": key_id, "api_key": api_key, "created_at": now}

    async def revoke_tenant_key(self, tenant_id: str, key_id: str) -> bool:
        revoked = self.durable.router.revoke_tenant_key(tenant_id, key_id)
        if revoked:
            await self.durable.snapshot_now()
        return revoked

    async def tenant_of_key(self, digest: str) -> str | None:
        return self.durable.router.tenant_of_key(digest)

    async def state(self) -> dict:
        return {
            **self.durable.router.state(time.time()),
            "recovery": vars(self.recovery),
            "journal_seq": self.durable.applied_seq,
        }

    async def check_health(self) -> None:
        """Serve asks every `health_check_period_s` (10 s by default). The gauges are set
        again here: Ray drops a gauge from its metrics endpoint two report intervals (20 s)
        after its last set, so an idle service would show no budget, dual or tenant spend."""
        self._publish_pacer()
        for t in self.durable.router.tenants:
            self._publish_tenant(t.id)

    # ---- the writer (core.state.durable.DurableRouter: all database work, in order) -------

    def _start_writer(self) -> None:
        self.durable.start_writer()

    def _publish_tenant(self, tenant_id: str) -> None:
        spend, remaining, dual = self.durable.router.tenant_gauges(tenant_id, time.time())
        tags = {"tenant": tenant_id}
        self._m_tenant_spend.set(spend, tags=tags)
        if remaining is not None:
            self._m_tenant_remaining.set(remaining, tags=tags)
        if dual is not None:
            self._m_tenant_dual.set(dual, tags=tags)

    def _publish_pacer(self) -> None:
        p = self.durable.router.pacer
        self._m_dual.set(p.dual)
        self._m_ema.set(p.state.cost_ema)
        self._m_budget.set(p.budget)
