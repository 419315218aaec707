"""The Feedback deployment: answers known duplicates from the journal without touching the
Router, and forwards the rest to the Router, which journals before it applies (exactly once)."""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from core.state.open_store import open_store
from deployments.router_calls import retrying


@serve.deployment(name="Feedback")  # replica options: graphs/app.py, from the settings tree
class FeedbackDeployment:
    def __init__(self, router: DeploymentHandle, state_path: str) -> None:
        self.router = router
        self.store = open_store(state_path)

    async def has_feedback(self, request_id: str) -> bool:
        """Whether a feedback for the request is journalled (the Judge asks before it spends)."""
        return await asyncio.to_thread(self.store.has_event, request_id, "feedback")

    async def submit(self, request_id: str, reward: float) -> str:
        """'applied' or 'duplicate'; an unknown id or a bad reward raises (the ingress maps)."""
        if await self.has_feedback(request_id):
            return "duplicate"
        # Safe to repeat: a feedback journalled before the Router died answers "duplicate".
        # This call found none before it started, so a "duplicate" after a retry is its own
        # attempt that died after journalling (applied once): the client hears "applied".
        retried = []
        status = await retrying(
            lambda: self.router.feedback.remote(request_id, reward), lambda: retried.append(1)
        )
        return "applied" if retried and status == "duplicate" else status
