"""What a technician enters for one device, and the two documents made from it.

* :class:`DeviceSpec` is the validated input (kind, radio, region, interval, thresholds, location, data
  class, install date, design life, tags).
* :func:`node_config` is the node's ``/config.json`` (firmware/config.py schema, checked with the
  firmware's own ``validate``). The node gets only what it needs: no street address (personal data for
  a smoke alarm in a home), coordinates in 1e-7 degrees and the spatial unit as its label.
* The provisioning record (records.py) carries the rest for the gateway registry.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from lifeline.protocols import schema
from lifeline.provisioning.bundle import firmware_kind, firmware_module
from lifeline.provisioning.errors import UsageProblem

RADIOS = ("lora", "nbiot", "ble")
SUITES = ("intl", "sm")  # node frame crypto suites (docs/protocol.md section 2)


@dataclass(frozen=True, slots=True)
class Location:
    address: str
    lat_udeg: int | None
    lon_udeg: int | None
    spatial_unit: str


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    kind: str  # schema report kind name
    radio: str
    region: str
    interval_s: int
    location: Location
    data_class: str
    install_date: str
    design_life_years: int
    tags: tuple[str, ...] = ()
    threshold_high: int | None = None
    threshold_low: int | None = None
    confirm: int | None = None
    nbiot_host: str | None = None
    expected_mac: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    suite: str = "intl"  # the node's frame crypto suite, fixed for its life: intl | sm


def check_spec(spec: DeviceSpec) -> list[tuple[str, str]]:
    """Problems as (field, message); empty when the spec is usable."""
    fwconfig = firmware_module("config")
    errors: list[tuple[str, str]] = []
    kid = schema.kind_id_by_name(spec.kind)
    if kid is None or schema.is_downlink_kind(kid):
        errors.append(("kind", f"unknown report kind {spec.kind!r}"))
    else:
        try:
            firmware_kind(spec.kind)
        except ValueError as exc:
            errors.append(("kind", str(exc)))
    if spec.suite not in SUITES:
        errors.append(("suite", f"must be one of {', '.join(SUITES)}"))
    if spec.radio not in RADIOS:
        errors.append(("radio", f"must be one of {', '.join(RADIOS)}"))
    if spec.region not in fwconfig.REGIONS:
        errors.append(("region", f"must be one of {', '.join(sorted(fwconfig.REGIONS))}"))
    if not 10 <= spec.interval_s <= 86400:
        errors.append(("interval", "must be 10..86400 seconds"))
    if spec.data_class not in schema.CLASS_NAMES:
        errors.append(("data_class", f"must be one of {', '.join(schema.CLASS_NAMES)}"))
    try:
        datetime.date.fromisoformat(spec.install_date)
        if len(spec.install_date) != 10:
            raise ValueError
    except ValueError:
        errors.append(("install_date", "must be YYYY-MM-DD"))
    if not 1 <= spec.design_life_years <= 100:
        errors.append(("design_life_years", "must be 1..100"))
    loc = spec.location
    if not loc.address or len(loc.address) > 512:
        errors.append(("address", "required, at most 512 characters"))
    if loc.lat_udeg is not None and not -90_000_000 <= loc.lat_udeg <= 90_000_000:
        errors.append(("lat", "must be -90..90 degrees"))
    if loc.lon_udeg is not None and not -180_000_000 <= loc.lon_udeg <= 180_000_000:
        errors.append(("lon", "must be -180..180 degrees"))
    if len(loc.spatial_unit) > 64:
        errors.append(("spatial_unit", "at most 64 characters"))
    if spec.radio == "nbiot" and not spec.nbiot_host:
        errors.append(("nbiot_host", "required for radio nbiot"))
    for t in spec.tags:
        if len(t) > 64:
            errors.append(("tags", "each tag at most 64 characters"))
    return errors


def firmware_validate(obj: dict[str, Any]) -> list[str]:
    """The firmware's own config check (firmware/confcheck.py; older trees kept it in config.py)."""
    try:
        check = firmware_module("confcheck")
    except ImportError:
        check = firmware_module("config")
    result = check.validate(obj)
    return [str(e) for e in result]


def node_config(spec: DeviceSpec, device_id: bytes, root_key: bytes) -> dict[str, Any]:
    """The node's /config.json as a dict (validated by the firmware's own rules)."""
    cfg: dict[str, Any] = {
        "device_id": device_id.hex(),
        "root_key": root_key.hex(),
        "kind": firmware_kind(spec.kind),
        "radio": spec.radio,
        "region": spec.region,
        "config_version": 1,
        "interval": spec.interval_s,
    }
    thresholds = {k: v for k, v in (("high", spec.threshold_high), ("low", spec.threshold_low),
                                    ("confirm", spec.confirm)) if v is not None}
    if thresholds:
        cfg["thresholds"] = thresholds
    loc: dict[str, Any] = {"label": spec.location.spatial_unit[:64]}
    if spec.location.lat_udeg is not None:
        loc["lat_e7"] = spec.location.lat_udeg * 10
    if spec.location.lon_udeg is not None:
        loc["lon_e7"] = spec.location.lon_udeg * 10
    cfg["location"] = loc
    if spec.radio == "nbiot":
        cfg["nbiot"] = {"host": spec.nbiot_host}
    if spec.suite != "intl":  # an intl node's config stays as it always was
        cfg["suite"] = spec.suite
    cfg.update(spec.extra)
    problems = firmware_validate(cfg)
    if problems:
        # the firmware's messages name fields and rules, never values
        raise UsageProblem("config_invalid",
                           "node configuration rejected by the firmware rules: " + "; ".join(problems))
    return cfg
