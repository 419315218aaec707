"""Tenants: who pays for a request, with their own spend target, period budget and hard cap.

One bandit learns quality from every tenant; what is per tenant is money: a pacer (its own dual
and running balance, see core/method/pacer.py) at the tenant's target per request, the spend
of the current period, and the reservations of its requests in flight.

Period pacing: a tenant with `budget_usd` per `day` or `month` (UTC) has no fixed target per
request. Its target is what is left of the period budget over the requests it is expected to
send before the period ends, at its recently observed rate (a decayed count, time constant
`rate_window_s`), so spend lands near the budget by the period's end without knowing the
traffic in advance; a change of rate moves the target within about one window. With
`usd_per_request` too, the lower of the two applies.

Hard cap (`hard_cap: true`): spend in a period never exceeds the budget. A route reserves an
upper bound of the request's cost (prompt bound x input price + output tokens allowed x output
price); models whose bound does not fit what is left are not eligible (an output limit may be
lowered to fit, down to `min_output_tokens`), so traffic moves to cheaper models before
anything is refused; the charge settles the realised cost, a failure releases the bound.
"""

from __future__ import annotations

import calendar
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.method.errors import RouterError

TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_USD_PER_REQUEST = 1000.0
MAX_PERIOD_BUDGET_USD = 1e9


class Period(str, Enum):
    DAY = "day"
    MONTH = "month"


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """The UTC period holding `now` (unix seconds): (start, end)."""
    d = datetime.fromtimestamp(now, UTC)
    if period == Period.DAY:
        start = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        return start, start + 86_400.0
    start = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
    return start, start + 86_400.0 * calendar.monthrange(d.year, d.month)[1]


class TenantSpec(BaseModel):
    """A tenant as configured (serve_config.yaml `args.tenants`, or the admin API)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., pattern=TENANT_ID_PATTERN, description="letters, digits, . _ -; 1-64")
    usd_per_request: float | None = Field(
        None, gt=0.0, le=MAX_USD_PER_REQUEST, description="target spend per request, US$"
    )
    budget_usd: float | None = Field(
        None, gt=0.0, le=MAX_PERIOD_BUDGET_USD, description="budget per period, US$"
    )
    period: Period = Period.DAY
    hard_cap: bool = Field(False, description="spend in a period never exceeds budget_usd")
    pace_period: bool = Field(
        True,
        description="pace spend to land on budget_usd by the period's end; false: the "
        "period budget is only counted (and capped, with hard_cap), requests are paced at "
        "usd_per_request or the service's target",
    )

    @model_validator(mode="after")
    def _cap_needs_budget(self) -> TenantSpec:
        if self.hard_cap and self.budget_usd is None:
            raise ValueError("hard_cap: needs budget_usd (the cap)")
        return self


class TenantSettings(BaseModel):
    """How tenants are paced and capped (RouterConfig.tenants)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_window_s: float = Field(
        3600.0, gt=0.0, description="time constant of a tenant's observed request rate"
    )
    min_output_tokens: int = Field(
        16, ge=1, description="a capped request's output limit is never lowered below this"
    )
    default_output_tokens: int = Field(
        4096,
        ge=1,
        description="the output a capped request reserves when neither it nor the model "
        "sets a limit (and the limit sent upstream)",
    )
    prompt_token_margin: float = Field(
        1.25, ge=1.0, description="the reserved prompt tokens: the estimate x this margin"
    )


class UnknownTenantError(RouterError, KeyError):
    def __init__(self, tenant: str) -> None:
        super().__init__(tenant)
        self.tenant = tenant

    def __str__(self) -> str:
        return f"unknown tenant {self.tenant!r}"


class TenantExistsError(RouterError):
    def __init__(self, tenant: str) -> None:
        super().__init__(tenant)
        self.tenant = tenant

    def __str__(self) -> str:
        return f"tenant {self.tenant!r} exists already (PATCH it to change it)"


class TenantBudgetExhaustedError(RouterError):
    """A capped tenant cannot afford any eligible model now: until its requests in flight
    settle (`in_flight_usd` reserved, a retry soon may fit), or until its period resets."""

    def __init__(
        self,
        tenant: str,
        remaining_usd: float,
        needed_usd: float,
        reset_at: float,
        in_flight_usd: float = 0.0,
    ):
        # All fields in args: the exception pickles whole across Ray processes.
        super().__init__(tenant, remaining_usd, needed_usd, reset_at, in_flight_usd)
        self.tenant, self.remaining_usd = tenant, remaining_usd
        self.needed_usd, self.reset_at = needed_usd, reset_at
        self.in_flight_usd = in_flight_usd

    @property
    def may_fit_soon(self) -> bool:
        """What requests in flight hold back would make room when they settle."""
        return self.remaining_usd + self.in_flight_usd >= self.needed_usd

    def retry_after_s(self, now: float) -> float:
        return 1.0 if self.may_fit_soon else max(self.reset_at - now, 0.0)

    def __str__(self) -> str:
        reset = datetime.fromtimestamp(self.reset_at, UTC).isoformat()
        held = (
            f" (${self.in_flight_usd:.6g} more is reserved by its requests in flight; retry "
            f"when they settle)"
            if self.may_fit_soon
            else ""
        )
        return (
            f"tenant {self.tenant!r} has ${self.remaining_usd:.6g} left of its budget this "
            f"period, less than the cheapest eligible model's bound (${self.needed_usd:.6g})"
            f"{held}; the budget resets at {reset}"
        )


def key_digest(api_key: str) -> str:
    """What is stored of a tenant key: its SHA-256 (the keys are random, so no salt is
    needed to stop a dictionary attack)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass
class DecayedRate:
    """Requests per second over about the last `window_s`: a count decayed by exp(-dt/window)."""

    count: float = 0.0
    at: float | None = None  # time of the last observation
    since: float | None = None  # first observation

    def observe(self, now: float, window_s: float) -> None:
        if self.at is not None and now > self.at:
            self.count *= math.exp(-(now - self.at) / window_s)
        self.count += 1.0
        self.at = now if self.at is None else max(self.at, now)
        self.since = now if self.since is None else self.since

    def per_s(self, now: float, window_s: float) -> float | None:
        """None before two observations span any time."""
        if self.at is None or self.since is None:
            return None
        seen = max(now - self.since, 0.0)
        if seen <= 0.0:
            return None
        # At a steady rate r the decayed count is r x window x (1 - exp(-seen / window)):
        # r x window after a long history, r x seen over a short one.
        decayed = self.count * math.exp(-max(now - self.at, 0.0) / window_s)
        return decayed / (window_s * (1.0 - math.exp(-seen / window_s)))


@dataclass
class TenantAccount:
    """A tenant's money in the current period and its counts."""

    period_start: float
    period_end: float
    spent_usd: float = 0.0
    reserved: dict[str, float] = field(default_factory=dict)  # request id -> bound held
    requests: int = 0
    degraded: int = 0
    refused: int = 0
    total_spent_usd: float = 0.0
    charges: int = 0
    rate: DecayedRate = field(default_factory=DecayedRate)

    @property
    def reserved_usd(self) -> float:
        return math.fsum(self.reserved.values())


class Tenant:
    """One tenant: its spec, its account and its API key digests. The pacer it uses lives in
    the Router (core.method.router), which picks it per request."""

    def __init__(self, spec: TenantSpec, now: float, settings: TenantSettings) -> None:
        self.spec = spec
        self.settings = settings
        start, end = period_bounds(spec.period, now)
        self.account = TenantAccount(start, end)
        self.keys: dict[str, dict] = {}  # digest -> {"key_id", "created_at"}

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def paced(self) -> bool:
        """Has a target of its own (else the service-wide budget paces its requests)."""
        spec = self.spec
        return spec.usd_per_request is not None or (
            spec.budget_usd is not None and spec.pace_period
        )

    @property
    def capped(self) -> bool:
        return self.spec.hard_cap

    def update(self, spec: TenantSpec, now: float) -> None:
        """New settings; a new period kind starts a new period (spend counted from now)."""
        if spec.period != self.spec.period:
            start, end = period_bounds(spec.period, now)
            self.account.period_start, self.account.period_end = start, end
            self.account.spent_usd = 0.0
        self.spec = spec

    def roll(self, now: float) -> None:
        """Start a new period when `now` is past the current one (reservations carry over)."""
        acct = self.account
        if now >= acct.period_end or now < acct.period_start - 86_400.0:
            acct.period_start, acct.period_end = period_bounds(self.spec.period, now)
            acct.spent_usd = 0.0

    def remaining(self) -> float | None:
        """Budget left this period after spend and reservations (None: no period budget)."""
        b = self.spec.budget_usd
        if b is None:
            return None
        return b - self.account.spent_usd - self.account.reserved_usd

    def target(self, now: float) -> float | None:
        """The spend per request to pace at now (None: the service-wide budget's)."""
        spec, acct = self.spec, self.account
        fixed = spec.usd_per_request
        if spec.budget_usd is None or not spec.pace_period:
            return fixed
        left = max(spec.budget_usd - acct.spent_usd, 0.0)
        rate = acct.rate.per_s(now, self.settings.rate_window_s)
        if rate is None:  # nothing seen yet: at most the fixed target, else a 1,000th
            paced = spec.budget_usd / 1000.0
        else:
            expected = rate * max(acct.period_end - now, 0.0)
            paced = left / max(expected, 1.0)
        # The pacer needs a positive target; at zero left the cap (if any) refuses anyway.
        paced = max(paced, spec.budget_usd * 1e-9)
        return paced if fixed is None else min(paced, fixed)

    # ---- the request path ----------------------------------------------------------------

    def arrived(self, now: float) -> None:
        self.roll(now)
        self.account.requests += 1
        self.account.rate.observe(now, self.settings.rate_window_s)

    def reserve(self, request_id: str, usd: float) -> None:
        if usd > 0.0:
            self.account.reserved[request_id] = usd

    def holds(self, request_id: str) -> bool:
        """A reservation is held for the request."""
        return request_id in self.account.reserved

    def release(self, request_id: str) -> float:
        return self.account.reserved.pop(request_id, 0.0)

    def refusal(self, needed_usd: float) -> TenantBudgetExhaustedError:
        """Nothing fits: counted as a refusal; the error to raise."""
        acct = self.account
        acct.refused += 1
        left = max(self.remaining() or 0.0, 0.0)
        return TenantBudgetExhaustedError(
            self.id, left, needed_usd, acct.period_end, acct.reserved_usd
        )

    def settle(self, request_id: str, cost_usd: float, now: float) -> None:
        """A charge: realised cost counted, the reservation released."""
        self.roll(now)
        self.account.reserved.pop(request_id, None)
        self.account.spent_usd += cost_usd
        self.account.total_spent_usd += cost_usd
        self.account.charges += 1

    # ---- keys ----------------------------------------------------------------------------

    def add_key(self, digest: str, key_id: str, now: float) -> None:
        self.keys[digest] = {"key_id": key_id, "created_at": now}

    def revoke_key(self, key_id: str) -> list[str]:
        """Forget the key named `key_id`; returns the digests removed (none: no such key)."""
        gone = [d for d, meta in self.keys.items() if meta["key_id"] == key_id]
        for d in gone:
            del self.keys[d]
        return gone

    # ---- report and state ----------------------------------------------------------------

    def report(self, now: float, dual: float | None, budget: float | None) -> dict:
        acct = self.account
        remaining = self.remaining()
        return {
            **self.spec.model_dump(mode="json"),
            "spend_usd": acct.spent_usd,
            "reserved_usd": acct.reserved_usd,
            "remaining_usd": remaining,
            "total_spend_usd": acct.total_spent_usd,
            "charges": acct.charges,
            "period_start": datetime.fromtimestamp(acct.period_start, UTC).isoformat(),
            "period_end": datetime.fromtimestamp(acct.period_end, UTC).isoformat(),
            "target_usd_per_request": budget,
            "dual": dual,
            "requests": acct.requests,
            "degraded": acct.degraded,
            "refused": acct.refused,
            "in_flight": len(acct.reserved),
            "keys": sorted(self.keys.values(), key=lambda k: k["created_at"]),
        }

    def to_json(self) -> dict:
        acct = self.account
        return {
            "spec": self.spec.model_dump(mode="json"),
            "keys": self.keys,
            "account": {
                "period_start": acct.period_start,
                "period_end": acct.period_end,
                "spent_usd": acct.spent_usd,
                "reserved": acct.reserved,
                "requests": acct.requests,
                "degraded": acct.degraded,
                "refused": acct.refused,
                "total_spent_usd": acct.total_spent_usd,
                "charges": acct.charges,
                "rate": vars(acct.rate),
            },
        }

    @classmethod
    def from_json(cls, doc: dict, settings: TenantSettings) -> Tenant:
        a = doc["account"]
        t = cls(TenantSpec.model_validate(doc["spec"]), a["period_start"], settings)
        t.keys = dict(doc["keys"])
        t.account = TenantAccount(
            period_start=a["period_start"],
            period_end=a["period_end"],
            spent_usd=a["spent_usd"],
            reserved=dict(a["reserved"]),
            requests=a["requests"],
            degraded=a["degraded"],
            refused=a["refused"],
            total_spent_usd=a["total_spent_usd"],
            charges=a.get("charges", 0),
            rate=DecayedRate(**a["rate"]),
        )
        return t


def cost_bound(
    prompt_tokens: float, output_tokens: int, input_per_m: float, output_per_m: float
) -> float:
    """The most a request can cost: every prompt and output token at list price."""
    return (prompt_tokens * input_per_m + output_tokens * output_per_m) / 1e6


class TenantBook:
    """The tenants by id, and their API keys by digest."""

    def __init__(self, settings: TenantSettings) -> None:
        self.settings = settings
        self._tenants: dict[str, Tenant] = {}
        self._by_key: dict[str, str] = {}  # key digest -> tenant id

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._tenants

    def __iter__(self):
        return iter(list(self._tenants.values()))

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise UnknownTenantError(tenant_id) from None

    def find(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    def add(self, spec: TenantSpec, now: float) -> Tenant:
        if spec.id in self._tenants:
            raise TenantExistsError(spec.id)
        tenant = self._tenants[spec.id] = Tenant(spec, now, self.settings)
        return tenant

    def remove(self, tenant_id: str) -> Tenant:
        tenant = self.get(tenant_id)
        del self._tenants[tenant_id]
        for digest in tenant.keys:
            self._by_key.pop(digest, None)
        return tenant

    def add_key(self, tenant_id: str, digest: str, key_id: str, now: float) -> None:
        if digest in self._by_key:
            raise ValueError("that key is in use already")
        self.get(tenant_id).add_key(digest, key_id, now)
        self._by_key[digest] = tenant_id

    def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        gone = self.get(tenant_id).revoke_key(key_id)
        for d in gone:
            self._by_key.pop(d, None)
        return bool(gone)

    def of_key(self, digest: str) -> str | None:
        """The tenant a key digest belongs to (None: no such key, or revoked)."""
        return self._by_key.get(digest)

    def to_json(self) -> list[dict]:
        return [t.to_json() for t in self._tenants.values()]

    def load_json(self, docs: list[dict]) -> None:
        self._tenants = {}
        self._by_key = {}
        for doc in docs:
            t = Tenant.from_json(doc, self.settings)
            self._tenants[t.id] = t
            for digest in t.keys:
                self._by_key[digest] = t.id
