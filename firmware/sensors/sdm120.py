# Eastron SDM120-Modbus single-phase DIN-rail energy meter ("SDM120 Modbus Protocol" register map; input
# registers, function 0x04, each value an IEEE 754 float32 in two registers, high word first).
# Defaults: slave address 1, 2400 baud 8N1. Converted to scaled integers without floating point.

REG_VOLTAGE = 0x0000  # V
REG_CURRENT = 0x0006  # A
REG_POWER = 0x000C  # W (active power; negative when exporting)
REG_APPARENT = 0x0012  # VA
REG_REACTIVE = 0x0018  # VAr
REG_PF = 0x001E  # power factor
REG_FREQUENCY = 0x0046  # Hz
REG_IMPORT_KWH = 0x0048  # kWh import active energy
REG_EXPORT_KWH = 0x004A  # kWh export active energy
REG_TOTAL_KWH = 0x0156  # kWh total active energy


def f32_scaled(hi, lo, scale):
    """round(float32(hi:lo) * scale) with integer arithmetic; None for NaN/infinity."""
    u = (hi << 16) | lo
    neg = u >> 31
    exp = (u >> 23) & 0xFF
    mant = u & 0x7FFFFF
    if exp == 0xFF:
        return None
    if exp == 0:
        return 0  # zero and denormals (below any meter resolution)
    m = (mant | 0x800000) * scale
    e = exp - 150
    v = m << e if e >= 0 else (m + (1 << (-e - 1))) >> -e
    return -v if neg else v


class Sdm120:
    def __init__(self, modbus, addr=1):
        self._mb = modbus
        self.addr = addr

    def read(self):
        """dict with import_wh, export_wh, power_w, voltage_dv (0.1 V); raises ModbusError."""
        a = self._mb.read_input(self.addr, REG_VOLTAGE, 14)  # voltage .. active power (0x0000-0x000D)
        e = self._mb.read_input(self.addr, REG_IMPORT_KWH, 4)  # import, export kWh (0x0048-0x004B)
        return {
            "voltage_dv": f32_scaled(a[0], a[1], 10),
            "power_w": f32_scaled(a[12], a[13], 1),
            "import_wh": f32_scaled(e[0], e[1], 1000),
            "export_wh": f32_scaled(e[2], e[3], 1000),
        }
