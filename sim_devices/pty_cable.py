"""The USB cable of an emulated serial module: a pseudo-terminal reached through a stable device path.

The path is a symlink to the pty's slave, so the gateway opens it like ``/dev/ttyUSB0`` with pyserial.
:meth:`unplug` closes the pty and removes the path (the device node disappears, as a USB serial adapter's
does); :meth:`plug` makes a new pty and points the path at it. Output is written without blocking the
event loop; what the host sends arrives at ``on_data``. Shared by the emulated LoRa and GSM modems.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from pathlib import Path


class PtyCable:
    def __init__(self, path: str | Path, on_data: Callable[[bytes], None]) -> None:
        self.path = Path(path)
        self._on_data = on_data
        self._master: int | None = None
        self._slave: int | None = None
        self._outbuf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self, loop: asyncio.AbstractEventLoop) -> None:
        """A fresh pty, and the device path (re)created atomically to point at it."""
        if self._master is not None:
            raise RuntimeError("already plugged in")
        self._loop = loop
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)
        loop.add_reader(master, self._on_readable)

    def unplug(self) -> None:
        """The pty closes (the host's reads fail) and the device path disappears. Unsent output is lost."""
        if self._master is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._outbuf.clear()

    def write(self, data: bytes) -> None:
        """Queue bytes for the host; dropped when unplugged."""
        if self._master is None:
            return
        self._outbuf += data
        self._flush()

    def _flush(self) -> None:
        if self._master is None:
            return
        assert self._loop is not None
        while self._outbuf:
            try:
                n = os.write(self._master, self._outbuf)
            except BlockingIOError:
                self._loop.add_writer(self._master, self._flush)
                return
            except OSError:
                self._outbuf.clear()
                return
            del self._outbuf[:n]
        self._loop.remove_writer(self._master)

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO: the host has not opened (or has closed) the slave side
        if data:
            self._on_data(data)
