"""The Router made durable: recorded decisions, a write-ahead journal, snapshots and recovery.

Decisions are recorded for recovery; every charge and feedback is journalled durably before it
is applied in memory and acknowledged (write-ahead), one call per event kind (`charge`,
`feedback`); snapshots are taken between journal writes; recovery = snapshot + later decisions +
later journal events. Ray-free: the in-memory calls run on the caller's event loop, and one
writer task does all database work, in order, in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.method.errors import InvalidFeedbackError, UnknownRequestError
from core.method.faults import Cooldown
from core.method.router import Decision, FeedbackStatus, RouteLimits, Router
from core.state.open_store import Store
from core.state.snapshot import restore, snapshot
from core.state.store import Event, EventKind, PendingRow

log = logging.getLogger(__name__)
_TICK_S = 0.05  # the writer's longest wait for work before it checks snapshots and expiry
_RECORD = Event(seq=None, request_id="", kind="charge", value=0.0, t=0, at=0.0)  # see recorded()


class DurabilityConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pending_ttl_s: float = Field(3600.0, gt=0, description="how long a decision awaits feedback")
    snapshot_every_s: float = Field(5.0, gt=0)
    snapshot_every_events: int = Field(1000, ge=1)
    keep_snapshots: int = Field(3, ge=1)
    ledger_retention_s: float = Field(
        86_400.0, gt=0, description="journal ids kept for duplicate detection behind snapshots"
    )


@dataclass(frozen=True)
class RecoveryReport:
    from_snapshot: bool
    snapshot_t: int
    snapshot_seq: int
    replayed_decisions: int
    replayed_events: int
    skipped_events: int


class DurableRouter:
    """A Router and its StateStore. `clock` (unix seconds) times the writer's snapshots and
    expiry; the calls of the request path take their `now` from the caller."""

    def __init__(
        self,
        router: Router,
        store: Store,
        config: DurabilityConfig,
        applied_seq: int = 0,
        now: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self.store = store
        self.config = config
        self.applied_seq = applied_seq  # the last journal seq reflected in the router's state
        self.expiry: OrderedDict[str, float] = OrderedDict()
        self._clock = clock
        self._unflushed: list[PendingRow] = []
        # (request_id, model, forced, reserved_usd)
        self._rekeyed: list[tuple[str, str, bool, float]] = []
        self._dropped: list[str] = []
        self._events_since_snapshot = 0
        self._last_snapshot_at = now
        # The writer's work: a journal event and the future its caller awaits (None: snapshot).
        self._queue: asyncio.Queue[tuple[Event | None, asyncio.Future]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    # ---- start-up ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: Store,
        fresh: Callable[[], Router],
        config: DurabilityConfig,
        now: float,
        clock: Callable[[], float] = time.time,
    ) -> tuple[DurableRouter, RecoveryReport]:
        """Resume from the newest snapshot plus what was recorded after it (I/O)."""
        snap = store.latest_snapshot()
        router = restore(snap.blob) if snap else fresh()
        snap_t, snap_seq = (snap.t, snap.seq) if snap else (0, 0)
        decisions = [r for r in store.pending_after(snap_t) if r.expires_at > now]
        events = store.events_after(snap_seq)
        durable = cls(router, store, config, applied_seq=snap_seq, now=now, clock=clock)
        if snap is not None:
            durable._rekey_from_store()
        skipped, di = 0, 0
        for ev in events:  # decisions and events interleave by t; a decision comes first
            while di < len(decisions) and decisions[di].t <= ev.t:
                durable._replay_decision(decisions[di])
                di += 1
            skipped += not durable._apply_replayed(ev)
        for row in decisions[di:]:
            durable._replay_decision(row)
        for rid in router.pending_ids():
            durable.expiry.setdefault(rid, now + config.pending_ttl_s)
        return durable, RecoveryReport(
            from_snapshot=snap is not None,
            snapshot_t=snap_t,
            snapshot_seq=snap_seq,
            replayed_decisions=len(decisions),
            replayed_events=len(events),
            skipped_events=skipped,
        )

    def _rekey_from_store(self) -> None:
        """A fallback after the snapshot re-keyed a decision the snapshot holds: the recorded
        row names the model that answered, so it wins over the snapshot's."""
        for rid in self.router.pending_ids():
            row = self.store.get_pending(rid)
            if row is not None and self.router.has_arm(row.model):
                self.router.answered_by(rid, row.model, row.x, row.forced)  # or "known"

    def _replay_decision(self, row: PendingRow) -> None:
        if self.router.replay_decision(
            row.request_id, row.model, row.x, row.t, row.forced, row.tenant, row.reserved_usd
        ):
            self.expiry[row.request_id] = row.expires_at

    def _apply_replayed(self, ev: Event) -> bool:
        self.router.advance_to(ev.t)
        try:
            self._apply_to_router(ev)
        except UnknownRequestError:
            log.warning("journal event %s for %s has no context; skipped", ev.kind, ev.request_id)
            return False
        finally:
            self.applied_seq = max(self.applied_seq, ev.seq or 0)
        return True

    # ---- decisions (in memory; recorded for recovery by flush_decisions) --------------------

    def route(
        self,
        x: np.ndarray,
        limits: RouteLimits | None,
        model: str | None,
        now: float,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> Decision:
        d = self.router.route(x, limits, model, request_id=request_id, now=now, tenant=tenant)
        self._record(d.request_id, d.model, x, d.t, d.forced, now, d.tenant, d.reserved_usd)
        return d

    def _record(
        self,
        request_id: str,
        model: str,
        x: np.ndarray,
        t: int,
        forced: bool,
        now: float,
        tenant: str | None = None,
        reserved_usd: float = 0.0,
    ) -> None:
        """Queue a decision's row for the writer and start its TTL."""
        expires = now + self.config.pending_ttl_s
        self._unflushed.append(
            PendingRow(
                request_id=request_id,
                model=model,
                x=np.asarray(x, dtype=np.float64),
                t=t,
                forced=forced,
                created_at=now,
                expires_at=expires,
                tenant=tenant,
                reserved_usd=reserved_usd,
            )
        )
        self.expiry[request_id] = expires

    def resume(self, request_id: str, direct: bool) -> Decision | None:
        """Router.resume, with the recorded decision dropped when the Router dropped it."""
        had = self.router.is_pending(request_id)
        d = self.router.resume(request_id, direct)
        if d is None and had and not self.router.is_pending(request_id):
            self._forget(request_id)
        return d

    # ---- provider faults: fallback re-keys a decision, a final failure drops it ------------

    def fallback(
        self,
        request_id: str,
        failed_model: str,
        now: float,
        status: int | None = None,
        retry_after_s: float | None = None,
        limits: RouteLimits | None = None,
    ) -> Decision | None:
        """Router.fallback, with the recorded decision re-keyed (or dropped) to match."""
        d = self.router.fallback(request_id, failed_model, now, status, retry_after_s, limits)
        if d is None:
            self._forget(request_id)
        else:
            self._rekey(request_id, d.model)
        return d

    def answered_by(
        self,
        request_id: str,
        model: str,
        x: np.ndarray,
        forced: bool,
        now: float,
        tenant: str | None = None,
    ) -> str:
        """Router.answered_by, with a restored decision or re-key recorded too."""
        outcome = self.router.answered_by(request_id, model, x, forced, tenant)
        if outcome == "rekeyed":
            self._rekey(request_id, model)
        elif outcome == "adopted":  # a pull at the router's current time
            self._record(request_id, model, x, self.router.t, forced, now, tenant)
        return outcome

    def fail(
        self,
        request_id: str | None,
        model: str,
        now: float,
        status: int | None = None,
        retry_after_s: float | None = None,
        cool: bool = True,
    ) -> Cooldown | None:
        """Router.fail, with the recorded decision dropped when the router dropped it."""
        had = request_id is not None and self.router.is_pending(request_id)
        cd = self.router.fail(request_id, model, now, status, retry_after_s, cool)
        if had and not self.router.is_pending(request_id):
            self._forget(request_id)
        return cd

    def _rekey(self, request_id: str, model: str) -> None:
        """The decision now names `model`; its record follows, with what its tenant's cap holds
        for it now (a fallback reserves the new model's bound)."""
        held = self.router.reserved_for(request_id)
        for i, row in enumerate(self._unflushed):
            if row.request_id == request_id:  # not written yet: write the new model instead
                self._unflushed[i] = dataclasses.replace(
                    row, model=model, forced=False, reserved_usd=held
                )
                return
        self._rekeyed.append((request_id, model, False, held))

    def _forget(self, request_id: str) -> None:
        self.expiry.pop(request_id, None)
        kept = [r for r in self._unflushed if r.request_id != request_id]
        if len(kept) == len(self._unflushed):
            self._dropped.append(request_id)
        self._unflushed = kept

    async def flush_decisions(self) -> None:
        """Write the decisions made since the last flush, then their re-keys and drops (which
        may name rows written just before). The writer does this before each batch, since an
        event needs its decision; call it directly only where no writer runs."""
        rows, self._unflushed = self._unflushed, []
        if rows:
            await asyncio.to_thread(self.store.add_pending, rows)
        # Taken after the rows' write: a fallback made meanwhile re-keys a written row.
        rekeyed, dropped = self._rekeyed, self._dropped
        self._rekeyed, self._dropped = [], []
        if rekeyed or dropped:
            await asyncio.to_thread(self._write_pending_changes, rekeyed, dropped)

    def _write_pending_changes(
        self, rekeyed: list[tuple[str, str, bool, float]], dropped: list[str]
    ) -> None:
        """Persist re-keyed and dropped decisions (I/O)."""
        if rekeyed:
            self.store.set_pending_model(rekeyed)
        if dropped:
            self.store.delete_pending(dropped)

    # ---- charges and feedback, write-ahead: journal (I/O), apply (memory), acknowledge ------

    async def charge(
        self,
        request_id: str,
        cost_usd: float,
        now: float,
        model: str = "",
        x: np.ndarray | None = None,
        forced: bool = False,
        tenant: str | None = None,
    ) -> FeedbackStatus:
        """Charge an answered request: journalled durably, then applied, then acknowledged.
        With its `model` and context `x`, a decision this router does not know (made by a
        predecessor that died before flushing it) or keyed to another model (a lost fallback
        re-key) is first restored, so the answer is always accounted."""
        if x is not None and model:
            self.start_writer()
            outcome = self.answered_by(request_id, model, x, forced, now, tenant)
            if outcome in ("rekeyed", "adopted"):
                log.warning("charge of %s: decision %s (model %s)", request_id, outcome, model)
        return await self._journal(request_id, "charge", cost_usd, now)

    async def feedback(self, request_id: str, reward: float, now: float) -> FeedbackStatus:
        """Apply a reward in [0, 1] once: journalled durably, then applied, then acknowledged;
        a repeat answers DUPLICATE."""
        return await self._journal(request_id, "feedback", reward, now)

    async def _journal(
        self, request_id: str, kind: EventKind, value: float, now: float
    ) -> FeedbackStatus:
        self.start_writer()
        prepared = self._prepare(request_id, kind, value, now)
        if isinstance(prepared, FeedbackStatus):
            return prepared
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((prepared, done))
        return await done

    def _prepare(
        self, request_id: str, kind: EventKind, value: float, now: float
    ) -> Event | FeedbackStatus:
        """Validate; a known duplicate answers at once, anything else becomes a journal event."""
        if not (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            raise InvalidFeedbackError(f"{kind} value must be a finite number, got {value!r}")
        if kind == "feedback":
            if not 0 <= value <= 1:
                raise InvalidFeedbackError(f"reward must be in [0, 1], got {value!r}")
        elif value < 0:
            raise InvalidFeedbackError(f"cost_usd must be >= 0, got {value!r}")
        if not self.router.due(request_id, kind):  # raises UnknownRequestError
            return FeedbackStatus.DUPLICATE
        return Event(
            seq=None, request_id=request_id, kind=kind, value=float(value), t=self.router.t, at=now
        )

    def _apply(self, ev: Event, seq: int) -> FeedbackStatus:
        """Apply a journalled event to the in-memory router."""
        try:
            status = self._apply_to_router(ev)
        except UnknownRequestError:  # expired between prepare and apply; journalled anyway
            status = FeedbackStatus.APPLIED
        self.applied_seq = max(self.applied_seq, seq)
        self._events_since_snapshot += 1
        return status

    def _apply_to_router(self, ev: Event) -> FeedbackStatus:
        if ev.kind == "charge":
            return self.router.charge(ev.request_id, ev.value, ev.at)
        return self.router.feedback(ev.request_id, ev.value)

    # ---- the writer: all database work, in order, on one task ------------------------------

    def start_writer(self) -> None:
        """Start the writer task on the running event loop (again, if it ended)."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def recorded(self) -> None:
        """Wait until the decisions made so far are written (the writer's next batch): a
        capped tenant's reservation must survive a crash before its request goes out."""
        self.start_writer()
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((_RECORD, done))
        await done

    async def snapshot_now(self) -> None:
        """Take and persist a snapshot at the writer's next batch (after an admin change)."""
        self.start_writer()
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((None, done))
        await done

    async def _write_loop(self) -> None:
        while True:
            try:
                items = [await asyncio.wait_for(self._queue.get(), _TICK_S)]
            except TimeoutError:
                items = []
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._write(items)
            except Exception:  # keep serving; each item's future carries its own error
                log.exception("router writer failed")

    async def _write(self, items: list[tuple[Event | None, asyncio.Future]]) -> None:
        await self.flush_decisions()  # decisions first: an event needs its context
        force = False
        journalled = []
        for ev, done in items:
            if ev is _RECORD:
                done.set_result(None)  # flushed above
            elif ev is None:
                force = True
            else:
                journalled.append((ev, done))
        if journalled:
            # One transaction (one fsync) for the batch, then applied in journal order.
            try:
                written = await asyncio.to_thread(
                    self.store.append_events, [ev for ev, _ in journalled]
                )
            except Exception as exc:
                for _, done in journalled:
                    done.set_exception(exc)
            else:
                for (ev, done), (seq, fresh) in zip(journalled, written, strict=True):
                    try:
                        done.set_result(self._apply(ev, seq) if fresh else FeedbackStatus.DUPLICATE)
                    except Exception as exc:
                        done.set_exception(exc)
        now = self._clock()
        if force or self._snapshot_due(now):
            blob, t, seq = self._take_snapshot(now)
            await asyncio.to_thread(self._save_snapshot, blob, t, seq, now)
        self._expire(now)
        for ev, done in items:
            if ev is None and not done.done():
                done.set_result(None)

    # ---- snapshots and retention -----------------------------------------------------------

    def _snapshot_due(self, now: float) -> bool:
        return self._events_since_snapshot >= self.config.snapshot_every_events or (
            self._events_since_snapshot > 0
            and now - self._last_snapshot_at >= self.config.snapshot_every_s
        )

    def _take_snapshot(self, now: float) -> tuple[bytes, int, int]:
        """The state and its journal position, consistent because nothing is applied between
        (memory). Mark it taken; persist it with _save_snapshot."""
        self._events_since_snapshot = 0
        self._last_snapshot_at = now
        return snapshot(self.router), self.router.t, self.applied_seq

    def _save_snapshot(self, blob: bytes, t: int, seq: int, now: float) -> None:
        """Persist a snapshot and compact the journal behind the oldest one kept (I/O)."""
        self.store.save_snapshot(blob, t, seq, now, keep=self.config.keep_snapshots)
        # Events go only when behind this snapshot AND older than the retention window, which
        # keeps ids for duplicate detection and lets an older kept snapshot still replay.
        self.store.compact_events(seq, now - self.config.ledger_retention_s)
        self.store.prune_pending(now)

    def _expire(self, now: float) -> int:
        """Drop pending contexts whose TTL ran out (memory)."""
        gone = []
        while self.expiry and next(iter(self.expiry.values())) <= now:
            gone.append(self.expiry.popitem(last=False)[0])
        return self.router.expire(gone)
