"""cancel_and_wait ends a stage-like task even when one cancellation is swallowed by asyncio.wait_for."""

from __future__ import annotations

import asyncio
import sys

from lifeline.gateway.tasks import cancel_and_wait


async def _stage(q: asyncio.Queue[int], got: list[int]) -> None:
    """The shape of every gateway stage loop."""
    while True:
        try:
            got.append(await asyncio.wait_for(q.get(), 30))
        except TimeoutError:
            continue


async def _cancel_as_an_item_arrives(q: asyncio.Queue[int], task: asyncio.Task[None]) -> None:
    """Put an item, let the queue's getter finish, and cancel the stage in the step before wait_for sees it."""
    q.put_nowait(1)
    await asyncio.sleep(0)  # the inner q.get() completes; its wake-up of wait_for is still queued
    task.cancel()
    await asyncio.sleep(0)


async def test_one_cancel_can_be_swallowed_by_wait_for_on_this_python() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    got: list[int] = []
    task = asyncio.create_task(_stage(q, got))
    await asyncio.sleep(0)  # the stage is waiting in wait_for
    await _cancel_as_an_item_arrives(q, task)
    for _ in range(5):
        await asyncio.sleep(0)
    if sys.version_info < (3, 12):  # CPython gh-86296: the item is returned and the cancellation is lost
        assert got == [1] and not task.done()
    await cancel_and_wait([task])
    assert task.done()


async def test_cancel_and_wait_ends_the_stage_whatever_the_timing() -> None:
    for steps in range(4):  # cancel at several points around an item's arrival
        q: asyncio.Queue[int] = asyncio.Queue()
        task = asyncio.create_task(_stage(q, []))
        for _ in range(steps):
            await asyncio.sleep(0)
        q.put_nowait(1)
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([task]), 10)
        assert task.cancelled()


async def test_cancel_and_wait_retrieves_exceptions_and_accepts_finished_tasks() -> None:
    async def boom() -> None:
        raise ValueError("x")

    failed = asyncio.create_task(boom())
    await asyncio.sleep(0)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait([failed, done])
    assert failed.done() and not failed.cancelled() and done.done()
