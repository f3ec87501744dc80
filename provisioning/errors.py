"""Errors of the provisioning flow: one root type, a short ``reason`` code per failure and the CLI exit code.

Messages say what happened and what the technician can do; they never contain key material (the flow
never puts a key into an exception, and :func:`scrub` removes any 64-hex-digit run from text that comes
from elsewhere, e.g. a device traceback).
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ENV = 3

_LONG_HEX = re.compile(r"[0-9a-fA-F]{64,}")


def scrub(text: str) -> str:
    """Replace anything that could be a 32-byte key in hex (64+ hex digits in a row) with a marker."""
    return _LONG_HEX.sub("<redacted>", text)


class ProvisionError(Exception):
    """A step could not be completed. ``reason`` is a stable code for logs, state and --json output."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(scrub(message))
        self.reason = reason


class EnvironmentProblem(ProvisionError):
    """Something around the device is wrong: no port, missing tool, unreadable file (exit 3)."""

    exit_code = EXIT_ENV


class UsageProblem(ProvisionError):
    """The inputs are wrong: bad CSV rows, unknown kind, conflicting options (exit 2)."""

    exit_code = EXIT_USAGE
