"""``--gateway-import CMD``: hand the records file to the gateway right after the register step.

The tool does not talk to a gateway's registry itself; the technician names the command that does, e.g.
``lifeline gateway devices import {records} --config /etc/lifeline/gateway.toml`` for a gateway on the
bench, or a script of the operator's that copies the file to the gateway (scp) and imports it there.
``{records}`` is replaced by the records file's path. The command line is split like a shell would (``shlex``) but run
without a shell; it must exit 0 within :data:`IMPORT_TIMEOUT_S`. Its output is passed on scrubbed of
anything shaped like a key (the gateway's import prints outcomes, not keys, but a wrapper might not).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from lifeline.provisioning.errors import ProvisionError, UsageProblem, scrub

IMPORT_TIMEOUT_S = 60.0
PLACEHOLDER = "{records}"


def split(template: str) -> tuple[str, ...]:
    """The command's argv with the placeholder still in it; UsageProblem for an unusable template."""
    try:
        argv = tuple(shlex.split(template))
    except ValueError as exc:
        raise UsageProblem("bad_gateway_import", f"--gateway-import: {exc}") from None
    if not argv:
        raise UsageProblem("bad_gateway_import", "--gateway-import: empty command")
    if not any(PLACEHOLDER in a for a in argv):
        raise UsageProblem("bad_gateway_import", f"--gateway-import: the command must contain {PLACEHOLDER}")
    return argv


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return scrub(lines[-1][:200]) if lines else ""


def run(argv: tuple[str, ...], records_path: Path, *, timeout_s: float = IMPORT_TIMEOUT_S) -> str:
    """Run the import command for ``records_path``; returns its last line of output. Raises ProvisionError
    (``gateway_import_failed``) when it cannot start, times out or exits non-zero."""
    args = [a.replace(PLACEHOLDER, str(records_path)) for a in argv]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ProvisionError("gateway_import_failed", f"gateway import command not found: {args[0]}") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError("gateway_import_failed",
                             f"gateway import command did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise ProvisionError("gateway_import_failed", f"gateway import command: {exc.strerror}") from None
    if r.returncode != 0:
        why = _last_line(r.stderr) or _last_line(r.stdout) or "no output"
        raise ProvisionError("gateway_import_failed", f"gateway import command exited {r.returncode}: {why}")
    return _last_line(r.stdout)
