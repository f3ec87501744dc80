# A small MQTT 3.1.1 client (OASIS standard, 2014) over a HAL stream, with a deadline on every read.
# umqtt.simple blocks without timeouts (wait_msg() sets the socket blocking); a node on a battery must
# give up when the wake budget is spent, so every operation here takes an absolute deadline in ticks_ms.
# QoS 0 and 1; persistent session (clean session 0) so the broker keeps QoS 1 downlinks while the node
# sleeps. Malformed packets raise MqttError with a reason, never an assert or an IndexError.

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

MAX_PACKET = 1024


class MqttError(Exception):
    def __init__(self, reason, detail=""):
        Exception.__init__(self, reason + (": " + detail if detail else ""))
        self.reason = reason


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return len(b).to_bytes(2, "big") + b


def _remaining(n):
    out = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes((first,)) + _remaining(len(body)) + body


def connect_packet(client_id, keepalive, clean, user=None, password=None):
    flags = 0x02 if clean else 0x00
    payload = _str(client_id)
    if user:
        flags |= 0x80
        payload += _str(user)
        if password:
            flags |= 0x40
            payload += _str(password)
    body = _str("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload
    return packet(CONNECT, body)


def publish_packet(topic, payload, qos, pid, dup=False):
    first = PUBLISH | (qos << 1) | (0x08 if dup else 0)
    body = _str(topic) + (pid.to_bytes(2, "big") if qos else b"") + bytes(payload)
    return packet(first, body)


class Mqtt:
    def __init__(self, hal, client_id, keepalive=60, user=None, password=None, clean=False):
        self._hal = hal
        self.client_id = client_id
        self.keepalive = keepalive
        self.user = user
        self.password = password
        self.clean = clean
        self._sock = None
        self._pid = 0
        self.inbox = []  # (topic, payload) received
        self.session_present = False

    # ---- transport ----
    def _left(self, deadline):
        return self._hal.ticks_diff(deadline, self._hal.ticks_ms())

    def _read_exact(self, n, deadline):
        buf = b""
        while len(buf) < n:
            left = self._left(deadline)
            if left <= 0:
                raise MqttError("timeout", "reading %d bytes" % n)
            chunk = self._sock.recv(n - len(buf), left)
            if chunk:
                buf += chunk
        return buf

    def _read_packet(self, deadline):
        first = self._read_exact(1, deadline)[0]
        n = 0
        shift = 0
        for _ in range(4):
            d = self._read_exact(1, deadline)[0]
            n |= (d & 0x7F) << shift
            shift += 7
            if not d & 0x80:
                break
        else:
            raise MqttError("bad_packet", "remaining length over 4 bytes")
        if n > MAX_PACKET:
            raise MqttError("bad_packet", "packet of %d bytes" % n)
        body = self._read_exact(n, deadline) if n else b""
        return first, body

    def _send(self, data):
        try:
            self._sock.write(data)
        except OSError as e:
            raise MqttError("io", str(e)) from None

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    # ---- protocol ----
    def connect(self, host, port, deadline):
        try:
            self._sock = self._hal.connect(host, port, max(1, self._left(deadline)))
        except OSError as e:
            raise MqttError("connect", str(e)) from None
        self._send(connect_packet(self.client_id, self.keepalive, self.clean, self.user, self.password))
        first, body = self._read_packet(deadline)
        if first != CONNACK or len(body) != 2:
            raise MqttError("bad_packet", "expected CONNACK")
        if body[1] != 0:
            raise MqttError("refused", "CONNACK return code %d" % body[1])
        self.session_present = bool(body[0] & 1)

    def _handle(self, first, body):
        """Handle a packet that is not the one being waited for (incoming PUBLISH, PINGRESP)."""
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            if len(body) < 2:
                raise MqttError("bad_packet", "short PUBLISH")
            tlen = int.from_bytes(body[:2], "big")
            pos = 2 + tlen
            if pos > len(body):
                raise MqttError("bad_packet", "topic beyond PUBLISH")
            topic = body[2:pos]
            if qos:
                if pos + 2 > len(body):
                    raise MqttError("bad_packet", "no packet id")
                pid = body[pos:pos + 2]
                pos += 2
                self._send(packet(PUBACK, pid))
            try:
                topic = topic.decode()
            except UnicodeError:
                raise MqttError("bad_packet", "topic not UTF-8") from None
            self.inbox.append((topic, body[pos:]))
        elif kind in (PINGRESP, PUBACK, SUBACK):
            pass  # late or duplicate acknowledgement
        else:
            raise MqttError("bad_packet", "unexpected packet type 0x%02x" % first)

    def _wait_for(self, kind, pid, deadline):
        while True:
            first, body = self._read_packet(deadline)
            if first & 0xF0 == kind & 0xF0 and kind != PUBLISH and body[:2] == pid:
                return body
            self._handle(first, body)

    def subscribe(self, topic, qos, deadline):
        pid = self._next_pid().to_bytes(2, "big")
        self._send(packet(SUBSCRIBE, pid + _str(topic) + bytes((qos,))))
        body = self._wait_for(SUBACK, pid, deadline)
        if len(body) < 3 or body[2] == 0x80:
            raise MqttError("refused", "subscription refused")

    def publish(self, topic, payload, qos, deadline):
        if qos == 0:
            self._send(publish_packet(topic, payload, 0, 0))
            return
        pid = self._next_pid()
        self._send(publish_packet(topic, payload, 1, pid))
        self._wait_for(PUBACK, pid.to_bytes(2, "big"), deadline)

    def poll(self, deadline):
        """Read incoming packets until the deadline; returns the inbox (and empties it)."""
        try:
            while self._left(deadline) > 0:
                first, body = self._read_packet(deadline)
                self._handle(first, body)
        except MqttError as e:
            if e.reason != "timeout":
                raise
        out = self.inbox
        self.inbox = []
        return out

    def ping(self, deadline):
        self._send(packet(PINGREQ, b""))
        while True:
            first, body = self._read_packet(deadline)
            if first == PINGRESP:
                return
            self._handle(first, body)

    def disconnect(self):
        if self._sock is None:
            return
        try:  # noqa: SIM105 - MicroPython has no contextlib
            self._sock.write(packet(DISCONNECT, b""))
        except OSError:
            pass
        try:  # noqa: SIM105 - MicroPython has no contextlib
            self._sock.close()
        except OSError:
            pass
        self._sock = None
