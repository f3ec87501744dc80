"""KeyCache: derived uplink keys per device, LRU-bounded, re-derived when the epoch or suite changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.gateway.daemon import BUFFER_CACHE_KIB
from lifeline.gateway.devices import DeviceInfo, KeyCache
from lifeline.gateway.registry import Registry
from lifeline.gateway.testing import TestNode, provision, start_harness
from lifeline.protocols import fastpath, frame, schema


def _info(node: TestNode, epoch: int = 0, root: bytes | None = None) -> DeviceInfo:
    suite = frame.SUITE_SM if node.suite == "sm" else frame.SUITE_INTL
    return DeviceInfo(node.device_id, root or node.root_key, epoch, schema.SENSITIVE, "active", suite)


NODES = [TestNode(bytes.fromhex("50000000000000%02x" % i), "water_level") for i in range(4)]


@pytest.mark.parametrize("suite", ["intl", "sm"])
def test_uplink_keys_are_the_devices_keys_and_verify_its_frames(suite: str) -> None:
    node = TestNode(bytes.fromhex("5100000000000001"), "smoke", suite=suite)
    cache = KeyCache(4)
    keys = cache.get(_info(node, epoch=3))
    assert (keys.dev_id, keys.mic_up, keys.enc, keys.epoch) == (node.device_id, node.keys.mic_up, node.keys.enc, 3)
    assert "mic" not in repr(keys) and node.keys.mic_up.hex() not in repr(keys)
    for _ in range(2):  # the second frame reuses the cached HMAC-SM3 context (suite sm)
        data = node.smoke(0)
        assert fastpath.decode(data, keys).fields == fastpath.decode(data, node.keys).fields
    tampered = data[:-1] + bytes((data[-1] ^ 1,))
    with pytest.raises(frame.FrameError, match="bad_mic"):
        fastpath.decode(tampered, keys)
    with pytest.raises(ValueError, match="downlink"):
        fastpath.mic_for(keys, True, b"msg")
    assert cache.derivations == 1


def test_downlink_keys_encode_what_the_node_decodes() -> None:
    node = NODES[0]
    down = frame.encode(KeyCache(4).downlink_keys(_info(node)), node.device_id, 7, 0, schema.C_TIME_SYNC, {1: 7},
                        frame.FLAG_DOWN)
    assert node.decode_downlink(down).fields == {1: 7}


def test_lru_bound_evicts_the_least_recently_used() -> None:
    cache = KeyCache(3)
    a, b, c, d = (_info(n) for n in NODES)
    for info in (a, b, c):
        cache.get(info)
    assert cache.get(a) is cache.get(a)  # a hit: the same entry, now the most recent
    cache.get(d)  # evicts b, the least recently used
    assert len(cache) == 3 and cache.derivations == 4
    cache.get(a)
    cache.get(c)
    cache.get(d)
    assert cache.derivations == 4
    cache.get(b)  # was evicted: derived again (and a, now the oldest, goes)
    assert cache.derivations == 5
    cache.get(a)
    assert cache.derivations == 6 and len(cache) == 3


def test_new_epoch_or_suite_derives_again_and_invalidate_forgets() -> None:
    cache = KeyCache(8)
    node = NODES[1]
    old = cache.get(_info(node))
    new_root = bytes(range(32))
    new = cache.get(_info(node, epoch=1, root=new_root))
    assert new.epoch == 1 and new.mic_up != old.mic_up
    assert new.mic_up == frame.derive_keys(new_root, node.device_id).mic_up
    assert cache.get(_info(node, epoch=1, root=new_root)) is new and cache.derivations == 2
    sm = DeviceInfo(node.device_id, new_root, 1, schema.SENSITIVE, "active", frame.SUITE_SM)
    assert cache.get(sm).suite == frame.SUITE_SM and cache.derivations == 3
    assert len(cache) == 1
    cache.invalidate([node.device_id, b"\x00" * 8])
    assert len(cache) == 0
    cache.get(sm)
    assert cache.derivations == 4


async def test_daemon_keys_and_buffer_cache_bounds(tmp_path: Path) -> None:
    """The daemon's cache of uplink keys serves its frames; the buffer's SQLite page cache is the small one."""
    nodes = NODES[:2]
    h = await start_harness(tmp_path, nodes)
    try:
        for n in nodes:
            await h.hear(n.uplink(schema.K_WATER_LEVEL, {1: 300, 2: 12, 15: 3400}))
            await h.hear(n.uplink(schema.K_WATER_LEVEL, {1: 301, 2: 12, 15: 3400}))
        assert h.gw.stats.accepted.total() == 4 and h.rejects() == {}
        assert len(h.gw.keys) == 2 and h.gw.keys.derivations == 2
        assert h.gw.db.run_sync(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]) == -BUFFER_CACHE_KIB
    finally:
        await h.stop()


def test_device_table_shares_one_status_string(tmp_path: Path) -> None:
    provision(tmp_path / "registry.db", NODES)
    with Registry(tmp_path / "registry.db") as reg:
        infos = [DeviceInfo.of(d) for d in reg.all()]
    assert [i.device_id for i in infos] == [n.device_id for n in NODES]
    assert all(i.status == "active" and i.active for i in infos)
    assert len({id(i.status) for i in infos}) == 1
