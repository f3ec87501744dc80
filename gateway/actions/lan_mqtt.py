"""A second MQTT connection, to the site's LAN broker (sirens, PLCs, community displays).

Independent of the platform uplink: when the city platform is unreachable the LAN broker usually is
not. One :class:`~lifeline.gateway.mqtt_async.Connection` (paho underneath), opened on first use and
replaced when lost; each publish waits for its PUBACK (QoS 1) within the action's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.mqtt_async import BrokerAddress, Connection, MqttError, TlsFiles, read_password
from lifeline.gateway.rules_engine.model import MqttOutput


class LanMqtt:
    def __init__(self, name: str, spec: MqttOutput) -> None:
        self.name = name
        self.spec = spec
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self.connects = 0

    def _address(self) -> BrokerAddress:
        s = self.spec
        tls = TlsFiles(ca=s.tls_ca, cert=s.tls_cert, key=s.tls_key) if (s.tls_ca or s.tls_cert) else None
        try:
            password = read_password(s.password_file)
        except MqttError as e:
            raise ActionFailed(str(e)) from None
        return BrokerAddress(s.host, s.port, s.client_id, tls, s.username, password)

    @property
    def connected(self) -> bool:
        c = self._conn
        return c is not None and c.connected and c.lost is not None and not c.lost.done()

    async def start(self) -> None:
        return None  # connect on first use: a broker that is down at start must not delay the gateway

    async def _connection(self, timeout_s: float) -> Connection:
        async with self._lock:
            if self.connected:
                assert self._conn is not None
                return self._conn
            if self._conn is not None:
                self._conn.abort("replaced")
            conn = Connection(self._address(), keepalive_s=self.spec.keepalive_s, clean_start=True)
            try:
                await conn.connect(timeout_s)
            except MqttError as e:
                self._conn = None
                raise ActionFailed(f"LAN broker {self.spec.host}:{self.spec.port}: {e}") from None
            self._conn = conn
            self.connects += 1
            return conn

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout_s: float) -> None:
        conn = await self._connection(timeout_s)
        try:
            await conn.publish(topic, payload, qos=qos, retain=retain, timeout_s=timeout_s)
        except MqttError as e:
            conn.abort(str(e))
            raise ActionFailed(f"publish to {topic}: {e}") from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(MqttError, OSError):
                await conn.disconnect(timeout_s=2.0)
            conn.abort("closed")
