"""release_free_heap gives freed C-heap pages back to the OS (glibc) and is a no-op elsewhere."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

from lifeline.gateway.heap import release_free_heap


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_freed_heap_goes_back_to_the_os() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert release_free_heap() is False
        return
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 40 MiB in 8 KiB blocks (below the mmap threshold: they live in the heap), touched, then all but the
    # last one freed: the last block pins the heap's top, so glibc cannot shrink it by itself
    blocks = [libc.malloc(8192) for _ in range(5120)]
    for b in blocks:
        ctypes.memset(b, 1, 8192)
    for b in blocks[:-1]:
        libc.free(b)
    before = _rss_kib()
    assert release_free_heap() is True
    after = _rss_kib()
    libc.free(blocks[-1])
    assert before - after > 20 * 1024, (before, after)  # most of the 40 MiB left the process
