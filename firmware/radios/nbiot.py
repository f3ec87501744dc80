# NB-IoT link: the cellular modem brings up a data connection (HAL net_up: PPP / modem sockets), then
# frames go out as MQTT PUBLISH QoS 1 on lifeline/v1/nodes/<device id hex>/up and downlinks arrive on
# lifeline/v1/nodes/<device id hex>/down (subscribed QoS 1, persistent session so the broker holds them
# while the node sleeps). Every step has a deadline taken from one wake budget.

from lifeline.firmware.radios import mqtt

TOPIC_ROOT = "lifeline/v1/nodes/"


def up_topic(dev_id):
    return TOPIC_ROOT + dev_id.hex() + "/up"


def down_topic(dev_id):
    return TOPIC_ROOT + dev_id.hex() + "/down"


class NbiotLink:
    def __init__(self, hal, cfg):
        n = cfg.nbiot
        self._hal = hal
        self._cfg = n
        self.host = n.get("host", "")
        self.port = n.get("port", 1883)
        self.timeout_ms = n.get("timeout_ms", 15000)
        self.rx_ms = n.get("rx_ms", 2000)
        self.dev_id = cfg.device_id
        self.client = mqtt.Mqtt(hal, "ll-" + cfg.device_id.hex(), n.get("keepalive", 60), n.get("user") or None,
                                n.get("password") or None, clean=False)
        self.rssi = None
        self.snr_x10 = None
        self.errors = 0
        self.last_error = ""
        self._up = False

    def _deadline(self, ms):
        return self._hal.ticks_ms() + ms

    def open(self):
        hal = self._hal
        try:
            if not hal.net_up(self._cfg, self.timeout_ms):
                self._fail("attach")
                return False
            self.client.connect(self.host, self.port, self._deadline(self.timeout_ms))
            if not self.client.session_present:
                self.client.subscribe(down_topic(self.dev_id), 1, self._deadline(self.timeout_ms))
        except mqtt.MqttError as e:
            self._fail(e.reason)
            self.client.disconnect()
            return False
        self._up = True
        return True

    def _fail(self, why):
        self.errors += 1
        self.last_error = why

    def _collect(self, msgs):
        want = down_topic(self.dev_id)
        return [bytes(p) for t, p in msgs if t == want]

    def send(self, frame, listen):
        if not self._up:
            return False, []
        try:
            self.client.publish(up_topic(self.dev_id), frame, 1, self._deadline(self.timeout_ms))
            downs = self._collect(self.client.inbox)
            self.client.inbox = []
            if listen:
                downs += self._collect(self.client.poll(self._deadline(self.rx_ms)))
        except mqtt.MqttError as e:
            self._fail(e.reason)
            self.close()
            return False, []
        return True, downs

    def listen(self, window_ms):
        if not self._up:
            return []
        try:
            return self._collect(self.client.poll(self._deadline(window_ms)))
        except mqtt.MqttError as e:
            self._fail(e.reason)
            self.close()
            return []

    def close(self):
        self.client.disconnect()
        self._up = False
