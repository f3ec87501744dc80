# ST LIS3DH 3-axis accelerometer, register-level I2C driver (datasheet DocID17530 Rev 2, section 8).
# Mode: high-resolution (12 bit), +-2 g, 1 mg/digit; INT1 = high-pass-filtered motion (IA1) so a manhole
# cover being lifted or struck wakes the ESP32 from deep sleep on an ext0/ext1 pin.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


ADDR = const(0x18)  # SDO/SA0 low; 0x19 when high
_WHO_AM_I = const(0x0F)
_WHO_AM_I_VALUE = const(0x33)
_CTRL_REG1 = const(0x20)  # ODR[7:4] LPen Zen Yen Xen
_CTRL_REG2 = const(0x21)  # HPM[7:6] HPCF[5:4] FDS HPCLICK HP_IA2 HP_IA1
_CTRL_REG3 = const(0x22)  # I1_CLICK I1_IA1 I1_IA2 I1_ZYXDA ...
_CTRL_REG4 = const(0x23)  # BDU BLE FS[5:4] HR ST[2:1] SIM
_CTRL_REG5 = const(0x24)  # BOOT FIFO_EN - - LIR_INT1 D4D_INT1 LIR_INT2 D4D_INT2
_CTRL_REG6 = const(0x25)  # I2_CLICK I2_IA1 I2_IA2 I2_BOOT I2_ACT - INT_POLARITY -
_REFERENCE = const(0x26)  # reading it resets the high-pass filter
_STATUS_REG = const(0x27)
_OUT_X_L = const(0x28)
_INT1_CFG = const(0x30)  # AOI 6D ZHIE ZLIE YHIE YLIE XHIE XLIE
_INT1_SRC = const(0x31)  # read clears the latched interrupt
_INT1_THS = const(0x32)  # 7 bit, LSB = 16 mg at +-2 g
_INT1_DURATION = const(0x33)  # 7 bit, LSB = 1/ODR
_AUTO_INC = const(0x80)  # MSB of the sub-address: auto-increment for multi-byte reads

ODR_10HZ = const(0x20)
ODR_50HZ = const(0x40)
_XYZ_EN = const(0x07)


class Lis3dhError(OSError):
    pass


class Lis3dh:
    def __init__(self, i2c, addr=ADDR):
        self._i2c = i2c
        self.addr = addr
        self._buf6 = bytearray(6)

    def _w(self, reg, val):
        self._i2c.writeto_mem(self.addr, reg, bytes((val,)))

    def _r(self, reg):
        return self._i2c.readfrom_mem(self.addr, reg, 1)[0]

    def probe(self):
        """True when a LIS3DH answers with its _WHO_AM_I value."""
        try:
            return self._r(_WHO_AM_I) == _WHO_AM_I_VALUE
        except OSError:
            return False

    def init(self, odr=ODR_50HZ, motion_mg=256, motion_ms=60):
        if not self.probe():
            raise Lis3dhError(19, "LIS3DH not found")
        self._w(_CTRL_REG1, odr | _XYZ_EN)  # normal power, LPen = 0
        self._w(_CTRL_REG2, 0x01)  # HP filter (normal mode) on the IA1 interrupt path only
        self._w(_CTRL_REG3, 0x40)  # I1_IA1: interrupt activity 1 on INT1
        self._w(_CTRL_REG4, 0x88)  # BDU, +-2 g, HR (12 bit, 1 mg/digit)
        self._w(_CTRL_REG5, 0x08)  # LIR_INT1: latch until _INT1_SRC is read
        self._w(_CTRL_REG6, 0x00)  # INT active high
        self.set_motion(odr, motion_mg, motion_ms)

    def set_motion(self, odr, mg, ms):
        ths = mg // 16
        if ths > 127:
            ths = 127
        hz = {0x10: 1, 0x20: 10, 0x30: 25, 0x40: 50, 0x50: 100}.get(odr, 50)
        dur = ms * hz // 1000
        if dur > 127:
            dur = 127
        self._w(_INT1_THS, ths)
        self._w(_INT1_DURATION, dur)
        self._r(_REFERENCE)
        self._w(_INT1_CFG, 0x2A)  # OR of XHIE, YHIE, ZHIE

    def read_mg(self):
        """(x, y, z) in mg. One 6-byte burst from _OUT_X_L with auto-increment (BDU keeps it coherent)."""
        b = self._i2c.readfrom_mem(self.addr, _OUT_X_L | _AUTO_INC, 6)
        out = []
        for i in (0, 2, 4):
            v = b[i] | (b[i + 1] << 8)
            if v & 0x8000:
                v -= 0x10000
            out.append(v >> 4)  # 12-bit left-justified, 1 mg/digit in HR at +-2 g
        return out[0], out[1], out[2]

    def motion_source(self):
        """_INT1_SRC (bit 6 IA = interrupt active); reading clears the latch."""
        return self._r(_INT1_SRC)

    def power_down(self):
        self._w(_CTRL_REG1, 0x00)
