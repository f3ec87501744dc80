"""The uplink frame counter never repeats: deep sleep, watchdog resets, power loss, and power cuts in the
middle of persisting the reservation (random, seeded: deterministic)."""

from __future__ import annotations

import random

import pytest

from lifeline.firmware import fcnt, storage
from lifeline.firmware.hal import sim
from lifeline.firmware.rtcstate import RtcState
from lifeline.firmware.simnode import SimNode

TAG = b"\x01" * 8


def _boot(hal: sim.SimHal, first: bool) -> fcnt.FrameCounter:
    rtc = RtcState(hal, TAG)
    rtc.load()
    return fcnt.FrameCounter(hal.fs, rtc, first)


def test_persists_every_16_and_jumps_ahead_after_power_loss() -> None:
    hal = sim.SimHal()
    c = _boot(hal, True)
    used = [c.next() for _ in range(20)]
    assert used == list(range(20))
    assert c.persists == 2  # at first boot (reserve 16) and at 16 (reserve 32)
    hal.power_loss()
    c = _boot(hal, False)
    assert c.next() == 32  # jumped to the reservation, never below it


def test_deep_sleep_continues_exactly_from_rtc_memory() -> None:
    hal = sim.SimHal()
    c = _boot(hal, True)
    for _ in range(5):
        c.next()
    hal.resume(3, "timer", 1000)
    c = _boot(hal, False)
    assert c.next() == 5
    assert c.persists == 0


def test_rtc_value_outside_the_reservation_is_not_trusted() -> None:
    hal = sim.SimHal()
    c = _boot(hal, True)
    c.next()
    rtc = RtcState(hal, TAG)
    rtc.load()
    rtc.set("fc", 1000)  # corrupted or from an older reservation window
    rtc.save()
    assert _boot(hal, False).next() == 16


def test_blob_from_another_device_is_ignored() -> None:
    hal = sim.SimHal()
    c = _boot(hal, True)
    for _ in range(3):
        c.next()
    rtc = RtcState(hal, b"\x02" * 8)
    assert not rtc.load()


def test_lost_record_after_first_boot_is_refused() -> None:
    hal = sim.SimHal()
    _boot(hal, True).next()
    hal.fs.files[fcnt.PATH] = b"garbage"
    hal.power_loss()
    with pytest.raises(fcnt.CounterLost):
        _boot(hal, False)


@pytest.mark.parametrize("seed", range(6))
def test_random_power_cuts_while_persisting_never_repeat_a_counter(seed: int) -> None:
    rnd = random.Random(seed)
    hal = sim.SimHal(flash=sim.SimFlash(seed=seed + 1))
    sent: list[int] = []
    first = True
    cuts = 0
    for _ in range(150):
        try:
            c = _boot(hal, first)
            first = False
            hal.fs.arm_cut(rnd.randint(1, 6))  # the power fails somewhere in the next few flash operations
            for _ in range(rnd.randint(1, 40)):
                v = c.next()
                sent.append(v)  # next() returned: the frame may go on the air
            hal.fs.disarm()
            if rnd.random() < 0.5:
                hal.resume(3, "timer", 1000)  # deep sleep keeps RTC memory
            else:
                hal.power_loss()
        except sim.PowerCut:
            cuts += 1
            hal.fs.disarm()
            hal.power_loss()
    assert cuts > 20
    assert len(sent) == len(set(sent)), "a frame counter value was used twice"
    assert sent == sorted(sent)


def test_node_frames_never_repeat_across_resets_and_power_loss() -> None:
    sn = SimNode("tilt", config_extra={"interval": 60})
    for i in range(40):
        sn.wake()
        if i % 7 == 3:
            sn.hal.power_loss(5000)
        elif i % 5 == 2:
            sn.hal.resume(2, "power", 100)  # watchdog reset
        else:
            sn.sleep()
    fcnts = [f.header.fcnt for f in sn.decoded()]
    assert len(fcnts) == len(set(fcnts)) and fcnts == sorted(fcnts)


def test_storage_record_detects_torn_content() -> None:
    rec = storage.pack(b"hello")
    assert storage.unpack(rec) == b"hello"
    for n in range(len(rec)):
        assert storage.unpack(rec[:n]) is None
    bad = bytearray(rec)
    bad[5] ^= 1
    assert storage.unpack(bytes(bad)) is None
