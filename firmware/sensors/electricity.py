# Electricity meter: an Eastron SDM120 read over Modbus RTU (import energy, power, voltage; export energy
# rising means reverse flow). MicroPython subset.

from lifeline.firmware.sensors import modbus, sdm120

F_REVERSE = 2
CAUSE_REVERSE = 5
FAULT_SENSOR = 1


class ElectricityMeter:
    KIND = 6

    def __init__(self, hal, cfg, st):
        self._hal = hal
        self._st = st
        s = cfg.sensor
        mb = modbus.ModbusRtu(hal, hal.uart("rs485", s.get("baud", 2400)), hal.pin("rs485_de", True))
        self.meter = sdm120.Sdm120(mb, s.get("modbus_addr", 1))
        self.interval = cfg.interval
        self.clock_ok = False
        if "wh" not in st:
            st["wh"] = 0
            st["exp"] = -1
            st["w"] = 0
            st["dv"] = 0
            st["flags"] = 0
            st["fault"] = 0

    def sample(self, now, motion=False):
        st = self._st
        ev = []
        try:
            r = self.meter.read()
        except modbus.ModbusError as e:
            if not st["fault"]:
                st["fault"] = 1
                ev.append(("fault", FAULT_SENSOR, 2 if e.reason == "timeout" else 3))
            return ev
        if st["fault"]:
            st["fault"] = 0
            ev.append(("report",))
        if r["import_wh"] is not None:
            st["wh"] = max(0, min(r["import_wh"], 0xFFFFFFFF))
        if r["power_w"] is not None:
            st["w"] = max(-100000, min(r["power_w"], 100000))
        if r["voltage_dv"] is not None:
            st["dv"] = max(0, min(r["voltage_dv"], 3000))
        exp = r["export_wh"]
        if exp is not None:
            if st["exp"] >= 0 and exp > st["exp"]:
                if not st["flags"] & F_REVERSE:
                    st["flags"] |= F_REVERSE
                    ev.append(("raise", CAUSE_REVERSE, exp - st["exp"]))
            elif st["flags"] & F_REVERSE and st["exp"] >= 0:
                st["flags"] &= ~F_REVERSE
                ev.append(("clear", CAUSE_REVERSE, 0))
            st["exp"] = exp
        return ev

    def report(self):
        st = self._st
        return {1: st["wh"], 2: st["w"], 3: st["flags"], 4: st["dv"]}

    def busy(self):
        return False

    def next_sample_s(self):
        return self.interval

    def tick(self, now_ms):
        pass

    def wake_pins(self):
        return ()

    def on_ack(self, alarm_id, state):
        pass
