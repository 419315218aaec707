"""Batching that costs a lone call nothing: gather calls only while a batch is running.

Ray Serve's `@serve.batch` waits `batch_wait_timeout_s` after a batch's first call for company,
so an idle replica makes a lone prompt wait the whole window, and (in Ray 2.60) it closes the
next batch after that window even while the previous one is still encoding. Here the first call
on an idle batcher runs at once, as a batch of one; calls that arrive while a batch runs queue,
and the next batch takes them all (up to `max_batch`) the moment the running one ends. Under load
batches grow to what arrives during one pass; at low load nobody waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BusyBatcher(Generic[T, R]):
    """`submit(item)` -> `run([item, ...])`'s result for that item. `run` gets each batch in
    arrival order and returns one result per item; its failure fails every call of the batch.
    Lives on one event loop (a replica's)."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run, self._max = run, max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._draining: asyncio.Task | None = None
        self.batches = 0
        self.largest = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, done))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                self.batches += 1
                self.largest = max(self.largest, len(batch))
                try:
                    results = await self._run([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
                except asyncio.CancelledError:
                    for _, done in batch:
                        done.cancel()
                    raise
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (_, done), result in zip(batch, results, strict=True):
                    if not done.done():  # its caller may have gone (cancelled)
                        done.set_result(result)
        finally:
            self._draining = None
            for _, done in self._queue:  # only if the drain itself was cancelled
                if not done.done():
                    done.set_exception(RuntimeError("the batcher stopped"))
            self._queue = []
