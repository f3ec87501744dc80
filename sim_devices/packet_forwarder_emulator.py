"""A Semtech UDP packet forwarder (GWMP v2) in front of a virtual concentrator on the virtual air.

It sends real UDP datagrams from its own loopback socket to the gateway's port, built here directly from
PROTOCOL.TXT (independently of the gateway's codec, so a symmetric bug cannot hide): PUSH_DATA with an
``rxpk`` array for what the concentrator heard (packets completing in the same instant share one
datagram), optional ``stat``, PULL_DATA keep-alives; it answers PULL_RESP with TX_ACK, judging the
``txpk`` as the forwarder's just-in-time queue does (TOO_LATE within 32.5 ms, TOO_EARLY beyond 512 s,
COLLISION_PACKET against an already scheduled packet, TX_FREQ, TX_POWER) and transmitting accepted
packets on the air at their ``tmst``. :meth:`restart` reopens the socket on a new source port, as a
restarted forwarder would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from lifeline.sim_devices.air import AirChannel, Delivery, LoraParams, RadioBusy, VirtualClock

VERSION = 2
PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = range(6)
TX_MIN_LEAD_US = 1500 + 1000 + 30000  # TX_START_DELAY + TX_MARGIN_DELAY + TX_JIT_DELAY (jitqueue.c)
TX_MAX_ADVANCE_US = 512_000_000
# Eight multi-SF channels as a Lifeline EU868 concentrator is configured: the three LoRaWAN default
# channels, four more, and Lifeline's P2P channel 869.525 MHz (docs/radios.md section 2.4).
EU868_CHANNELS = (868_100_000, 868_300_000, 868_500_000, 867_100_000, 867_300_000, 867_500_000,
                  867_700_000, 869_525_000)


@dataclass(frozen=True, slots=True)
class Scheduled:
    start_ms: float
    end_ms: float
    payload: bytes
    params: LoraParams
    power_dbm: int


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, owner: PacketForwarderEmulator) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._on_datagram(data)


class PacketForwarderEmulator:
    def __init__(
        self,
        air: AirChannel,
        name: str,
        gateway_eui: bytes,
        server: tuple[str, int],
        *,
        x_m: float = 0.0,
        y_m: float = 0.0,
        channels_hz: Iterable[int] = EU868_CHANNELS,
        sfs: Iterable[int] = range(7, 13),
        bw_khz: int = 125,
        tx_freq_range_hz: tuple[int, int] = (863_000_000, 870_000_000),
        max_power_dbm: int = 27,
        forward_crc_errors: bool = False,
        seed: int = 0,
    ) -> None:
        if len(gateway_eui) != 8:
            raise ValueError("gateway EUI is 8 bytes")
        self.air = air
        self.clock: VirtualClock = air.clock
        self.name = name
        self.eui = gateway_eui
        self.server = server
        self.tx_freq_range_hz = tx_freq_range_hz
        self.max_power_dbm = max_power_dbm
        self.forward_crc_errors = forward_crc_errors
        self.rng = random.Random(seed)
        self.counter_offset_us = self.rng.getrandbits(32)
        self.radio = air.add_radio(name, x_m, y_m, on_delivery=self._on_delivery, duty_cycle=False)
        self.channels = tuple(channels_hz)
        self.radio.listen([LoraParams(f, sf, bw_khz) for f in self.channels for sf in sfs])
        self.counters: Counter[str] = Counter()
        self.tx_acks: list[str] = []  # error values sent, in order
        self.scheduled: list[Scheduled] = []
        self.sent_rxpk: list[dict[str, object]] = []
        self._pending_rxpk: list[dict[str, object]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._push_tokens: set[int] = set()
        self._pull_waiters: dict[int, asyncio.Future[None]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._keepalive: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def source_port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self, keepalive_s: float | None = None) -> None:
        """Open the socket and send the first PULL_DATA (and then every ``keepalive_s`` real seconds)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self), local_addr=("127.0.0.1", 0), remote_addr=self.server)
        self._transport = transport
        await self.pull()
        if keepalive_s is not None:
            self._keepalive = asyncio.create_task(self._keepalive_loop(keepalive_s))

    async def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def restart(self) -> None:
        """The forwarder process restarts: new socket, new source port, PULL_DATA again."""
        keepalive = self._keepalive is not None
        await self.stop()
        self.counters["restarts"] += 1
        await self.start(keepalive_s=10.0 if keepalive else None)

    async def _keepalive_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.pull()

    async def pull(self, timeout: float = 2.0) -> None:
        """Send PULL_DATA and wait for the PULL_ACK."""
        token = self.rng.getrandbits(16)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pull_waiters[token] = future
        self.send_raw(struct.pack(">BHB", VERSION, token, PULL_DATA) + self.eui)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._pull_waiters.pop(token, None)

    def send_raw(self, datagram: bytes) -> None:
        """Send any bytes to the gateway from this forwarder's socket (fuzzing, protocol v1, ...)."""
        assert self._transport is not None, "not started"
        self._transport.sendto(datagram)

    def send_stat(self) -> None:
        stat = {"time": "2024-01-01 00:00:00 GMT", "rxnb": self.counters["rx"], "rxok": self.counters["rx"],
                "rxfw": self.counters["rx"], "ackr": 100.0, "dwnb": self.counters["pull_resp"],
                "txnb": self.counters["tx"]}
        self._push({"stat": stat})

    # --- the concentrator ------------------------------------------------------------------------

    def tmst(self, at_ms: float | None = None) -> int:
        """The concentrator's free-running microsecond counter (uint32, wraps every ~71.6 minutes)."""
        t = self.clock.now() if at_ms is None else at_ms
        return (round(t * 1000) + self.counter_offset_us) & 0xFFFFFFFF

    def _on_delivery(self, d: Delivery) -> None:
        if not d.ok and not (self.forward_crc_errors and d.reason == "collision"):
            return
        payload = d.tx.payload
        if not d.ok:  # the header decoded, the payload CRC failed
            payload = bytes(b ^ 0x5A for b in payload)
        p = d.tx.params
        rxpk: dict[str, object] = {
            "tmst": self.tmst(d.at_ms),
            "chan": self.channels.index(p.freq_hz) if p.freq_hz in self.channels else 0,
            "rfch": 0,
            "freq": round(p.freq_hz / 1e6, 6),
            "stat": 1 if d.ok else -1,
            "modu": "LORA",
            "datr": f"SF{p.sf}BW{p.bw_khz}",
            "codr": f"4/{p.cr + 4}",
            "lsnr": round(d.snr_db, 1),
            "rssi": round(d.rssi_dbm),
            "size": len(payload),
            "data": base64.b64encode(payload).decode("ascii"),
        }
        self.counters["rx" if d.ok else "rx_crc_error"] += 1
        self._pending_rxpk.append(rxpk)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send what the concentrator heard since the last flush as one PUSH_DATA."""
        self._flush_handle = None
        if self._pending_rxpk and self._transport is not None:
            self.sent_rxpk.extend(self._pending_rxpk)
            self._push({"rxpk": self._pending_rxpk})
        self._pending_rxpk = []

    def _push(self, body: dict[str, object]) -> None:
        token = self.rng.getrandbits(16)
        self._push_tokens.add(token)
        self.counters["push_data"] += 1
        self.send_raw(struct.pack(">BHB", VERSION, token, PUSH_DATA) + self.eui
                      + json.dumps(body, separators=(",", ":")).encode())

    # --- downstream --------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        if len(data) < 4 or data[0] != VERSION:
            self.counters["bad_datagram"] += 1
            return
        token = int.from_bytes(data[1:3], "big")
        kind = data[3]
        if kind == PUSH_ACK:
            if token in self._push_tokens:
                self._push_tokens.discard(token)
                self.counters["push_ack"] += 1
            else:
                self.counters["push_ack_unknown"] += 1
        elif kind == PULL_ACK:
            waiter = self._pull_waiters.get(token)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self.counters["pull_ack"] += 1
        elif kind == PULL_RESP:
            self.counters["pull_resp"] += 1
            error = self._schedule(data[4:])
            self.tx_acks.append(error)
            body = b"" if error == "NONE" else json.dumps({"txpk_ack": {"error": error}}).encode()
            self.send_raw(struct.pack(">BHB", VERSION, token, TX_ACK) + self.eui + body)
        else:
            self.counters["bad_datagram"] += 1

    def _schedule(self, body: bytes) -> str:
        try:
            txpk = json.loads(body)["txpk"]
            data = base64.b64decode(txpk["data"] + "=" * (-len(txpk["data"]) % 4), validate=True)
            freq = round(float(txpk["freq"]) * 1e6)
            sf_text, bw_text = txpk["datr"].removeprefix("SF").split("BW")
            codr = txpk.get("codr", "4/5")
            params = LoraParams(freq, int(sf_text), int(bw_text), int(codr.split("/")[1]) - 4,
                                int(txpk.get("prea", 8)), bool(txpk.get("ipol", False)))
            power = int(txpk.get("powe", 14))
            if int(txpk.get("size", len(data))) != len(data) or txpk.get("modu") != "LORA":
                raise ValueError("size/modu")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.counters["bad_txpk"] += 1
            return "UNKNOWN"  # the real forwarder drops it without a TX_ACK; make the failure visible
        now = self.clock.now()
        if txpk.get("imme"):
            start = now
        else:
            ahead = (int(txpk["tmst"]) - self.tmst(now)) & 0xFFFFFFFF
            if ahead >= 1 << 31 or ahead <= TX_MIN_LEAD_US:
                return "TOO_LATE"
            if ahead > TX_MAX_ADVANCE_US:
                return "TOO_EARLY"
            start = now + ahead / 1000.0
        lo, hi = self.tx_freq_range_hz
        if not lo <= freq <= hi:
            return "TX_FREQ"
        if power > self.max_power_dbm:
            return "TX_POWER"
        item = Scheduled(start, start + params.toa_ms(len(data)), data, params, power)
        if any(s.start_ms < item.end_ms and item.start_ms < s.end_ms for s in self.scheduled
               if s.end_ms > now):
            return "COLLISION_PACKET"
        self.scheduled.append(item)
        if start <= now:
            self._transmit(item)
        else:
            self.clock.call_at(start, lambda: self._transmit(item))
        return "NONE"

    def _transmit(self, item: Scheduled) -> None:
        try:
            self.radio.transmit(item.payload, item.params, power_dbm=item.power_dbm)
            self.counters["tx"] += 1
        except RadioBusy:
            self.counters["tx_busy"] += 1
