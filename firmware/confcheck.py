# Validation of /config.json against a small schema (kept apart from config.py so a node that woke with an
# unchanged, already validated file never loads these tables). Error texts name the field and the rule,
# never a secret's value. MicroPython subset.

from lifeline.firmware.config import KINDS, RADIOS, REGIONS

# field: (type, required, lo, hi) with type one of "int", "str", "hex", "dict", "bool"; for "hex" lo/hi
# bound the byte length, for "str" the text length.
_TOP = {
    "device_id": ("hex", True, 8, 8),
    "root_key": ("hex", True, 32, 32),
    "kind": ("str", True, 1, 32),
    "radio": ("str", True, 1, 8),
    "region": ("str", False, 1, 8),
    "config_version": ("int", False, 0, 65535),
    "interval": ("int", False, 10, 86400),
    "heartbeat": ("int", False, 60, 604800),
    "sample_interval": ("int", False, 1, 3600),
    "thresholds": ("dict", False, 0, 0),
    "location": ("dict", False, 0, 0),
    "lora": ("dict", False, 0, 0),
    "nbiot": ("dict", False, 0, 0),
    "ble": ("dict", False, 0, 0),
    "sensor": ("dict", False, 0, 0),
    "pins": ("dict", False, 0, 0),
    "low_battery_mv": ("int", False, 2000, 4500),
    "max_boot_failures": ("int", False, 2, 20),
    "ota_trial_boots": ("int", False, 1, 20),
    "suite": ("str", False, 1, 8),
}
_THRESHOLDS = {
    "high": ("int", False, -2147483648, 2147483647),
    "low": ("int", False, -2147483648, 2147483647),
    "confirm": ("int", False, 1, 10),
}
_LOCATION = {
    "lat_e7": ("int", False, -900000000, 900000000),
    "lon_e7": ("int", False, -1800000000, 1800000000),
    "label": ("str", False, 0, 64),
}
_LORA = {
    "freq": ("int", False, 150000000, 960000000),
    "sf": ("int", False, 5, 12),
    "bw": ("int", False, 125, 500),
    "cr": ("int", False, 0, 3),
    "preamble": ("int", False, 5, 65535),
    "power": ("int", False, 5, 22),
    "rx_ms": ("int", False, 0, 10000),
}
_NBIOT = {
    "host": ("str", True, 1, 128),
    "port": ("int", False, 1, 65535),
    "apn": ("str", False, 0, 64),
    "user": ("str", False, 0, 64),
    "password": ("str", False, 0, 128),
    "keepalive": ("int", False, 10, 3600),
    "timeout_ms": ("int", False, 1000, 60000),
    "rx_ms": ("int", False, 0, 30000),
}
_BLE = {
    "interval_ms": ("int", False, 20, 10240),
    "extended": ("bool", False, 0, 0),
    "adv_ms": ("int", False, 100, 60000),
}
_SENSOR_INTS = ("clean_uv", "uv_per_pct", "open_uv", "motion_mg", "i2c_addr", "mount_mm", "blind_mm",
                "litres_per_pulse", "base_index", "tz_min", "reverse_min", "debounce_ms", "baud", "modbus_addr")
_SENSOR_LISTS = {"baseline": 3, "night": 2}
SECRET_FIELDS = ("root_key", "password")


def _check_sensor(sensor, errors):
    for k in sensor:
        v = sensor[k]
        where = "sensor." + k
        if k in _SENSOR_LISTS:
            n = _SENSOR_LISTS[k]
            if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in v):
                errors.append(where + ": must be a list of %d integers" % n)
        elif k == "quadrature":
            if not isinstance(v, bool):
                errors.append(where + ": must be true or false")
        elif k in _SENSOR_INTS:
            if not isinstance(v, int) or isinstance(v, bool) or v < -100000000 or v > 4294967295:
                errors.append(where + ": must be an integer")
        else:
            errors.append(where + ": unknown field")


def _check(obj, spec, prefix, errors):
    for name in obj:
        if spec and name not in spec:
            errors.append(prefix + name + ": unknown field")
    for name in spec:
        typ, required, lo, hi = spec[name]
        where = prefix + name
        if name not in obj:
            if required:
                errors.append(where + ": required")
            continue
        v = obj[name]
        if typ == "int":
            if not isinstance(v, int) or isinstance(v, bool):
                errors.append(where + ": must be an integer")
            elif v < lo or v > hi:
                errors.append(where + ": out of range %d..%d" % (lo, hi))
        elif typ == "str":
            if not isinstance(v, str):
                errors.append(where + ": must be a string")
            elif len(v) < lo or len(v) > hi:
                errors.append(where + ": length must be %d..%d" % (lo, hi))
        elif typ == "hex":
            ok = isinstance(v, str) and len(v) == 2 * lo
            if ok:
                try:
                    bytes.fromhex(v)
                except ValueError:
                    ok = False
            if not ok:
                errors.append(where + ": must be %d hex characters" % (2 * lo))
        elif typ == "bool" and not isinstance(v, bool):
            errors.append(where + ": must be true or false")
        elif typ == "dict" and not isinstance(v, dict):
            errors.append(where + ": must be an object")


def validate(obj):
    """List of human-readable errors (empty when valid)."""
    errors = []
    if not isinstance(obj, dict):
        return ["config: must be a JSON object"]
    _check(obj, _TOP, "", errors)
    kind = obj.get("kind")
    if isinstance(kind, str) and kind not in KINDS:
        errors.append("kind: must be one of " + ", ".join(sorted(KINDS)))
    radio = obj.get("radio")
    if isinstance(radio, str) and radio not in RADIOS:
        errors.append("radio: must be one of " + ", ".join(RADIOS))
    suite = obj.get("suite", "intl")
    if isinstance(suite, str) and suite not in ("intl", "sm"):
        errors.append("suite: must be intl or sm")
    region = obj.get("region", "EU868")
    if isinstance(region, str) and region not in REGIONS:
        errors.append("region: must be one of " + ", ".join(sorted(REGIONS)))
    for name, spec in (("thresholds", _THRESHOLDS), ("location", _LOCATION), ("lora", _LORA),
                       ("nbiot", _NBIOT), ("ble", _BLE), ("pins", {})):
        sub = obj.get(name)
        if isinstance(sub, dict):
            _check(sub, spec, name + ".", errors)
    if isinstance(obj.get("sensor"), dict):
        _check_sensor(obj["sensor"], errors)
    if radio == "nbiot" and not isinstance(obj.get("nbiot"), dict):
        errors.append("nbiot: required when radio is nbiot")
    lora = obj.get("lora")
    if isinstance(lora, dict) and lora.get("bw", 125) not in (125, 250, 500):
        errors.append("lora.bw: must be 125, 250 or 500")
    return errors


