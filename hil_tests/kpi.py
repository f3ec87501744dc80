"""Key performance indicators, recorded by the drills while they run and read back by the report.

Every figure in the report comes from this file (JSON lines), written as the run goes: one ``session``
line (what was collected, on which DUT), one ``kpi`` line per figure a drill measured, one ``result``
line per drill outcome. Nothing in the report is a constant.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "p99": round(percentile(values, 99), 3), "max": round(max(values), 3), "min": round(min(values), 3)}


def append(path: Path | None, obj: dict[str, Any]) -> None:
    if path is None:
        return
    line = json.dumps(obj, sort_keys=True, default=str)
    with _LOCK, open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a killed run
    return out


class KpiRecorder:
    """What one drill measured. ``path`` None keeps the figures in memory only (a plain pytest run)."""

    def __init__(self, path: Path | None, nodeid: str, drill: int | None, title: str) -> None:
        self.path = path
        self.nodeid = nodeid
        self.drill = drill
        self.title = title
        self.figures: list[dict[str, Any]] = []

    def _emit(self, obj: dict[str, Any]) -> None:
        obj.update({"type": "kpi", "nodeid": self.nodeid, "drill": self.drill, "ts": round(time.time(), 3)})
        self.figures.append(obj)
        append(self.path, obj)

    def value(self, name: str, value: float | int | str, unit: str = "", **labels: Any) -> None:
        """One figure, e.g. ``value("delivery_ratio", 1.0)``."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: not a finite number")
        self._emit({"name": name, "value": value, "unit": unit, "labels": labels})

    def samples(self, name: str, values: Iterable[float], unit: str = "", **labels: Any) -> dict[str, float]:
        """A distribution (latencies): stored with its count and percentiles p50/p95/p99."""
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError(f"{name}: no samples")
        summary = summarize(vals)
        self._emit({"name": name, "samples": [round(v, 3) for v in vals], "summary": summary, "unit": unit,
                    "labels": labels})
        return summary

    def counts(self, name: str, counts: dict[str, int], **labels: Any) -> None:
        """Counts by reason (rejects, drops)."""
        self._emit({"name": name, "counts": dict(sorted(counts.items())), "unit": "frames", "labels": labels})
