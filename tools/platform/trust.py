"""Which keys the platform accepts for a gateway, and when: several keys per gateway with validity windows.

A gateway key rotation (docs/keys.md) has an overlap period: the platform operator adds the new key with a
``not_before`` and gives the old one a ``not_after``; while both are valid, batches signed with either one
verify (the gateway's outbox may still hold batches signed with the old key when it switches). Windows are
judged on the platform's clock when the batch arrives, never on a time the batch claims. A batch is
accepted if one key valid now verifies it; otherwise the reason of the first valid key's failure is kept.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lifeline.protocols import batch

R_NO_VALID_KEY = "no_valid_key"  # the gateway is known, but none of its keys is valid at this time


@dataclass(frozen=True, slots=True)
class TrustedKey:
    key: Any  # what batch.verify accepts: Ed25519PublicKey, 32 raw bytes, a VerifyKey or a resolver
    not_before_ms: int | None = None
    not_after_ms: int | None = None  # exclusive

    def valid_at(self, now_ms: int) -> bool:
        return ((self.not_before_ms is None or now_ms >= self.not_before_ms)
                and (self.not_after_ms is None or now_ms < self.not_after_ms))


class NoValidKey(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = R_NO_VALID_KEY
        self.detail = detail


def normalise(trust: Mapping[str, Any]) -> dict[str, tuple[TrustedKey, ...]]:
    """gateway id -> keys, from ``{gw: key}``, ``{gw: TrustedKey}`` or ``{gw: [TrustedKey, ...]}``."""
    out: dict[str, tuple[TrustedKey, ...]] = {}
    for gw, v in trust.items():
        items: Sequence[Any] = v if isinstance(v, list | tuple) else (v,)
        out[gw] = tuple(x if isinstance(x, TrustedKey) else TrustedKey(x) for x in items)
        if not out[gw]:
            raise ValueError(f"trust {gw}: no key")
    return out


def verify(keys: Sequence[TrustedKey], payload: bytes, now_ms: int) -> batch.Batch:
    """The batch, verified with a key valid at ``now_ms``; BatchError or NoValidKey otherwise."""
    valid = [k for k in keys if k.valid_at(now_ms)]
    if not valid:
        raise NoValidKey(f"{len(keys)} key(s) configured, none valid at {iso(now_ms)}")
    first: batch.BatchError | None = None
    for k in valid:
        try:
            return batch.verify(payload, k.key)
        except batch.BatchError as e:
            first = first or e
    assert first is not None
    raise first


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int:
    """Unix ms from an ISO 8601 time (``2026-12-01T00:00:00Z``; a date alone is midnight UTC)."""
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp() * 1000)
