"""The Registry deployment: the model table's source of truth, persisted and pushed to the Router.

Each change is validated by core's ModelRegistry, persisted (versioned) in the state database,
then pushed to the Router (one replica). Provider deployments get no push: they autoscale to
several replicas, and a push would reach one; instead the Router hands out each model's spec
with its decision, and the request carries it to the provider
(core.service.protocol.ProviderRequest.spec)."""

from __future__ import annotations

import asyncio
import copy

from ray import serve
from ray.serve.handle import DeploymentHandle

from core.method.registry import ModelRegistry, ModelSpec, SimBehaviour, UnknownProviderError
from core.state.open_store import open_store
from deployments.router import REGISTRY_DOC, registry_table


@serve.deployment(name="Registry")  # replica options: graphs/app.py, from the settings tree
class RegistryDeployment:
    def __init__(
        self,
        models: list[ModelSpec | dict],
        state_path: str,
        router: DeploymentHandle,
        providers: list[str],
    ) -> None:
        self.store = open_store(state_path)
        table, self.version = registry_table(
            self.store, [ModelSpec.model_validate(m) for m in models]
        )
        self.registry = ModelRegistry(table)
        self.router = router
        self.providers = sorted(providers)  # the configured provider names
        self._lock = asyncio.Lock()

    async def list(self) -> list[dict]:
        return [s.model_dump(mode="json") for s in self.registry.active_models()]

    async def add(self, spec: ModelSpec | dict) -> dict:
        spec = ModelSpec.model_validate(spec)
        if spec.provider not in self.providers:
            raise UnknownProviderError(
                f"provider {spec.provider!r} is not configured (have: {self.providers})"
            )
        return await self._change(lambda reg: reg.add(spec))

    async def remove(self, model_id: str) -> dict:
        return await self._change(lambda reg: reg.remove(model_id))

    async def patch(
        self,
        model_id: str,
        input_per_m: float | None = None,
        output_per_m: float | None = None,
        simulation: SimBehaviour | dict | None = None,
        set_simulation: bool = False,
    ) -> dict:
        """Re-price and/or set the simulated behaviour (None with set_simulation clears it), as
        one persisted version: all of it or, on any error, none of it."""

        def op(reg: ModelRegistry):
            change = None
            if input_per_m is not None or output_per_m is not None:
                change = reg.reprice(model_id, input_per_m, output_per_m)
            if set_simulation:
                change = reg.simulate(model_id, simulation)
            if change is None:
                raise ValueError("give input_per_m, output_per_m, simulation, or several")
            return change

        return await self._change(op)

    async def _change(self, op) -> dict:
        """Apply to a copy (bad input changes nothing), persist, push, then adopt."""
        async with self._lock:
            candidate = copy.deepcopy(self.registry)
            change = op(candidate)
            table = [s.model_dump(mode="json") for s in candidate.active_models()]
            await asyncio.to_thread(
                self.store.put_doc, REGISTRY_DOC, {"models": table}, self.version + 1
            )
            self.version += 1
            self.registry = candidate
            await self._push(candidate)
            return {"version": self.version, "change": change.model_dump(mode="json")}

    async def _push(self, registry: ModelRegistry) -> None:
        specs = registry.active_models()
        await self.router.apply_registry.remote([s.model_dump(mode="json") for s in specs])
