"""BusyBatcher: a lone call runs at once; calls that arrive during a batch form the next one."""

from __future__ import annotations

import asyncio

import pytest

from core.service.busy_batcher import BusyBatcher


class _Recorder:
    """A batch function that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on: int | None = None

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


def test_a_lone_call_runs_at_once_and_calls_during_a_batch_form_the_next() -> None:
    async def scenario() -> None:
        rec = _Recorder()
        batcher = BusyBatcher(rec.run, max_batch=3)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert rec.batches == [[1]]  # started alone, nobody waited for company
        later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5)]
        await asyncio.sleep(0)
        assert rec.batches == [[1]]  # the four wait while the first batch runs
        rec.release.set()
        assert await first == 10
        assert await asyncio.gather(*later) == [20, 30, 40, 50]
        assert rec.batches == [[1], [2, 3, 4], [5]]  # gathered, up to max_batch each
        assert (batcher.batches, batcher.largest) == (3, 3)

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_calls_only_and_the_batcher_goes_on() -> None:
    async def scenario() -> None:
        rec = _Recorder()
        rec.fail_on = 2
        batcher = BusyBatcher(rec.run, max_batch=2)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        bad = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        good = asyncio.create_task(batcher.submit(4))
        rec.release.set()
        assert await first == 10
        for task in bad:
            with pytest.raises(ValueError, match="bad item 2"):
                await task
        assert await good == 40
        assert await batcher.submit(5) == 50  # idle again: runs at once

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_break_its_batch() -> None:
    async def scenario() -> None:
        rec = _Recorder()
        batcher = BusyBatcher(rec.run, max_batch=4)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        rec.release.set()
        assert await first == 10 and await kept == 30
        assert gone.cancelled()

    asyncio.run(scenario())
