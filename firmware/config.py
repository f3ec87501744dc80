# Node configuration: /config.json written by provisioning, validated against a small schema.
# Invalid configuration never crashes the node: load() returns the errors and the life cycle goes to safe
# mode (maintenance only). Error texts name the field and the rule, never a secret's value.
# MicroPython subset.

import json

from lifeline.firmware import storage

PATH = "/config.json"

KINDS = {"smoke": 1, "tilt": 2, "water_level": 3, "water_meter": 4, "gas_meter": 5, "electricity_meter": 6}
RADIOS = ("lora", "nbiot", "ble")
# region -> (default frequency Hz, duty cycle per mille (0 = none), max EIRP dBm, max dwell ms (0 = none))
REGIONS = {
    "EU868": (869525000, 100, 14, 0),  # ETSI EN 300 220 / ERC 70-03 band 869.4-869.65 MHz: 10 %, 500 mW ERP
    "CN470": (470300000, 0, 17, 0),
    "US915": (903900000, 0, 20, 400),  # FCC 15.247: 400 ms dwell
    "AS923": (923200000, 10, 16, 400),  # 1 % where a duty cycle applies
    "IN865": (865062500, 0, 20, 0),
}

# Defaults for the kind's main-field thresholds: (high, low, confirm), in the wire scale of that field.
DEFAULT_THRESHOLDS = {
    "smoke": (300, 150, 3),            # obscuration 3.00 %/m alarm, clears below 1.50 %/m
    "tilt": (200, 50, 3),              # 20.0 deg = open; 5.0 deg = displaced / clear
    "water_level": (1500, 1200, 3),    # mm above the channel bottom
    "water_meter": (1, 0, 3),          # leak: night minimum flow >= 1 L/h
    "gas_meter": (1, 0, 3),
    "electricity_meter": (0, 0, 1),
}

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
}
_BLE = {
    "interval_ms": ("int", False, 20, 10240),
    "adv_ms": ("int", False, 100, 60000),
}
SECRET_FIELDS = ("root_key", "password")


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
        elif typ == "dict":
            if not isinstance(v, dict):
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
    region = obj.get("region", "EU868")
    if isinstance(region, str) and region not in REGIONS:
        errors.append("region: must be one of " + ", ".join(sorted(REGIONS)))
    for name, spec in (("thresholds", _THRESHOLDS), ("location", _LOCATION), ("lora", _LORA),
                       ("nbiot", _NBIOT), ("ble", _BLE), ("sensor", {}), ("pins", {})):
        sub = obj.get(name)
        if isinstance(sub, dict):
            _check(sub, spec, name + ".", errors)
    if radio == "nbiot" and not isinstance(obj.get("nbiot"), dict):
        errors.append("nbiot: required when radio is nbiot")
    lora = obj.get("lora")
    if isinstance(lora, dict) and lora.get("bw", 125) not in (125, 250, 500):
        errors.append("lora.bw: must be 125, 250 or 500")
    return errors


class Config:
    """Validated configuration with defaults filled in. Attributes are plain values."""

    def __init__(self, obj):
        self.raw = obj
        self.device_id = bytes.fromhex(obj["device_id"])
        self.root_key = bytes.fromhex(obj["root_key"])
        self.kind_name = obj["kind"]
        self.kind = KINDS[self.kind_name]
        self.radio = obj["radio"]
        self.region = obj.get("region", "EU868")
        self.config_version = obj.get("config_version", 0)
        self.interval = obj.get("interval", 900)
        self.heartbeat = obj.get("heartbeat", 86400)
        self.sample_interval = obj.get("sample_interval", 0)
        t = obj.get("thresholds", {})
        dh, dl, dc = DEFAULT_THRESHOLDS[self.kind_name]
        self.threshold_high = t.get("high", dh)
        self.threshold_low = t.get("low", dl)
        self.confirm = t.get("confirm", dc)
        self.location = obj.get("location", {})
        self.lora = obj.get("lora", {})
        self.nbiot = obj.get("nbiot", {})
        self.ble = obj.get("ble", {})
        self.sensor = obj.get("sensor", {})
        self.pins = obj.get("pins", {})
        self.low_battery_mv = obj.get("low_battery_mv", 3300)
        self.max_boot_failures = obj.get("max_boot_failures", 3)
        self.ota_trial_boots = obj.get("ota_trial_boots", 3)


class Identity:
    """Just enough to talk in safe mode when the rest of the configuration is broken."""

    def __init__(self, obj):
        self.device_id = bytes.fromhex(obj["device_id"])
        self.root_key = bytes.fromhex(obj["root_key"])


def load(fs, path=PATH):
    """(Config or None, errors, Identity or None). Never raises on bad content."""
    data = storage.read(fs, path)
    if data is None:
        return None, ["config: " + path + " missing (not provisioned)"], None
    try:
        obj = json.loads(data)
    except ValueError:
        return None, ["config: not valid JSON"], None
    errors = validate(obj)
    ident = None
    if isinstance(obj, dict):
        idspec = {"device_id": _TOP["device_id"], "root_key": _TOP["root_key"]}
        id_errors = []
        _check({k: obj[k] for k in obj if k in idspec}, idspec, "", id_errors)
        if not id_errors:
            ident = Identity(obj)
    if errors:
        return None, errors, ident
    return Config(obj), [], ident


def save(fs, obj, path=PATH):
    storage.write_atomic(fs, path, json.dumps(obj).encode())
