"""The hot-path view of the registry: an in-memory device table and a bounded cache of derived keys."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from lifeline.gateway.registry import DeviceRecord
from lifeline.protocols import frame


class DeviceTable:
    """Snapshot of the registry (reloaded when its generation changes)."""

    def __init__(self) -> None:
        self._devices: dict[bytes, DeviceRecord] = {}
        self.generation = -1

    def replace(self, devices: Iterable[DeviceRecord], generation: int) -> set[bytes]:
        """Install a new snapshot; returns the ids whose key, epoch or status changed."""
        new = {d.device_id: d for d in devices}
        changed = {dev for dev, d in new.items()
                   if (old := self._devices.get(dev)) is None or old.root_key != d.root_key
                   or old.key_epoch != d.key_epoch or old.status != d.status}
        changed |= set(self._devices) - set(new)
        self._devices = new
        self.generation = generation
        return changed

    def get(self, device_id: bytes) -> DeviceRecord | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)


class KeyCache:
    """Derived per-device keys (three HMACs per derivation), LRU-bounded."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._keys: OrderedDict[bytes, tuple[int, frame.Keys]] = OrderedDict()
        self.derivations = 0

    def get(self, device: DeviceRecord) -> frame.Keys:
        hit = self._keys.get(device.device_id)
        if hit is not None and hit[0] == device.key_epoch:
            self._keys.move_to_end(device.device_id)
            return hit[1]
        keys = frame.derive_keys(device.root_key, device.device_id)
        self.derivations += 1
        self._keys[device.device_id] = (device.key_epoch, keys)
        if len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)
        return keys

    def invalidate(self, device_ids: Iterable[bytes]) -> None:
        for d in device_ids:
            self._keys.pop(d, None)

    def __len__(self) -> int:
        return len(self._keys)
