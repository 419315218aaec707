"""Snapshot and restore of a whole Router: bandit arrays, time, pacer, registry, RNG, pending."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from core.method.config import RouterConfig
from core.method.pacer import PacerState
from core.method.registry import ModelRegistry
from core.method.router import Router, _Pending
from core.persistence import pack, unpack, write_atomic

SNAPSHOT_FORMAT = "paretoserve.router/1"


def snapshot(router: Router) -> bytes:
    ids = list(router.pending)
    entries = list(router.pending.values())
    d = router.config.bandit.dim
    arrays = {
        **router.bandit.arrays(),
        "forced_left": router.forced_left,
        "usage_k": router.usage_k,
        "context_sum": router.context_sum,
        "pending_x": np.array([e.x for e in entries]).reshape(len(entries), d),
        "resolver_buffer": router.resolver.buffer,
    }
    meta = {
        "format": SNAPSHOT_FORMAT,
        "config": router.config.model_dump(mode="json"),
        "t": router.t,
        "pacer": vars(router.pacer.state),
        "budget_usd": router.pacer.budget,
        "registry": router.registry.to_json(),
        "slot_models": router.slot_models,
        "rng": router.rng.bit_generator.state,
        "pending": [
            {
                "id": i,
                "slot": e.slot,
                "t": e.t,
                "forced": e.forced,
                "charged": e.charged,
                "rewarded": e.rewarded,
            }
            for i, e in zip(ids, entries, strict=True)
        ],
        "applied": list(router.applied),
        "resolver": {
            "size": router.resolver.size,
            "head": router.resolver.head,
            "nu": router.nu,
            "solve_in": router._solve_in,
            "mix": list(router._nu_mix),
            "credit": router._mix_credit,
        },
    }
    return pack(arrays, meta)


def restore(data: bytes) -> Router:
    arrays, meta = unpack(data)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(
            f"not a router snapshot of format {SNAPSHOT_FORMAT}: {meta.get('format')!r}"
        )
    config = RouterConfig.model_validate(meta["config"])
    router = Router(config)
    router.bandit.load_arrays(arrays, meta["t"])
    router.pacer.state = PacerState(**meta["pacer"])
    router.pacer.set_budget(meta["budget_usd"])
    router.registry = ModelRegistry.from_json(meta["registry"])
    router.slot_models = list(meta["slot_models"])
    router.slots = {m: i for i, m in enumerate(router.slot_models)}
    k = len(router.slot_models)
    router.prices, router.cost_terms = np.zeros(k), np.zeros(k)
    router.active = np.array([router.registry.active[m] for m in router.slot_models], dtype=bool)
    for m, i in router.slots.items():
        router._set_price(i, router.registry.specs[m])
    router.forced_left = arrays["forced_left"].astype(np.int64)
    router.context_sum = arrays["context_sum"]
    router.usage_k = arrays["usage_k"].astype(float)
    router.resolver.buffer = arrays["resolver_buffer"].copy()
    router.resolver.size = meta["resolver"]["size"]
    router.resolver.head = meta["resolver"]["head"]
    router.nu = meta["resolver"]["nu"]
    router.rng.bit_generator.state = meta["rng"]
    router.pending = OrderedDict(
        (
            p["id"],
            _Pending(
                slot=p["slot"],
                x=arrays["pending_x"][j],
                t=p["t"],
                forced=p["forced"],
                charged=p["charged"],
                rewarded=p["rewarded"],
            ),
        )
        for j, p in enumerate(meta["pending"])
    )
    router.applied = OrderedDict.fromkeys(meta["applied"])
    router._solve_in = meta["resolver"]["solve_in"]  # last: price restores reset it
    router._nu_mix = tuple(meta["resolver"]["mix"])
    router._mix_credit = meta["resolver"]["credit"]
    return router


def save_snapshot(router: Router, path: Path) -> None:
    write_atomic(path, snapshot(router))


def load_snapshot(path: Path) -> Router:
    return restore(Path(path).read_bytes())
