"""The hot-path view of the registry: an in-memory device table and a bounded cache of derived keys."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from lifeline.gateway.registry import ACTIVE, ROOT_KEY_BYTES, DeviceRecord, PendingKey, RegistryError
from lifeline.protocols import fastpath, frame


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the hot path needs of a registered device (a few dozen bytes, not the whole record)."""

    device_id: bytes
    root_key: bytes = field(repr=False)
    key_epoch: int
    data_class: int
    status: str
    suite: int = frame.SUITE_INTL  # the device's frame crypto suite id (1 intl, 2 sm)
    pending_epoch: int = 0  # an over-the-air re-key to this epoch is pending (0: none); docs/keys.md
    pending_root: bytes = field(default=b"", repr=False)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @classmethod
    def of(cls, d: DeviceRecord, pending: PendingKey | None = None) -> DeviceInfo:
        if len(d.root_key) != ROOT_KEY_BYTES:  # a metadata-only registry read: never onto the radio path
            raise RegistryError(f"device {d.device_id.hex()}: no root key in this registry view")
        status = sys.intern(d.status)  # one string per status, not one per device (SQLite gives a new one per row)
        if pending is not None and pending.epoch == d.key_epoch + 1:
            return cls(d.device_id, d.root_key, d.key_epoch, d.data_class, status, d.suite_id, pending.epoch,
                       pending.root_key)
        return cls(d.device_id, d.root_key, d.key_epoch, d.data_class, status, d.suite_id)

    def switched(self) -> DeviceInfo:
        """This device after its re-key committed: the pending key is the root key of the pending epoch."""
        return DeviceInfo(self.device_id, self.pending_root, self.pending_epoch, self.data_class, self.status,
                          self.suite)


class DeviceTable:
    """Snapshot of the registry (reloaded when its generation changes)."""

    def __init__(self) -> None:
        self._devices: dict[bytes, DeviceInfo] = {}
        self.generation = -1

    def replace(self, devices: Iterable[DeviceRecord | DeviceInfo], generation: int) -> set[bytes]:
        """Install a new snapshot; returns the ids whose key, epoch, status or suite changed."""
        new = {d.device_id: d if isinstance(d, DeviceInfo) else DeviceInfo.of(d) for d in devices}
        changed = {dev for dev, d in new.items()
                   if (old := self._devices.get(dev)) is None or old.root_key != d.root_key
                   or old.key_epoch != d.key_epoch or old.status != d.status or old.suite != d.suite}
        changed |= set(self._devices) - set(new)
        self._devices = new
        self.generation = generation
        return changed

    def get(self, device_id: bytes) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def put(self, device: DeviceInfo) -> None:
        """Replace one device in the snapshot (a committed re-key, before the next reload shows it)."""
        self._devices[device.device_id] = device

    def pending(self) -> list[DeviceInfo]:
        """Active devices with an over-the-air re-key pending."""
        return [d for d in self._devices.values() if d.pending_epoch and d.active]

    def status_counts(self) -> dict[str, int]:
        counts = {"active": 0, "revoked": 0}
        for d in self._devices.values():
            counts[d.status] = counts.get(d.status, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self._devices)


class KeyCache:
    """Derived per-device uplink keys (two HMACs per derivation), LRU-bounded. Entries are
    :class:`fastpath.UplinkKeys` (the key epoch inside): a 10,000-device cache costs ~2.5 MB instead of ~4.4
    as whole ``frame.Keys``. A downlink takes :meth:`downlink_keys`, derived when needed (one per ACK or
    command; an uplink costs a cache lookup only)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._keys: OrderedDict[bytes, fastpath.UplinkKeys] = OrderedDict()
        self.derivations = 0

    def get(self, device: DeviceInfo) -> fastpath.UplinkKeys:
        keys = self._keys.get(device.device_id)
        if keys is not None and keys.epoch == device.key_epoch and keys.suite == device.suite:
            self._keys.move_to_end(device.device_id)
            return keys
        keys = fastpath.derive_uplink_keys(device.root_key, device.device_id, device.suite, device.key_epoch)
        self.derivations += 1
        self._keys[device.device_id] = keys
        self._keys.move_to_end(device.device_id)
        if len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)
        return keys

    def downlink_keys(self, device: DeviceInfo) -> frame.Keys:
        """The device's whole key set (downlink MIC key, the suite's cipher) for encoding a downlink."""
        return fastpath.derive_keys(device.root_key, device.device_id, device.suite)

    def invalidate(self, device_ids: Iterable[bytes]) -> None:
        for d in device_ids:
            self._keys.pop(d, None)

    def __len__(self) -> int:
        return len(self._keys)
