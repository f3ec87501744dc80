# Node configuration: /config.json written by provisioning, validated against a small schema.
# Validation rules live in confcheck.py (loaded only when the file changed).
# Invalid configuration never crashes the node: load() returns the errors and the life cycle goes to safe
# mode (maintenance only). Error texts name the field and the rule, never a secret's value.
# MicroPython subset.

import hashlib
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

_SUITES = {"intl": 1, "sm": 2}  # protocols/suites.py IDS (not imported: one module less per wake)


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
        self.suite = _SUITES[obj.get("suite", "intl")]  # frame crypto suite id


class Identity:
    """Just enough to talk in safe mode when the rest of the configuration is broken. ``suite``: the
    frame crypto suite id (1 intl, the default; 2 sm), set at provisioning."""

    def __init__(self, obj):
        self.device_id = bytes.fromhex(obj["device_id"])
        self.root_key = bytes.fromhex(obj["root_key"])
        self.suite = _SUITES[obj.get("suite", "intl")]


def read(fs, path=PATH):
    """(parsed JSON or None, digest hex of the file or None, error text or None). Never raises."""
    data = storage.read(fs, path)
    if data is None:
        return None, None, "config: " + path + " missing (not provisioned)"
    digest = hashlib.sha256(data).digest()[:8].hex()
    try:
        obj = json.loads(data)
    except ValueError:
        return None, digest, "config: not valid JSON"
    return obj, digest, None


def identity(obj):
    """Identity from a parsed config if its device_id and root_key are well-formed, else None."""
    if not isinstance(obj, dict):
        return None
    try:
        ident = Identity(obj)
    except (KeyError, ValueError, TypeError):
        return None
    if len(ident.device_id) != 8 or len(ident.root_key) != 32:
        return None
    return ident


def build(obj, skip_validation=False):
    """(Config or None, errors). Validation (confcheck, imported only when needed) is skipped when the
    caller knows this exact file content was validated before (digest kept in RTC memory)."""
    errors = []
    if not skip_validation:
        from lifeline.firmware import confcheck

        errors = confcheck.validate(obj)
        if errors:
            return None, errors
    try:
        return Config(obj), []
    except (KeyError, ValueError, TypeError, AttributeError):
        return None, ["config: malformed"]


def load(fs, path=PATH):
    """(Config or None, errors, Identity or None), always validating. Never raises on bad content."""
    obj, _digest, err = read(fs, path)
    if err is not None:
        return None, [err], identity(obj)
    cfg, errors = build(obj)
    return cfg, errors, identity(obj)


def save(fs, obj, path=PATH):
    storage.write_atomic(fs, path, json.dumps(obj).encode())
