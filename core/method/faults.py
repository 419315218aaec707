"""Provider faults: when to retry a call, when to fall back to another model, and cool-downs.

Pure and clock-free (every function takes `now`, unix seconds), so the deployments stay thin
and the rules are unit tested without Ray:

- `RetryPolicy`: a provider client retries the same model with exponential backoff on
  connection errors, timeouts, 5xx and 429 (waiting `Retry-After` when it is at most
  `max_retry_after_s`; a longer wait gives up at once, so the request can fall back).
- `can_fall_back`: which failures another model may not have (not the caller's own bad input).
- `Cooldowns`: a model whose call failed (after its retries) is skipped by auto-routing until
  its cool-down ends, then tried again; each failure in a row doubles the cool-down (up to a
  cap), a `Retry-After` longer than that is honoured, and a success resets the streak.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

# 408 timeout, 409 conflict, 425 too early, 429 rate limit, and every 5xx (529 = overloaded)
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# Failures another model (maybe at another provider) may not have: a missing key (status None
# from our client, or 401/403 upstream), an unknown model upstream (404).
_FALLBACK_4XX = frozenset({401, 403, 404})


def is_retryable_status(status: int | None) -> bool:
    """No response (timeout, connection error), 408/409/425/429 and every 5xx."""
    return status is None or status in _RETRYABLE_4XX or status >= 500


def can_fall_back(status: int | None, retryable: bool) -> bool:
    """Whether another model may answer where this one failed. Not for the caller's own bad
    input (400, 413, 422: every model would refuse it)."""
    return retryable or status is None or status in _FALLBACK_4XX or status >= 500


class RetryPolicy(BaseModel):
    """Retries of one provider call on the same model (small: fallback is the next line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(2, ge=1, le=10, description="tries per model, the first included")
    backoff_s: float = Field(0.1, ge=0.0, allow_inf_nan=False, description="wait before retry 1")
    backoff_factor: float = Field(2.0, ge=1.0, allow_inf_nan=False)
    max_backoff_s: float = Field(2.0, ge=0.0, allow_inf_nan=False)
    max_retry_after_s: float = Field(
        2.0,
        ge=0.0,
        allow_inf_nan=False,
        description="a 429 asking to wait longer than this is not retried here (the request "
        "falls back and the model cools down for the whole Retry-After)",
    )

    def delay(
        self, attempt: int, status: int | None, retryable: bool, retry_after_s: float | None
    ) -> float | None:
        """Seconds to wait before retrying a call whose try number `attempt` (0 = the first)
        failed, or None: do not retry (not retryable, tries used up, or Retry-After too long)."""
        if not retryable or attempt + 1 >= self.max_attempts:
            return None
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.max_retry_after_s else None
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor**attempt)


class CooldownConfig(BaseModel):
    """Cool-downs of failing models, and how far a request falls back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cooldown_s: float = Field(30.0, ge=0.0, allow_inf_nan=False, description="first cool-down")
    factor: float = Field(2.0, ge=1.0, allow_inf_nan=False, description="x per failure in a row")
    max_cooldown_s: float = Field(
        300.0, ge=0.0, allow_inf_nan=False, description="cap, also on an honoured Retry-After"
    )
    max_fallbacks: int = Field(
        2, ge=0, description="other models a failed auto-routed request may try"
    )


@dataclass(frozen=True)
class Cooldown:
    model: str
    until: float  # unix seconds
    failures: int  # failures in a row (0: it answered since, but its cool-down still runs)
    status: int | None  # of the last failure (None: no response)

    def to_json(self, now: float | None) -> dict:
        return {
            "until_unix": self.until,
            "remaining_s": None if now is None else max(0.0, self.until - now),
            "failures": self.failures,
            "status": self.status,
        }


class Cooldowns:
    """Per model: failures in a row and when its cool-down ends. Not persisted: after a
    restart every model is tried again (the next failure cools it down anew)."""

    def __init__(self, config: CooldownConfig | None = None) -> None:
        self.config = config or CooldownConfig()
        self.state: dict[str, Cooldown] = {}  # read-only outside; empty when none failed

    def __bool__(self) -> bool:
        return bool(self.state)

    def duration(self, failures: int, retry_after_s: float | None) -> float:
        """The cool-down after `failures` failures in a row (>= 1): cooldown_s x factor^(n-1),
        or the Retry-After when longer, both capped at max_cooldown_s."""
        c = self.config
        base = min(c.max_cooldown_s, c.cooldown_s * c.factor ** (failures - 1))
        if retry_after_s is not None:
            base = max(base, min(retry_after_s, c.max_cooldown_s))
        return base

    def fail(
        self, model: str, now: float, status: int | None = None, retry_after_s: float | None = None
    ) -> Cooldown:
        """Record a failed call (after its retries); the model cools down from `now`."""
        old = self.state.get(model)
        failures = (old.failures if old else 0) + 1
        until = now + self.duration(failures, retry_after_s)
        if old is not None:
            until = max(until, old.until)  # concurrent failures never shorten a cool-down
        cd = Cooldown(model, until, failures, status)
        self.state[model] = cd
        return cd

    def succeed(self, model: str) -> None:
        """The model answered: its failure streak ends. A cool-down in progress (a request
        routed before it began may answer during it) keeps running until its end."""
        cd = self.state.get(model)
        if cd is not None and cd.failures:
            self.state[model] = Cooldown(model, cd.until, 0, cd.status)

    def cooling(self, now: float) -> frozenset[str]:
        """The models still cooling down at `now` (forgets ended ones with no streak)."""
        if not self.state:
            return frozenset()
        for m in [m for m, cd in self.state.items() if not cd.failures and cd.until <= now]:
            del self.state[m]
        return frozenset(m for m, cd in self.state.items() if cd.until > now)

    def get(self, model: str) -> Cooldown | None:
        return self.state.get(model)

    def to_json(self, now: float | None = None) -> dict[str, dict]:
        """Every model with a failure streak or a running cool-down (remaining_s 0: it may be
        tried again; None: `now` not given)."""
        return {m: cd.to_json(now) for m, cd in sorted(self.state.items())}
