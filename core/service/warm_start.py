"""The Router a fresh service starts from (no snapshot yet): its tuning, its model table and,
as `priors_path` says, warm-start priors (core/method/priors.py).

`priors_path` (AppArgs / RouterSettings):

- `"default"` (serve_config.yaml's, and AppArgs' default): the committed
  `core/artifacts/priors.json`, full-information statistics of `../shared/data/val.jsonl` for
  the embedded default's three models through the committed projection (numbers only; made by
  `DEFAULT_PRIORS_COMMAND`). It is used only when it fits: built through the Embedder's
  projection (same fingerprint) and for exactly the router's models. Otherwise (the projection
  was re-fitted, the model table edited, the file is missing or was edited) the Router starts
  cold and the deployment logs a warning that names the cause and the command that re-makes
  the file: a stale default never keeps the service from starting, and never loads numbers
  of another feature space.
- a file path: the operator's own priors, and a misfit is a start-up error: unreadable or
  edited (fingerprint), another dimension or projection, or none of the router's models.
  Router models the file lacks start cold; file models the router lacks are ignored (the live
  replay's onboarding starts without the newcomer whose priors the file holds).
- `None`: a cold start.

A Router restored from a snapshot never reads priors: it resumes what it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.encoding.features import configured_projection
from core.method.priors import (
    DEFAULT_PRIORS_COMMAND,
    DEFAULT_PRIORS_PATH,
    Priors,
    StalePriors,
)
from core.method.registry import ModelSpec
from core.method.router import Router
from core.service.settings import DEFAULT_PRIORS, RouterSettings


@dataclass(frozen=True)
class WarmStart:
    """A fresh Router and what it started from: `note` is one line for the log, a warning
    when `refused` (the default priors did not fit, so it started cold)."""

    router: Router
    loaded: list[str] = field(default_factory=list)
    note: str = ""
    refused: bool = False


def _default_refused(reason: str) -> str:
    return (
        f"default warm-start priors {DEFAULT_PRIORS_PATH} not used, the router starts cold: "
        f"{reason}. For other models build priors from their recorded rewards "
        "(paretoserve priors build --data FILE --out PRIORS) and set priors_path: PRIORS, or "
        "set priors_path: null to start cold without this warning"
    )


def load_default_priors(
    dim: int, projection_fingerprint: str | None, models: Sequence[str]
) -> tuple[Priors | None, str]:
    """The committed priors if they fit (projection, exactly `models`), else None and why."""
    try:
        priors = Priors.load(DEFAULT_PRIORS_PATH)
    except (OSError, ValueError) as exc:
        return None, _default_refused(f"{exc}; re-make it with: {DEFAULT_PRIORS_COMMAND}")
    try:
        priors.fits(dim, projection_fingerprint, models, same_models=True)
    except StalePriors as exc:
        return None, _default_refused(str(exc))
    return priors, ""


def fresh_router(
    settings: RouterSettings,
    table: Sequence[ModelSpec] | None = None,
    projection_fingerprint: str | None = None,
) -> WarmStart:
    """The Router of `settings` over `table` (default: the configured models), warm-started
    as `settings.priors_path` says (module docstring). `projection_fingerprint` defaults to
    that of the Embedder's projection (`settings.projection_path`). Raises for an explicit
    priors file that does not fit."""
    table = list(settings.models if table is None else table)
    router = Router(settings.tuning.router_config(settings.budget_usd_per_request), table)
    path = settings.priors_path
    if path is None:
        return WarmStart(router, note="no warm-start priors (priors_path: null): a cold start")
    if projection_fingerprint is None:
        projection_fingerprint = configured_projection(settings.projection_path).fingerprint
    models = [m.id for m in table]
    dim = router.config.bandit.dim
    if path == DEFAULT_PRIORS:
        priors, why = load_default_priors(dim, projection_fingerprint, models)
        if priors is None:
            return WarmStart(router, note=why, refused=True)
        where = f"the default {DEFAULT_PRIORS_PATH}"
    else:
        priors = Priors.load(path)
        priors.fits(dim, projection_fingerprint, models, same_models=False)
        where = path
    loaded = router.load_priors(priors, projection_fingerprint)
    cold = [m for m in models if m not in loaded]
    note = f"warm-start priors ({priors.source}, {priors.fingerprint}) from {where} for {loaded}"
    return WarmStart(router, loaded, note + (f"; cold: {cold}" if cold else ""))
