"""The decision ledger: routed requests awaiting their charge and reward, and the applied ids."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from core.method.errors import UnknownRequestError


@dataclass(slots=True)
class Pending:
    """One routed request: the arm it is keyed to, its context and time, and what it got."""

    slot: int
    x: np.ndarray
    t: int
    forced: bool
    charged: bool = False
    rewarded: bool = False
    failed: tuple[str, ...] = ()  # models that failed this request (fallback); not persisted
    tenant: str | None = None  # who pays (core/method/tenants.py); None: the service budget


class Ledger:
    """Pending decisions by request id (oldest first, at most `max_pending`) and the ids whose
    reward was applied (the newest `max_pending`, for duplicate detection). A decision leaves
    when it is charged and rewarded, dropped (a failure) or expired (its TTL ran out)."""

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._applied: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        """A decision is pending under `request_id`."""
        return request_id in self._pending

    def ids(self) -> list[str]:
        """The pending request ids, oldest first."""
        return list(self._pending)

    def applied_ids(self) -> list[str]:
        """The ids whose reward was applied, oldest first."""
        return list(self._applied)

    def get(self, request_id: str) -> Pending | None:
        return self._pending.get(request_id)

    def lookup(self, request_id: str) -> Pending:
        try:
            return self._pending[request_id]
        except KeyError:
            raise UnknownRequestError(request_id) from None

    def in_use(self, request_id: str) -> bool:
        """The id names a pending decision or an applied reward: a new route may not take it."""
        return request_id in self._pending or request_id in self._applied

    def settled(self, request_id: str) -> bool:
        """Charged and rewarded: the decision is gone, its id kept as applied."""
        return request_id in self._applied and request_id not in self._pending

    # ---- opening and closing decisions ----------------------------------------------------

    def open(
        self,
        request_id: str,
        slot: int,
        x: np.ndarray,
        t: int,
        forced: bool,
        tenant: str | None = None,
    ) -> Pending:
        """A new decision; past `max_pending` the oldest pending one is forgotten."""
        pending = self._pending
        entry = pending[request_id] = Pending(slot, x, t, forced, tenant=tenant)
        if len(pending) > self._max:
            pending.popitem(last=False)
        return entry

    def restore(
        self,
        request_id: str,
        slot: int,
        x: np.ndarray,
        t: int,
        forced: bool,
        tenant: str | None = None,
    ) -> Pending:
        """A decision made before (recovery, or one a restarted router lost): no cap applies."""
        entry = self._pending[request_id] = Pending(slot, x, t, forced, tenant=tenant)
        return entry

    def drop(self, request_id: str) -> None:
        del self._pending[request_id]

    def expire(self, request_ids: list[str]) -> int:
        """Forget pending decisions; returns how many were still pending."""
        return sum(self._pending.pop(r, None) is not None for r in request_ids)

    # ---- charge and reward bookkeeping ----------------------------------------------------

    def charge_due(self, request_id: str) -> Pending | None:
        """The decision a charge applies to; None: a duplicate (charged already, or settled).
        Raises UnknownRequestError for an id with no decision."""
        if request_id in self._applied and request_id not in self._pending:
            return None
        entry = self.lookup(request_id)
        return None if entry.charged else entry

    def reward_due(self, request_id: str) -> Pending | None:
        """The decision a reward applies to; None: a duplicate (a reward was applied already).
        Raises UnknownRequestError for an id with no decision."""
        if request_id in self._applied:
            return None
        return self.lookup(request_id)

    def charged(self, request_id: str, entry: Pending) -> None:
        """`entry` (from charge_due) was charged."""
        entry.charged = True
        self._settle(request_id, entry)

    def rewarded(self, request_id: str, entry: Pending) -> None:
        """`entry` (from reward_due) was rewarded: its id is kept as applied."""
        entry.rewarded = True
        applied = self._applied
        applied[request_id] = None
        if len(applied) > self._max:
            applied.popitem(last=False)
        self._settle(request_id, entry)

    def _settle(self, request_id: str, entry: Pending) -> None:
        if entry.charged and entry.rewarded:
            del self._pending[request_id]

    # ---- state ------------------------------------------------------------------------------

    def to_state(self, dim: int) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, metadata) of a snapshot: contexts as one (n, dim) array, the rest as JSON."""
        entries = list(self._pending.values())
        arrays = {"pending_x": np.array([e.x for e in entries]).reshape(len(entries), dim)}
        meta = {
            "pending": [
                {
                    "id": rid,
                    "slot": e.slot,
                    "t": e.t,
                    "forced": e.forced,
                    "charged": e.charged,
                    "rewarded": e.rewarded,
                    **({"tenant": e.tenant} if e.tenant is not None else {}),
                }
                for rid, e in self._pending.items()
            ],
            "applied": list(self._applied),
        }
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Replace the contents with a snapshot's (see to_state)."""
        xs = arrays["pending_x"]
        self._pending = OrderedDict(
            (
                p["id"],
                Pending(
                    slot=p["slot"],
                    x=xs[j],
                    t=p["t"],
                    forced=p["forced"],
                    charged=p["charged"],
                    tenant=p.get("tenant"),
                    rewarded=p["rewarded"],
                ),
            )
            for j, p in enumerate(meta["pending"])
        )
        self._applied = OrderedDict.fromkeys(meta["applied"])
