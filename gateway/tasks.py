"""Ending asyncio tasks for good.

On Python 3.11 a task awaiting ``asyncio.wait_for`` swallows a cancellation that arrives in the same loop
step as its inner future's result (CPython gh-86296, fixed in 3.12): ``wait_for`` returns the result and
the task goes on, so a stage loop (``while True: await asyncio.wait_for(queue.get(), ...)``) can outlive
one ``cancel()`` and a shutdown that gathers it waits forever (seen as a rare hang of a test that stops a
gateway while frames are still moving). :func:`cancel_and_wait` cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_S = 0.5  # how long a cancelled task may take to end before it is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and return once each has ended (their results and exceptions are dropped)."""
    todo = list(tasks)
    pending = {t for t in todo if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for t in todo:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" report at garbage collection
