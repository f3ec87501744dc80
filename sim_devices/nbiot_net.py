"""The NB-IoT network as a virtual node's firmware sees it (its HAL ``net``): attach, a TCP stream to
the node broker, and the broker's side of MQTT 3.1.1 for that one client.

The node runs its own MQTT client (firmware/radios/mqtt.py) unchanged; this object answers it: CONNACK
(session present when a clean-session-0 client subscribed before), SUBACK, PUBACK for each QoS 1
PUBLISH after the fleet took the frame (``Fleet.nbiot_uplink``: paced into virtual time, then handed to
the broker bridge or counted), then the receive-window answer of ``GatewayEnd`` as a QoS 1 PUBLISH on
``lifeline/v1/nodes/<dev>/down``, and PINGRESP. Timing: attach ``attach_ms`` (1.5 s, an NB-IoT RRC
resume from PSM), each answer ``rtt_ms`` (400 ms) after the request; a read waits in the node's
virtual time. ``online = False`` is a network outage (attach fails).
"""

from __future__ import annotations

from typing import Any

CONNECT, PUBLISH, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT = 0x10, 0x30, 0x40, 0x80, 0xC0, 0xE0


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining(len(body)) + body


class NbiotNetwork:
    def __init__(self, fleet: Any, *, attach_ms: int = 1500, rtt_ms: int = 400) -> None:
        self.fleet = fleet
        self.attach_ms = attach_ms
        self.rtt_ms = rtt_ms
        self.online = True
        self.sessions: set[str] = set()  # client ids with a persistent session and a subscription

    # HAL net seam
    def up(self, hal: Any, cfg: Any, timeout_ms: int) -> bool:
        hal.clock.advance(min(self.attach_ms, timeout_ms))
        return self.online and not hal.vnode.radio_lost

    def connect(self, hal: Any, host: str, port: int, timeout_ms: int) -> _Session:
        if not self.online:
            raise OSError(113, "EHOSTUNREACH")
        return _Session(self, hal)


class _Session:
    def __init__(self, net: NbiotNetwork, hal: Any) -> None:
        self.net = net
        self.hal = hal
        self.inbuf = b""
        self.out: list[tuple[int, bytes]] = []  # (available at node ms, bytes)
        self.client_id = ""
        self.clean = True
        self.pid = 0
        self.closed = False

    def _answer(self, data: bytes, delay: int | None = None) -> None:
        at = self.hal.clock.ms + (self.net.rtt_ms if delay is None else delay)
        self.out.append((at, data))

    def write(self, data: bytes) -> int:
        if self.closed:
            raise OSError(32, "EPIPE")
        self.inbuf += bytes(data)
        while len(self.inbuf) >= 2:
            n = 0
            shift = 0
            i = 1
            while i < len(self.inbuf):
                d = self.inbuf[i]
                n |= (d & 0x7F) << shift
                shift += 7
                i += 1
                if not d & 0x80:
                    break
            else:
                return len(data)
            if len(self.inbuf) < i + n:
                return len(data)
            first, body = self.inbuf[0], self.inbuf[i:i + n]
            self.inbuf = self.inbuf[i + n:]
            self._packet(first, body)
        return len(data)

    def _packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == CONNECT:
            plen = int.from_bytes(body[0:2], "big")
            flags = body[2 + plen + 1]
            self.clean = bool(flags & 0x02)
            clen = int.from_bytes(body[2 + plen + 4:2 + plen + 6], "big")
            self.client_id = body[2 + plen + 6:2 + plen + 6 + clen].decode()
            present = not self.clean and self.client_id in self.net.sessions
            if self.clean:
                self.net.sessions.discard(self.client_id)
            self._answer(_packet(0x20, bytes((1 if present else 0, 0))))
        elif kind == SUBSCRIBE:
            if not self.clean:
                self.net.sessions.add(self.client_id)
            self._answer(_packet(0x90, body[:2] + b"\x01"))
        elif kind == PUBLISH:
            qos = (first >> 1) & 3
            tlen = int.from_bytes(body[:2], "big")
            pos = 2 + tlen
            pid = body[pos:pos + 2] if qos else b""
            payload = bytes(body[pos + (2 if qos else 0):])
            vnode = self.hal.vnode
            fleet = self.net.fleet
            if not fleet.nbiot_uplink(vnode, payload):
                return  # lost on the way: no PUBACK, the node times out
            if qos:
                self._answer(_packet(PUBACK, pid))
            down = fleet.gateway_end.answer(payload)
            if down is not None:
                self.pid = self.pid % 65535 + 1
                topic = ("lifeline/v1/nodes/%s/down" % vnode.dev_id.hex()).encode()
                self._answer(_packet(PUBLISH | 0x02, len(topic).to_bytes(2, "big") + topic
                                     + self.pid.to_bytes(2, "big") + down), self.net.rtt_ms + 200)
        elif kind == PINGREQ:
            self._answer(_packet(0xD0, b""))
        elif kind == DISCONNECT:
            self.closed = True
        # PUBACK from the node for a downlink: nothing to do

    def recv(self, n: int, timeout_ms: int) -> bytes:
        clock = self.hal.clock
        if not self.out:
            clock.advance(timeout_ms)
            return b""
        at, data = self.out[0]
        if at > clock.ms + timeout_ms:
            clock.advance(timeout_ms)
            return b""
        if at > clock.ms:
            clock.advance(at - clock.ms)
        chunk, rest = data[:n], data[n:]
        if rest:
            self.out[0] = (at, rest)
        else:
            self.out.pop(0)
        return chunk

    def close(self) -> None:
        self.closed = True
