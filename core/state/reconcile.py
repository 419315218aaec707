"""Bring a Router's arms in line with the registry's model table (idempotent)."""

from __future__ import annotations

from core.method.registry import ModelSpec
from core.method.router import Router


def reconcile(router: Router, table: list[ModelSpec]) -> list[str]:
    """Add, re-add, re-price, then remove, so the active arms equal `table` (adds come first so
    the router never runs out of models); returns what changed. A model new to the router gets
    forced exploration; a re-added one resumes its statistics."""
    wanted = {s.id for s in table}
    changes: list[str] = []
    for spec in table:
        current = router.registry.specs.get(spec.id)
        if current is None or not router.registry.active[spec.id]:
            router.add_model(spec, explore=current is None)
            changes.append(f"add {spec.id}")
        else:
            if (current.input_per_m, current.output_per_m) != (
                spec.input_per_m,
                spec.output_per_m,
            ):
                router.reprice(spec.id, spec.input_per_m, spec.output_per_m)
                changes.append(f"reprice {spec.id}")
            if router.registry.specs[spec.id] != spec:
                # provider, base URL, limits, simulation: nothing the arm depends on
                router.update_spec(spec)
    for spec in router.registry.active_models():
        if spec.id not in wanted:
            router.remove_model(spec.id)
            changes.append(f"remove {spec.id}")
    return changes
