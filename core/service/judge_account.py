"""The judge's own money: spend per UTC day under a cap, never any routing budget's.

A judge call reserves an upper bound of its cost before it starts (its prompt's tokens at the
input price plus the verdict's token limit at the output price) and settles with the realised
cost when it answers, or releases the bound when it fails; so calls in flight together never
pass the cap. The account is a plain document (`to_doc` / `from_doc`) its owner persists.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def utc_day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


class JudgeAccount:
    def __init__(self, daily_cap_usd: float, day: str = "", spent_usd: float = 0.0) -> None:
        self.cap = daily_cap_usd
        self.day, self.spent = day, spent_usd
        self.reserved = 0.0

    def _roll(self, now: float) -> None:
        today = utc_day(now)
        if today != self.day:  # a new UTC day: a fresh allowance (reservations carry over)
            self.day, self.spent = today, 0.0

    def reserve(self, bound_usd: float, now: float) -> bool:
        """Hold `bound_usd` of today's allowance; False (nothing held) if it does not fit."""
        self._roll(now)
        if self.spent + self.reserved + bound_usd > self.cap:
            return False
        self.reserved += bound_usd
        return True

    def settle(self, bound_usd: float, cost_usd: float, now: float) -> None:
        """The call answered: release its bound, book what it cost."""
        self.release(bound_usd)
        self._roll(now)
        self.spent += cost_usd

    def release(self, bound_usd: float) -> None:
        left = self.reserved - bound_usd
        self.reserved = left if left > 1e-12 else 0.0  # no float residue once nothing is held

    def figures(self, now: float) -> dict[str, Any]:
        self._roll(now)
        return {
            "day": self.day,
            "spend_usd": self.spent,
            "reserved_usd": self.reserved,
            "daily_cap_usd": self.cap,
            "remaining_usd": max(0.0, self.cap - self.spent - self.reserved),
        }

    def to_doc(self) -> dict[str, Any]:
        return {"day": self.day, "spent_usd": self.spent}

    @classmethod
    def from_doc(cls, daily_cap_usd: float, doc: dict[str, Any] | None) -> JudgeAccount:
        if not doc:
            return cls(daily_cap_usd)
        return cls(daily_cap_usd, str(doc.get("day", "")), float(doc.get("spent_usd", 0.0)))
