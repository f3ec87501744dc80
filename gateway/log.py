"""Journald-style logging to stderr: ``<6>component: message key=value``.

The ``<N>`` prefix is the syslog priority, which journald reads from a service's stderr. Values are
formatted by :func:`kv`; nothing secret is ever passed in (keys are not loggable objects: device records
redact them in ``repr``), and exception text from libraries goes through :func:`scrub`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

_PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_HEXRUN = re.compile(r"\b[0-9a-fA-F]{40,}\b")
_SAFE = re.compile(r"^[A-Za-z0-9_.:/@+-]*$")
ROOT = "lifeline.gateway"


def scrub(text: str) -> str:
    """Remove anything that looks like key material (long hex runs) from free text."""
    return _HEXRUN.sub("<redacted>", text)


def kv(**fields: Any) -> str:
    parts = []
    for k, v in fields.items():
        s = v.hex() if isinstance(v, bytes | bytearray) else str(v)
        if not _SAFE.match(s):
            s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIO.get(record.levelno, 6)
        component = record.name.removeprefix(ROOT + ".") if record.name != ROOT else "gateway"
        text = scrub(record.getMessage())
        if record.exc_info:
            text += " exc=" + kv(e=scrub(repr(record.exc_info[1])))[2:]
        return f"<{prio}>{component}: {text}"


class Log:
    """A component logger: ``Log("buffer").info("committed", n=12)``."""

    __slots__ = ("_logger",)

    def __init__(self, component: str) -> None:
        self._logger = logging.getLogger(f"{ROOT}.{component}")

    def _emit(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, "%s", f"{msg} {kv(**fields)}" if fields else msg)

    def debug(self, msg: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._emit(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._emit(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._emit(logging.ERROR, msg, fields)


def setup(level: str = "info") -> None:
    """Send the gateway's logs to stderr in journald style (idempotent)."""
    root = logging.getLogger(ROOT)
    root.setLevel(level.upper())
    root.propagate = False
    for h in root.handlers:
        if getattr(h, "_lifeline", False):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter())
    handler._lifeline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
