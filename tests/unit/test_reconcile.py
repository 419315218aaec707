"""Reconciliation: a Router's arms brought in line with the registry's table, through its calls."""

from __future__ import annotations

import pytest

from core.method.config import PacerConfig, RouterConfig
from core.method.registry import ModelSpec, RegistryError
from core.method.router import Router
from core.state.reconcile import reconcile

A = ModelSpec(id="a", input_per_m=0.1, output_per_m=0.1)
B = ModelSpec(id="b", input_per_m=0.5, output_per_m=1.5)
C = ModelSpec(id="c", input_per_m=1.25, output_per_m=10.0)
CONFIG = RouterConfig(pacer=PacerConfig(budget_usd=1e-3))


def test_reconcile_adds_reprices_removes_and_refreshes_through_the_router() -> None:
    router = Router(CONFIG, [A, B])
    moved = B.model_copy(update={"base_url": "http://elsewhere", "output_per_m": 1.0})
    assert reconcile(router, [moved, C]) == ["reprice b", "add c", "remove a"]
    assert router.registry.specs["b"] == moved  # the base URL came along with the price
    version = router.registry.version
    again = moved.model_copy(update={"provider_model": "b-upstream"})
    assert reconcile(router, [again, C]) == []  # nothing the arms depend on
    assert router.registry.specs["b"] == again and router.registry.version == version
    assert reconcile(router, [A, again, C]) == ["add a"]  # a re-add keeps its arm
    assert router.state()["models"]["a"]["forced_pulls_left"] == 0


def test_a_refresh_may_not_change_prices() -> None:
    router = Router(CONFIG, [A, B])
    with pytest.raises(RegistryError, match="reprice"):
        router.update_spec(B.model_copy(update={"input_per_m": 0.4}))
    assert router.registry.specs["b"] == B
