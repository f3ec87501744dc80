"""LoRa ingress from concentrator gateways running the Semtech UDP packet forwarder (GWMP v2).

The adapter is the protocol's "server": it binds one UDP port (1700 by convention) and accepts any
number of forwarders, told apart by their gateway EUI (the "MAC address" bytes 4-11 of each datagram).

* PUSH_DATA: each good ``rxpk`` becomes a RawFrame (CRC-failed packets, FSK packets and malformed entries
  are counted by reason and dropped); the PUSH_ACK (same token) is sent once the datagram's frames have
  been handed to the pipeline. A ``stat`` object is kept as the forwarder's last status.
* PULL_DATA: answered with PULL_ACK; the datagram's source address becomes the forwarder's downlink
  address, so a forwarder that restarts (new source port) or moves is picked up by its next PULL_DATA.
* Downlinks: PULL_RESP with a ``txpk`` timed on the concentrator counter (``tmst`` of the uplink plus the
  Lifeline window offset, lora_p2p), normal IQ (``ipol`` false, as the nodes listen); the result is the
  TX_ACK ``error`` (NONE, TOO_LATE, TOO_EARLY, COLLISION_PACKET, ...), counted per value; no TX_ACK in
  time counts as not sent.
* Protocol version 1 and anything else malformed is counted by reason (gwmp.GwmpError) and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.ingress import gwmp, lora_p2p
from lifeline.gateway.ingress.base import DownlinkRequest, FrameSink, RawFrame, Reception
from lifeline.gateway.ingress.duty_cycle import DutyCycleTracker
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.protocols import lora_phy

log = logging.getLogger(__name__)

RADIO = "lora-udp"
JIT_LEAD_MS = 40  # the forwarder refuses packets due within ~32.5 ms (TX_START_DELAY + JIT + margin)
_CONTEXT = struct.Struct(">8sIBHB")  # gateway EUI, tmst, rfch, bandwidth kHz, has_tmst
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass(frozen=True, slots=True)
class SemtechUdpConfig:
    """Options of one ``type = "lora-udp"`` ingress (docs/radios.md section 2.3)."""

    name: str
    bind: str = "127.0.0.1"  # the forwarder usually runs on the same Pi; "0.0.0.0" for remote ones
    port: int = 1700
    region: str = "EU868"
    tx_power_dbm: int | None = None  # None: the region's Lifeline default (EU868 14, CN470 17)
    duty_cycle: float | None = None  # only where the region has no sub-band limit (CN470); None = 1 %
    tx_ack_timeout_s: float = 1.0
    forwarder_timeout_s: float = 120.0  # a forwarder without PULL_DATA for this long gets no downlinks
    max_forwarders: int = 64
    queue_datagrams: int = 1024

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ValueError(f"{key}: {reason}")

        if not _NAME.match(self.name):
            fail("name", f"{self.name!r} must be 1-32 of A-Z a-z 0-9 _ -")
        if not self.bind:
            fail("bind", "empty address")
        if not 0 <= self.port <= 65535:
            fail("port", f"{self.port} is not 0..65535")
        if self.region not in lora_p2p.REGION_DEFAULTS:
            fail("region", f"{self.region!r} is not one of {', '.join(lora_p2p.REGION_DEFAULTS)}")
        if self.tx_power_dbm is not None and not 0 <= self.tx_power_dbm <= 30:
            fail("tx_power_dbm", f"{self.tx_power_dbm} is not 0..30")
        if self.duty_cycle is not None and not 0.0 < self.duty_cycle <= 1.0:
            fail("duty_cycle", f"{self.duty_cycle} is not in (0, 1]")
        for key in ("tx_ack_timeout_s", "forwarder_timeout_s"):
            if not getattr(self, key) > 0:
                fail(key, "must be > 0")
        if not 1 <= self.max_forwarders <= 10_000:
            fail("max_forwarders", "is not 1..10000")
        if not 1 <= self.queue_datagrams <= 1_000_000:
            fail("queue_datagrams", "is not 1..1000000")

    @classmethod
    def from_config(cls, table: Mapping[str, object], **overrides: object) -> SemtechUdpConfig:
        return lora_p2p.options_from_table(cls, table, **overrides)

    @property
    def power_dbm(self) -> int:
        d = lora_p2p.REGION_DEFAULTS[self.region].tx_power_dbm
        return d if self.tx_power_dbm is None else self.tx_power_dbm


@dataclass(slots=True)
class Forwarder:
    """What the server knows about one packet forwarder."""

    eui: bytes
    pull_addr: tuple[str, int] | None = None  # where PULL_RESP goes (source of the last PULL_DATA)
    push_addr: tuple[str, int] | None = None
    last_pull_ms: int = 0
    last_push_ms: int = 0
    stat: Mapping[str, object] | None = None
    duty: DutyCycleTracker | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, adapter: SemtechUdpAdapter) -> None:
        self.adapter = adapter

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.adapter._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.adapter._counts["socket_error"] += 1


class SemtechUdpAdapter:
    """:class:`~lifeline.gateway.ingress.base.IngressAdapter` for Semtech UDP packet forwarders."""

    radio = RADIO

    def __init__(
        self,
        config: SemtechUdpConfig,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.name = config.name
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._region = lora_phy.region(config.region)
        self._counts: Counter[str] = Counter()
        self.forwarders: dict[bytes, Forwarder] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._queue: asyncio.Queue[tuple[gwmp.PushData, tuple[str, int], int]] = asyncio.Queue(
            config.queue_datagrams)
        self._worker: asyncio.Task[None] | None = None
        self._sink: FrameSink | None = None
        self._tx_pending: dict[int, tuple[bytes, asyncio.Future[str]]] = {}
        self._tokens = random.Random()

    @classmethod
    def from_config(cls, table: Mapping[str, object], **kwargs: object) -> SemtechUdpAdapter:
        """Validate an ``[ingress.options]`` table (``name`` may be in it or given as a keyword)."""
        name = kwargs.pop("name", None)
        config = SemtechUdpConfig.from_config(table, **({} if name is None else {"name": name}))
        return cls(config, **kwargs)  # type: ignore[arg-type]

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound (host, port); useful with ``port = 0``."""
        assert self._transport is not None, "not started"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    # --- IngressAdapter ----------------------------------------------------------------------------

    async def start(self, sink: FrameSink) -> None:
        self._sink = sink
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.config.bind, self.config.port))
        self._transport = transport
        self._worker = asyncio.create_task(self._work(), name=f"{self.name}-push")
        log.info("%s: GWMP server on %s:%d", self.name, *self.local_address)

    async def stop(self) -> None:
        if self._worker is not None:
            await cancel_and_wait([self._worker])
            self._worker = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for _, future in self._tx_pending.values():
            if not future.done():
                future.cancel()
        self._tx_pending.clear()

    def counters(self) -> Mapping[str, int]:
        return dict(self._counts)

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        ok, reason = await self._send_downlink(request)
        self._counts["downlinks_sent" if ok else "downlink_failed." + reason] += 1
        return ok

    # --- upstream ----------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._counts["datagrams"] += 1
        try:
            message = gwmp.decode_upstream(data)
        except gwmp.GwmpError as exc:
            self._counts["reject." + exc.reason] += 1
            return
        now = self._clock.now_ms()
        if isinstance(message, gwmp.PullData):
            self._on_pull(message, addr, now)
        elif isinstance(message, gwmp.TxAck):
            self._on_tx_ack(message)
        else:
            forwarder = self._forwarder(message.gateway_eui)
            if forwarder is None:
                return
            forwarder.push_addr = addr
            forwarder.last_push_ms = now
            if message.stat is not None:
                forwarder.stat = message.stat
                self._counts["stat"] += 1
            for reason in message.rejects:
                self._counts["rxpk_reject." + reason] += 1
            try:
                self._queue.put_nowait((message, addr, now))
            except asyncio.QueueFull:
                self._counts["dropped_queue_full"] += 1

    def _forwarder(self, eui: bytes) -> Forwarder | None:
        forwarder = self.forwarders.get(eui)
        if forwarder is None:
            if len(self.forwarders) >= self.config.max_forwarders:
                self._counts["reject.too_many_forwarders"] += 1
                return None
            forwarder = Forwarder(eui, duty=DutyCycleTracker(self._region, self.config.duty_cycle))
            self.forwarders[eui] = forwarder
            self._counts["forwarders_seen"] += 1
            log.info("%s: new forwarder %s", self.name, eui.hex())
        return forwarder

    def _on_pull(self, message: gwmp.PullData, addr: tuple[str, int], now: int) -> None:
        forwarder = self._forwarder(message.gateway_eui)
        if forwarder is None:
            return
        if forwarder.pull_addr is not None and forwarder.pull_addr != addr:
            self._counts["forwarder_moved"] += 1
            log.info("%s: forwarder %s now at %s:%d", self.name, message.gateway_eui.hex(), *addr)
        forwarder.pull_addr = addr
        forwarder.last_pull_ms = now
        self._counts["pull_data"] += 1
        self._send(gwmp.encode_pull_ack(message.token), addr)

    def _on_tx_ack(self, message: gwmp.TxAck) -> None:
        entry = self._tx_pending.get(message.token)
        if entry is None or entry[0] != message.gateway_eui:
            self._counts["tx_ack_unknown"] += 1
            return
        del self._tx_pending[message.token]
        if not entry[1].done():
            entry[1].set_result(message.error)

    async def _work(self) -> None:
        while True:
            message, addr, now = await self._queue.get()
            burst: list[RawFrame] = []
            for pk in message.rxpk:
                if pk.stat == 0:
                    self._counts["no_crc"] += 1
                reception = Reception(
                    radio=RADIO,
                    adapter=self.name,
                    rx_ms=now,
                    rssi=pk.rssi,
                    snr_x10=pk.lsnr_x10,
                    freq_hz=pk.freq_hz,
                    sf=pk.sf,
                    context=_CONTEXT.pack(message.gateway_eui, pk.tmst or 0, pk.rfch & 0xFF, pk.bw_khz,
                                          int(pk.tmst is not None)),
                )
                self._counts["frames"] += 1
                burst.append(RawFrame(pk.data, reception))
            assert self._sink is not None
            many: Callable[[list[RawFrame]], Awaitable[None]] | None = getattr(self._sink, "submit_many", None)
            if many is not None and len(burst) > 1:
                await many(burst)  # the datagram's frames as one burst (one queue operation)
            else:
                for raw in burst:
                    await self._sink.submit(raw)
            self._send(gwmp.encode_push_ack(message.token), addr)
            self._counts["push_data"] += 1

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    # --- downstream --------------------------------------------------------------------------------

    async def _send_downlink(self, request: DownlinkRequest) -> tuple[bool, str]:
        rx = request.reception
        if rx.radio != RADIO or rx.adapter != self.name or len(rx.context) != _CONTEXT.size:
            return False, "wrong_adapter"
        if rx.freq_hz is None or rx.sf is None:
            return False, "no_channel"
        if not 1 <= len(request.payload) <= lora_phy.MAX_PHY_PAYLOAD:
            return False, "bad_payload"
        eui, tmst, _rfch, bw_khz, has_tmst = _CONTEXT.unpack(rx.context)
        if not has_tmst:
            return False, "no_tmst"
        forwarder = self.forwarders.get(eui)
        now = self._clock.now_ms()
        if (forwarder is None or forwarder.pull_addr is None
                or now - forwarder.last_pull_ms > self.config.forwarder_timeout_s * 1000):
            return False, "no_forwarder"
        offset_ms = lora_p2p.RX1_DELAY_MS + lora_p2p.TX_OFFSET_MS
        start_ms = rx.rx_ms + offset_ms  # rx_ms ~ uplink end (PUSH_DATA is sent right after RX)
        if start_ms > request.deadline_ms:
            return False, "deadline"
        if start_ms - now < JIT_LEAD_MS:
            return False, "too_late"
        assert forwarder.duty is not None
        if forwarder.duty.wait_ms(rx.freq_hz, bw_khz, start_ms) > 0:
            return False, "duty_cycle"
        txpk = gwmp.TxPk(
            data=request.payload,
            freq_hz=rx.freq_hz,
            sf=rx.sf,
            bw_khz=bw_khz,
            power_dbm=self.config.power_dbm,
            tmst=(tmst + offset_ms * 1000) & 0xFFFFFFFF,
            rfch=0,
            ipol=lora_p2p.DOWNLINK_IQ_INVERTED,
        )
        token = self._tokens.getrandbits(16)
        while token in self._tx_pending:
            token = (token + 1) & 0xFFFF
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tx_pending[token] = (eui, future)
        self._send(gwmp.encode_pull_resp(token, txpk), forwarder.pull_addr)
        try:
            error = await asyncio.wait_for(future, self.config.tx_ack_timeout_s)
        except TimeoutError:
            self._tx_pending.pop(token, None)
            return False, "tx_ack_timeout"
        self._counts["tx_ack." + error] += 1
        if error != "NONE":
            return False, "tx_ack." + error
        toa = lora_phy.time_on_air_ms(len(request.payload), rx.sf, bw_khz)
        forwarder.duty.record(rx.freq_hz, bw_khz, start_ms, toa)
        return True, ""
