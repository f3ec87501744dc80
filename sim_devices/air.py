"""A virtual LoRa air channel: time on air, path loss, sensitivity, collisions with capture, duty cycle.

Everything runs in virtual time (:class:`VirtualClock`): a transmission is scheduled to complete at
``start + time_on_air`` and is judged, for every other radio, when it completes. Nothing sleeps, and with
the same seed the same transmissions give the same receptions, RSSI and SNR.

Model (docs/radios.md section 5 has the numbers and sources):

* Time on air: :func:`lifeline.protocols.lora_phy.time_on_air_ms` (SX1276 datasheet 4.1.1.7).
* Path loss: log-distance with log-normal shadowing, PL(d) = PL(d0) + 10 n log10(d/d0) + X_sigma, with
  the urban fit used by LoRaSim (Bor et al., "Do LoRa Low-Power Wide-Area Networks Scale?", MSWiM 2016):
  d0 = 40 m, PL(d0) = 127.41 dB, n = 2.08, sigma = 3.57 dB at 868 MHz, plus 20 log10(f / 868 MHz) for
  other carriers (CN470 loses 5.3 dB less). X_sigma is drawn per (transmission, receiver) from an RNG
  seeded with (seed, transmission number, receiver name), so results do not depend on evaluation order.
* Sensitivity: SX1276 datasheet table "LoRa receiver sensitivity" (RFS_L125/250/500_HF, LNA boost):
  a packet below it is lost. Noise floor -174 dBm/Hz + 10 log10(BW) + 6 dB noise figure gives the SNR.
* Reception needs a listening window with the same frequency, SF, bandwidth and IQ polarity that
  overlaps at least 5 symbols of the preamble (or all of it, if shorter), and a receiver that is not
  transmitting itself (half duplex).
* Collisions: another transmission on the same frequency, SF and bandwidth overlapping in time
  interferes (any IQ polarity; different SFs are treated as orthogonal). With capture on, the wanted
  packet survives when its power exceeds the summed interference by ``capture_db`` (6 dB, the co-SF
  rejection of the SX127x family) at that receiver; otherwise - and always with capture off, as in pure
  ALOHA - every overlapping packet is lost. Timing of the overlap (whether the stronger packet arrives
  during the weaker one's preamble) is not modelled.
* Duty cycle: each radio has a :class:`~lifeline.gateway.ingress.duty_cycle.DutyCycleTracker` for the
  region; a transmission that would break it raises :class:`DutyCycleExceeded`.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from lifeline.gateway.ingress import lora_p2p
from lifeline.gateway.ingress.duty_cycle import DutyCycleTracker
from lifeline.protocols import lora_phy

# SX1276/77/78/79 datasheet rev. 7, table 10 "LoRa receiver sensitivity" (band 1, LNA boost), dBm.
SENSITIVITY_DBM: dict[int, dict[int, float]] = {
    125: {6: -118, 7: -123, 8: -126, 9: -129, 10: -132, 11: -133, 12: -136},
    250: {6: -115, 7: -120, 8: -123, 9: -125, 10: -128, 11: -130, 12: -133},
    500: {6: -111, 7: -116, 8: -119, 9: -122, 10: -125, 11: -128, 12: -130},
}
NOISE_FIGURE_DB = 6.0
MAX_SNR_DB = 15.0  # LoRa modems report at most about +13..+15 dB
CAPTURE_DB = 6.0
DETECT_SYMBOLS = 5  # preamble symbols a receiver needs to lock


def noise_floor_dbm(bw_khz: int) -> float:
    return -174.0 + 10.0 * math.log10(bw_khz * 1000.0) + NOISE_FIGURE_DB


def sensitivity_dbm(sf: int, bw_khz: int) -> float:
    return SENSITIVITY_DBM[bw_khz][sf]


class DutyCycleExceeded(Exception):
    def __init__(self, radio: str, wait_ms: float) -> None:
        super().__init__(f"{radio}: duty cycle, wait {wait_ms:.0f} ms")
        self.radio = radio
        self.wait_ms = wait_ms


class RadioBusy(Exception):
    """The radio is still transmitting (half duplex, one packet at a time)."""


# --- virtual time --------------------------------------------------------------------------------


@dataclass(order=True)
class Timer:
    at_ms: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Virtual milliseconds with timers. Implements the gateway's ``Clock`` protocol (``now_ms``,
    ``monotonic``) plus an awaitable :meth:`sleep` that advances time instead of waiting, so adapters
    under test run their real scheduling code instantly and deterministically."""

    def __init__(self, start_ms: float = 1_700_000_000_000.0) -> None:
        self._now = float(start_ms)
        self._timers: list[Timer] = []
        self._seq = 0
        self._running = False

    def now(self) -> float:
        """Current virtual time in (fractional) Unix milliseconds."""
        return self._now

    def now_ms(self) -> int:
        return int(self._now)

    def monotonic(self) -> float:
        return self._now / 1000.0

    def call_at(self, at_ms: float, callback: Callable[[], None]) -> Timer:
        self._seq += 1
        timer = Timer(max(at_ms, self._now), self._seq, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance_to(self, at_ms: float) -> None:
        """Run every timer due up to ``at_ms`` in time order, then set the time to ``at_ms``."""
        if self._running:  # a timer callback advancing time would reorder events
            raise RuntimeError("advance_to called from a timer callback")
        self._running = True
        try:
            while self._timers and self._timers[0].at_ms <= at_ms:
                timer = heapq.heappop(self._timers)
                if timer.cancelled:
                    continue
                self._now = max(self._now, timer.at_ms)
                timer.callback()
            self._now = max(self._now, at_ms)
        finally:
            self._running = False

    def advance(self, ms: float) -> None:
        self.advance_to(self._now + ms)

    def run_all(self) -> None:
        """Run every pending timer (the air goes quiet)."""
        while self._timers:
            self.advance_to(max(self._timers).at_ms)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` in virtual time: advance, then yield once to the event loop."""
        if seconds > 0:
            self.advance(seconds * 1000.0)
        await asyncio.sleep(0)


# --- radio records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoraParams:
    freq_hz: int
    sf: int
    bw_khz: int = 125
    cr: int = 1  # 1..4 = 4/5..4/8
    preamble: int = 8
    iq_inverted: bool = False

    def toa_ms(self, payload_len: int) -> float:
        return lora_phy.time_on_air_ms(payload_len, self.sf, self.bw_khz, self.cr, self.preamble)

    def symbol_ms(self) -> float:
        return lora_phy.symbol_time_ms(self.sf, self.bw_khz)

    def preamble_ms(self) -> float:
        return (self.preamble + 4.25) * self.symbol_ms()

    def same_channel(self, other: LoraParams) -> bool:
        return self.freq_hz == other.freq_hz and self.sf == other.sf and self.bw_khz == other.bw_khz

    def downlink(self) -> LoraParams:
        """The parameters of the answer to an uplink sent with these (Lifeline P2P window)."""
        return replace(self, iq_inverted=lora_p2p.DOWNLINK_IQ_INVERTED)


@dataclass(frozen=True, slots=True)
class Transmission:
    seq: int
    sender: str
    params: LoraParams
    payload: bytes
    power_dbm: float
    start_ms: float
    end_ms: float

    @property
    def toa_ms(self) -> float:
        return self.end_ms - self.start_ms

    def overlaps(self, other: Transmission) -> bool:
        return self.start_ms < other.end_ms and other.start_ms < self.end_ms


@dataclass(frozen=True, slots=True)
class Delivery:
    """One transmission as one receiver experienced it."""

    tx: Transmission
    receiver: str
    rssi_dbm: float
    snr_db: float
    ok: bool
    reason: str  # ok | captured | collision | below_sensitivity | half_duplex | not_listening
    at_ms: float  # when the receiver finished receiving (= tx end)


@dataclass(frozen=True, slots=True)
class Listen:
    """A receive configuration: which channels/SFs a radio demodulates, and for how long."""

    freqs_hz: frozenset[int]
    sfs: frozenset[int]
    bw_khz: int
    iq_inverted: bool
    start_ms: float
    end_ms: float = math.inf

    def matches(self, p: LoraParams) -> bool:
        return (p.freq_hz in self.freqs_hz and p.sf in self.sfs and p.bw_khz == self.bw_khz
                and p.iq_inverted == self.iq_inverted)

    def detects(self, tx: Transmission) -> bool:
        if not self.matches(tx.params):
            return False
        pre_end = tx.start_ms + tx.params.preamble_ms()
        need = min(DETECT_SYMBOLS * tx.params.symbol_ms(), pre_end - tx.start_ms)
        overlap = min(self.end_ms, pre_end) - max(self.start_ms, tx.start_ms)
        return overlap >= need - 1e-9


@dataclass(frozen=True, slots=True)
class PathLossModel:
    d0_m: float = 40.0
    pl_d0_db: float = 127.41
    exponent: float = 2.08
    sigma_db: float = 3.57
    ref_freq_hz: float = 868e6

    def mean_db(self, distance_m: float, freq_hz: float) -> float:
        d = max(distance_m, 1.0)
        return (self.pl_d0_db + 10.0 * self.exponent * math.log10(d / self.d0_m)
                + 20.0 * math.log10(freq_hz / self.ref_freq_hz))


class Radio:
    """A LoRa transceiver at a position: a node, a gateway's modem or a concentrator antenna."""

    def __init__(self, air: AirChannel, name: str, x_m: float, y_m: float, tx_power_dbm: float,
                 antenna_gain_db: float, on_delivery: Callable[[Delivery], None] | None) -> None:
        self.air = air
        self.name = name
        self.x_m = x_m
        self.y_m = y_m
        self.tx_power_dbm = tx_power_dbm
        self.antenna_gain_db = antenna_gain_db
        self.on_delivery = on_delivery
        self.windows: list[Listen] = []
        self.duty: DutyCycleTracker | None = None
        self.busy_until_ms = -math.inf
        self.sent: list[Transmission] = []

    def listen(self, params: LoraParams | Iterable[LoraParams], start_ms: float | None = None,
               end_ms: float = math.inf) -> Listen:
        """Start (or schedule) receiving. Several ``params`` of one bandwidth and polarity make a
        multi-channel, multi-SF receiver such as a concentrator."""
        plist = [params] if isinstance(params, LoraParams) else list(params)
        if not plist:
            raise ValueError("listen needs at least one channel")
        bws = {p.bw_khz for p in plist}
        iqs = {p.iq_inverted for p in plist}
        if len(bws) != 1 or len(iqs) != 1:
            raise ValueError("one Listen has one bandwidth and one IQ polarity")
        window = Listen(frozenset(p.freq_hz for p in plist), frozenset(p.sf for p in plist), bws.pop(),
                        iqs.pop(), self.air.clock.now() if start_ms is None else start_ms, end_ms)
        self.windows.append(window)
        self._prune()
        return window

    def stop_listening(self, at_ms: float | None = None) -> None:
        at = self.air.clock.now() if at_ms is None else at_ms
        self.windows = [w if w.end_ms <= at else replace(w, end_ms=max(at, w.start_ms)) for w in self.windows]
        self._prune()

    def _prune(self) -> None:
        horizon = self.air.clock.now() - self.air.history_ms
        self.windows = [w for w in self.windows if w.end_ms >= horizon]

    def detects(self, tx: Transmission) -> bool:
        return any(w.detects(tx) for w in self.windows)

    def transmitting_during(self, tx: Transmission) -> bool:
        return any(own.overlaps(tx) for own in self.sent[-4:])

    def transmit(self, payload: bytes, params: LoraParams, power_dbm: float | None = None) -> Transmission:
        return self.air.transmit(self.name, payload, params, power_dbm)

    def distance_to(self, other: Radio) -> float:
        return math.hypot(self.x_m - other.x_m, self.y_m - other.y_m)


class AirChannel:
    def __init__(
        self,
        clock: VirtualClock,
        *,
        seed: int = 0,
        path_loss: PathLossModel | None = None,
        capture: bool = True,
        capture_db: float = CAPTURE_DB,
        region: str | lora_phy.Region | None = "EU868",
        default_duty: float | None = None,
        record: bool = True,
    ) -> None:
        self.clock = clock
        self.seed = seed
        self.path_loss = path_loss or PathLossModel()
        self.capture = capture
        self.capture_db = capture_db
        self.region = lora_phy.region(region) if isinstance(region, str) else region
        self.default_duty = default_duty
        self.record = record
        self.radios: dict[str, Radio] = {}
        self.deliveries: list[Delivery] = []
        self.stats: Counter[str] = Counter()
        self.history_ms = 20_000.0  # listen windows kept this long (longer than any LoRa packet)
        self._max_toa = 0.0
        self._recent: deque[Transmission] = deque()
        self._seq = 0
        self._rssi_cache: dict[int, dict[str, float]] = {}  # tx seq -> receiver -> RSSI

    def add_radio(self, name: str, x_m: float = 0.0, y_m: float = 0.0, *, tx_power_dbm: float = 14.0,
                  antenna_gain_db: float = 0.0, on_delivery: Callable[[Delivery], None] | None = None,
                  duty_cycle: bool = True) -> Radio:
        if name in self.radios:
            raise ValueError(f"radio {name!r} exists")
        radio = Radio(self, name, x_m, y_m, tx_power_dbm, antenna_gain_db, on_delivery)
        if duty_cycle and self.region is not None:
            radio.duty = DutyCycleTracker(self.region, self.default_duty)
        self.radios[name] = radio
        return radio

    def transmit(self, sender: str, payload: bytes, params: LoraParams,
                 power_dbm: float | None = None) -> Transmission:
        radio = self.radios[sender]
        now = self.clock.now()
        if radio.busy_until_ms > now:
            raise RadioBusy(f"{sender} transmits until {radio.busy_until_ms:.1f}")
        toa = params.toa_ms(len(payload))
        if radio.duty is not None:
            wait = radio.duty.wait_ms(params.freq_hz, params.bw_khz, now)
            if wait > 0:
                self.stats["duty_cycle_refused"] += 1
                raise DutyCycleExceeded(sender, wait)
            radio.duty.record(params.freq_hz, params.bw_khz, now, toa)
        self._seq += 1
        tx = Transmission(self._seq, sender, params, bytes(payload),
                          radio.tx_power_dbm if power_dbm is None else power_dbm, now, now + toa)
        radio.busy_until_ms = tx.end_ms
        radio.sent.append(tx)
        del radio.sent[:-8]
        self._max_toa = max(self._max_toa, toa)
        # A transmission still to complete started at or after now - max_toa; whatever ended before
        # that can no longer overlap it.
        while self._recent and self._recent[0].end_ms < now - 2 * self._max_toa:
            old = self._recent.popleft()
            self._rssi_cache.pop(old.seq, None)
        self._recent.append(tx)
        self.stats["transmissions"] += 1
        self.clock.call_at(tx.end_ms, lambda: self._complete(tx))
        return tx

    def rssi_dbm(self, tx: Transmission, receiver: Radio) -> float:
        per_tx = self._rssi_cache.setdefault(tx.seq, {})
        cached = per_tx.get(receiver.name)
        if cached is not None:
            return cached
        sender = self.radios[tx.sender]
        digest = hashlib.blake2b(f"{self.seed}:{tx.seq}:{receiver.name}".encode(), digest_size=8).digest()
        shadow = random.Random(int.from_bytes(digest, "big")).gauss(0.0, self.path_loss.sigma_db)
        loss = self.path_loss.mean_db(sender.distance_to(receiver), tx.params.freq_hz) + shadow
        value = tx.power_dbm + sender.antenna_gain_db + receiver.antenna_gain_db - loss
        per_tx[receiver.name] = value
        return value

    def judge(self, tx: Transmission, receiver: Radio) -> Delivery:
        """How ``receiver`` experienced ``tx`` (call once ``tx`` has ended)."""
        if not receiver.detects(tx):
            return Delivery(tx, receiver.name, math.nan, math.nan, False, "not_listening", tx.end_ms)
        rssi = self.rssi_dbm(tx, receiver)
        snr = min(rssi - noise_floor_dbm(tx.params.bw_khz), MAX_SNR_DB)

        def result(ok: bool, reason: str) -> Delivery:
            return Delivery(tx, receiver.name, rssi, snr, ok, reason, tx.end_ms)

        if receiver.transmitting_during(tx):
            return result(False, "half_duplex")
        if rssi < sensitivity_dbm(tx.params.sf, tx.params.bw_khz):
            return result(False, "below_sensitivity")
        interferers = [o for o in self._recent
                       if o is not tx and o.sender != receiver.name and o.params.same_channel(tx.params)
                       and o.overlaps(tx)]
        if not interferers:
            return result(True, "ok")
        if self.capture:
            interference_mw = sum(10 ** (self.rssi_dbm(o, receiver) / 10.0) for o in interferers)
            if rssi - 10.0 * math.log10(interference_mw) >= self.capture_db:
                return result(True, "captured")
        return result(False, "collision")

    def _complete(self, tx: Transmission) -> None:
        for receiver in list(self.radios.values()):
            if receiver.name == tx.sender or not receiver.windows:
                if receiver.name != tx.sender:
                    self.stats["not_listening"] += 1
                continue
            delivery = self.judge(tx, receiver)
            self.stats[delivery.reason] += 1
            if delivery.reason == "not_listening":
                continue
            if self.record:
                self.deliveries.append(delivery)
            if receiver.on_delivery is not None and delivery.reason not in ("below_sensitivity", "half_duplex"):
                receiver.on_delivery(delivery)

    def received_by(self, name: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.receiver == name and d.ok]


def open_rx_window(node: Radio, uplink: Transmission) -> Listen:
    """The contract's receive window after ``uplink`` (gateway/ingress/lora_p2p.py): the node listens
    at least from RX1_DELAY_MS after the uplink ends, for RX_WINDOW_MS, with the downlink IQ polarity.
    (The node firmware listens longer, from the end of its uplink; a downlink that lands here lands there.)"""
    start = uplink.end_ms + lora_p2p.RX1_DELAY_MS
    return node.listen(uplink.params.downlink(), start, start + lora_p2p.RX_WINDOW_MS)
