"""The daemon's registry connection has one thread; stop() closes it only after a call still running there.

A maintenance reload cancelled by stop() keeps running in its worker thread (cancelling the await does not
stop the thread); closing the sqlite3 connection under it crashed the whole process (seen once as a
segmentation fault in the test suite)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from lifeline.gateway.registry import Registry
from lifeline.gateway.statedb import StateDB
from lifeline.gateway.testing import TestNode, start_harness


async def test_stop_waits_for_a_cancelled_registry_call_before_closing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_harness(tmp_path, [TestNode(bytes.fromhex("4c4c0000000000a1"))])
    entered, release, db_closed = threading.Event(), threading.Event(), threading.Event()
    log: list[str] = []
    generation, close, db_close = Registry.generation, Registry.close, StateDB.close

    def slow_generation(self: Registry) -> int:
        entered.set()
        release.wait(60)
        log.append("generation")
        return generation(self)

    def logged_close(self: Registry) -> None:
        log.append("close")
        close(self)

    def noted_db_close(self: StateDB) -> None:
        db_close(self)
        db_closed.set()

    monkeypatch.setattr(Registry, "generation", slow_generation)
    monkeypatch.setattr(Registry, "close", logged_close)
    monkeypatch.setattr(StateDB, "close", noted_db_close)
    reload = asyncio.create_task(h.gw.reload_devices(force=True))
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, entered.wait, 60)
    reload.cancel()
    stopping = asyncio.create_task(h.gw.stop())
    # stop() closes the buffer database just before the registry; once that happened, an unguarded close
    # of the registry would already have run (it used to be the very next statement, on this thread)
    assert await loop.run_in_executor(None, db_closed.wait, 60)
    for _ in range(20):
        await asyncio.sleep(0)
    assert log == [] and not stopping.done()  # the close waits behind the running call
    release.set()
    await stopping
    assert log == ["generation", "close"]
    with pytest.raises(asyncio.CancelledError):
        await reload
