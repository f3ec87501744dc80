"""SMS through a serial modem: the gateway's AT client against the 3GPP TS 27.005 emulator on a real pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.actions.sms import SmsModem, mask_number, sms_text
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.dispatch import ActionRequest, ActionResult, ActionRunner
from lifeline.sim_devices.gsm_modem_emulator import GsmModemEmulator

NUMBER = "+8613800000001"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[GsmModemEmulator]:
    e = GsmModemEmulator(tmp_path / "ttyGSM", send_delay_s=0.01)
    await e.start()
    yield e
    await e.stop()


def modem(emu: GsmModemEmulator, **kw: int) -> SmsModem:
    return SmsModem("modem", m.SmsOutput(str(emu.path), **kw))


async def test_text_mode_send_sets_the_modem_up_once(emu: GsmModemEmulator) -> None:
    mm = modem(emu)
    try:
        assert await mm.send(NUMBER, "Smoke alarm, flat 3") == 1
        assert await mm.send("+8613800000002", "second") == 2
    finally:
        await mm.close()
    assert [(s.number, s.text, s.mr) for s in emu.sent] == [(NUMBER, "Smoke alarm, flat 3", 1),
                                                            ("+8613800000002", "second", 2)]
    # echo is on at power-up (the client skips it), text mode is chosen, numeric errors asked for
    assert emu.commands == ["AT", "ATE0", "AT+CMEE=1", "AT+CMGF=1", f'AT+CMGS="{NUMBER}"',
                            'AT+CMGS="+8613800000002"']


async def test_network_errors_are_reported_with_their_27005_meaning(emu: GsmModemEmulator) -> None:
    mm = modem(emu)
    try:
        emu.registered = False
        with pytest.raises(ActionFailed, match=r"\+CMS ERROR 331 \(no network service\)"):
            await mm.send(NUMBER, "x")
        emu.registered = True
        emu.fail_next(1)
        with pytest.raises(ActionFailed, match="CMS ERROR 500"):
            await mm.send(NUMBER, "x")
        assert await mm.send(NUMBER, "through") == 1
    finally:
        await mm.close()


async def test_a_hung_modem_costs_one_deadline_then_it_is_set_up_again(emu: GsmModemEmulator) -> None:
    mm = modem(emu, prompt_timeout_ms=200, send_timeout_ms=200)
    try:
        await mm.send(NUMBER, "one")
        emu.hung = True
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ActionFailed, match="timeout"):
            await mm.send(NUMBER, "lost")
        assert loop.time() - t0 < 1.0
        emu.hung = False
        assert await mm.send(NUMBER, "two") == 2
    finally:
        await mm.close()
    assert emu.commands.count("AT+CMGF=1") == 2  # set up again after the timeout


async def test_network_slower_than_the_send_deadline(emu: GsmModemEmulator) -> None:
    emu.send_delay_s = 1.0
    mm = modem(emu, send_timeout_ms=150)
    try:
        with pytest.raises(ActionFailed, match="timeout"):
            await mm.send(NUMBER, "slow")
    finally:
        await mm.close()


async def test_unplugged_modem_fails_and_is_reopened_when_back(emu: GsmModemEmulator) -> None:
    mm = modem(emu)
    try:
        await mm.send(NUMBER, "one")
        emu.unplug()
        with pytest.raises(ActionFailed):
            await mm.send(NUMBER, "while unplugged")
        with pytest.raises(ActionFailed, match="cannot open"):
            await mm.send(NUMBER, "device node gone")
        emu.replug()
        assert await mm.send(NUMBER, "back") >= 1
    finally:
        await mm.close()
    assert [s.text for s in emu.sent] == ["one", "back"]
    assert mm.opens == 2


async def test_text_cannot_smuggle_control_characters_or_exceed_160(emu: GsmModemEmulator) -> None:
    assert sms_text("a\x1ab\x1bc\r\nd\u00e9") == "a b c  d?"
    assert len(sms_text("x" * 500)) == 160
    mm = modem(emu)
    try:
        await mm.send(NUMBER, "stop\x1aAT+CMGS=\"+999\"\x1a" + "y" * 300)
    finally:
        await mm.close()
    assert len(emu.sent) == 1 and len(emu.sent[0].text) == 160 and "\x1a" not in emu.sent[0].text
    with pytest.raises(ActionFailed, match="invalid number"):
        await mm.send('+86"\r;ATD112', "x")
    assert mask_number(NUMBER) == "**********0001"


def sms_request(emu: GsmModemEmulator, retries: int, backoff_ms: int = 10) -> ActionRequest:
    spec = m.ActionSpec("sms", 0, "modem", m.SmsAction((m.Template(NUMBER),), m.Template("t")), 0, "key", None,
                        retries, backoff_ms, 2000)
    return ActionRequest("r", spec, 1, bytes(8), ("r", 0, b""), {}, 0, 1)


async def test_runner_retries_with_backoff_and_reports_once(emu: GsmModemEmulator) -> None:
    mm = modem(emu)
    results: list[ActionResult] = []
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:  # the backoff schedule, without waiting for it
        sleeps.append(s)

    async def execute(req: ActionRequest) -> tuple[str, str]:
        return f"+CMGS {await mm.send(NUMBER, 'retry me')}", mask_number(NUMBER)

    runner = ActionRunner(execute, lambda req, res: results.append(res), now_ms=lambda: 0, sleep=fake_sleep)
    try:
        emu.fail_next(2)
        runner.submit(sms_request(emu, retries=3))
        await runner.idle()
        assert [(r.ok, r.attempts, r.detail) for r in results] == [(True, 3, "+CMGS 1")]
        assert sleeps == [0.01, 0.02]
        emu.fail_next(5)
        runner.submit(sms_request(emu, retries=2))
        await runner.idle()
        assert (results[1].ok, results[1].result, results[1].attempts) == (False, "failed", 3)
        assert "CMS ERROR 500" in results[1].detail
        assert runner.retries == 4
    finally:
        await mm.close()
