"""Batch provisioning from a CSV file: every row is checked before any board is touched.

Columns (header row required; order free; * = required):
  kind*, radio*, region*, interval*, address*, lat, lon, spatial_unit, data_class*, install_date*,
  design_life_years*, tags (";"-separated), threshold_high, threshold_low, confirm, nbiot_host,
  port (serial port or pyserial URL; default: the --port option), mac (expected MAC "aa:bb:..", optional),
  suite (frame crypto suite: intl, the default, or sm)

Lat/lon are decimal degrees (converted exactly to integer microdegrees, at most 6 decimals). Every
problem names its line and column and is counted; duplicate MACs (two rows for one board) are rejected
too. Nothing is flashed unless the whole file is clean.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from lifeline.provisioning.errors import UsageProblem
from lifeline.provisioning.nodeconfig import DeviceSpec, Location, check_spec

REQUIRED = ("kind", "radio", "region", "interval", "address", "data_class", "install_date", "design_life_years")
OPTIONAL = ("lat", "lon", "spatial_unit", "tags", "threshold_high", "threshold_low", "confirm", "nbiot_host", "port",
            "mac", "suite")
MAX_ROWS = 10000
MAX_FIELD = 1024
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-]?[0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str  # short code
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    spec: DeviceSpec
    port: str | None


@dataclass(frozen=True, slots=True)
class ParseResult:
    rows: tuple[Row, ...]
    errors: tuple[RowError, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(e.reason for e in self.errors))


def _degrees(text: str) -> int:
    d = Decimal(text)
    if d != d.quantize(Decimal("0.000001")) and len(text.split(".")[-1]) > 6:
        raise InvalidOperation
    return int(d * 1_000_000)


def _int(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,12}", text):
        raise ValueError
    return int(text)


def parse(text: str) -> ParseResult:
    """Parse and check every row; never raises on bad content."""
    errors: list[RowError] = []
    rows: list[Row] = []
    if "\0" in text:
        return ParseResult((), (RowError(1, "-", "binary", "the file contains NUL bytes; not a CSV text file"),))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return ParseResult((), (RowError(1, "-", "empty", "the file is empty (a header row is required)"),))
    except csv.Error as exc:
        return ParseResult((), (RowError(1, "-", "csv_syntax", f"CSV syntax error: {exc}"),))
    names = [h.strip().lower() for h in header]
    for i, n in enumerate(names):
        if n not in REQUIRED and n not in OPTIONAL:
            errors.append(RowError(1, n or f"#{i + 1}", "unknown_column", f"unknown column {n!r}"))
        elif names.index(n) != i:
            errors.append(RowError(1, n, "duplicate_column", "column appears twice"))
    for n in REQUIRED:
        if n not in names:
            errors.append(RowError(1, n, "missing_column", "required column is missing"))
    if errors:
        return ParseResult((), tuple(errors))
    seen_mac: dict[bytes, int] = {}
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(reader.line_num, "-", "csv_syntax", f"CSV syntax error: {exc}"))
            break
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(rows) + len({e.line for e in errors}) >= MAX_ROWS:
            errors.append(RowError(line, "-", "too_many_rows", f"more than {MAX_ROWS} rows"))
            break
        if len(values) != len(names):
            errors.append(RowError(line, "-", "field_count", f"{len(values)} fields, the header has {len(names)}"))
            continue
        row = {n: v.strip() for n, v in zip(names, values, strict=True)}
        row_errors: list[RowError] = []

        def bad(col: str, reason: str, msg: str, _line: int = line, _errs: list[RowError] = row_errors) -> None:
            _errs.append(RowError(_line, col, reason, msg))

        for col, v in row.items():
            if len(v) > MAX_FIELD:
                bad(col, "too_long", f"longer than {MAX_FIELD} characters")
        for col in REQUIRED:
            if not row.get(col):
                bad(col, "missing_value", "required value is empty")
        nums: dict[str, int | None] = {}
        for col in ("interval", "design_life_years", "threshold_high", "threshold_low", "confirm"):
            v = row.get(col, "")
            nums[col] = None
            if v:
                try:
                    nums[col] = _int(v)
                except ValueError:
                    bad(col, "not_integer", f"{v!r} is not an integer")
        coords: dict[str, int | None] = {"lat": None, "lon": None}
        for col in ("lat", "lon"):
            v = row.get(col, "")
            if v:
                try:
                    coords[col] = _degrees(v)
                except (InvalidOperation, ValueError):
                    bad(col, "not_degrees", f"{v!r} is not decimal degrees with at most 6 decimals")
        mac: bytes | None = None
        if row.get("mac"):
            if not _MAC.match(row["mac"]):
                bad("mac", "bad_mac", f"{row['mac']!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            else:
                mac = bytes.fromhex(re.sub(r"[:-]", "", row["mac"]))
                if mac in seen_mac:
                    bad("mac", "duplicate_device", f"the same board as line {seen_mac[mac]}")
                else:
                    seen_mac[mac] = line
        if row_errors:
            errors.extend(row_errors)
            continue
        spec = DeviceSpec(
            kind=row["kind"], radio=row["radio"], region=row["region"], interval_s=nums["interval"] or 0,
            location=Location(row["address"], coords["lat"], coords["lon"], row.get("spatial_unit", "")),
            data_class=row["data_class"], install_date=row["install_date"],
            design_life_years=nums["design_life_years"] or 0,
            tags=tuple(t.strip() for t in row.get("tags", "").split(";") if t.strip()),
            threshold_high=nums["threshold_high"], threshold_low=nums["threshold_low"], confirm=nums["confirm"],
            nbiot_host=row.get("nbiot_host") or None, expected_mac=mac, suite=row.get("suite") or "intl",
        )
        problems = check_spec(spec)
        if problems:
            errors.extend(RowError(line, col, "invalid_value", msg) for col, msg in problems)
            continue
        rows.append(Row(line, spec, row.get("port") or None))
    return ParseResult(tuple(rows), tuple(errors))


def load(path: Path) -> ParseResult:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageProblem("csv_unreadable", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParseResult((), (RowError(1, "-", "encoding", f"not UTF-8 text (byte {exc.start})"),))
    return parse(text)
