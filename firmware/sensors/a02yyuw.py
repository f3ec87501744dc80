# DFRobot A02YYUW (SEN0311) waterproof ultrasonic ranger, UART output (9600 8N1, datasheet "Communication
# Protocol"): 4-byte frames 0xFF | Data_H | Data_L | SUM, distance_mm = Data_H * 256 + Data_L,
# SUM = (0xFF + Data_H + Data_L) & 0xFF. Range 30..4500 mm; the RX pin high (or floating) selects the
# processed-value output roughly every 100 ms. The JSN-SR04T in mode 2 (R27 = 47 k) uses the same frame.
# The parser resynchronises on 0xFF and counts every rejected frame by reason; it never raises.

HEADER = 0xFF
MIN_MM = 30
MAX_MM = 4500


class FrameParser:
    def __init__(self):
        self._buf = bytearray()
        self.frames = 0
        self.bad_checksum = 0
        self.skipped = 0  # bytes thrown away while hunting for a header

    def feed(self, data):
        """Distances (mm) of every complete, valid frame in ``data`` (plus any earlier partial frame)."""
        out = []
        buf = self._buf
        buf.extend(data)
        i = 0
        n = len(buf)
        while n - i >= 4:
            if buf[i] != HEADER:
                i += 1
                self.skipped += 1
                continue
            h = buf[i + 1]
            l = buf[i + 2]  # noqa: E741
            if (HEADER + h + l) & 0xFF != buf[i + 3]:
                self.bad_checksum += 1
                i += 1  # the header may have been a data byte: resynchronise one byte later
                continue
            out.append((h << 8) | l)
            self.frames += 1
            i += 4
        self._buf = bytearray(buf[i:])
        return out
