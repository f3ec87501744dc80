# App slot selection at boot: the one piece of code that is never updated over the air (it sits beside
# boot.py, outside the slots). Reads the pointer file /app/active (written only by tmp + rename), counts
# boots of an app on trial, and rolls back to the previous slot when the trial app has not confirmed
# itself (first acknowledged report) within its allowed number of boots.
# MicroPython subset; ``fs`` is any object with open/rename/remove (OsFs below on the device).

import json

from lifeline.firmware import storage

POINTER = "/app/active"
TRIAL = "/app/trial"  # exists exactly while an app is on trial (boot count)
ROLLED = "/app/rolled"  # exists after a rollback until the app has reported it (version rolled back)
FACTORY = ""  # the app flashed at the factory, in /lib


def read_pointer(fs):
    p = storage.unpack(storage.read(fs, POINTER))
    if p is None:
        return None
    try:
        d = json.loads(p)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("slot"), str) else None


def write_pointer(fs, d):
    storage.write_atomic(fs, POINTER, storage.pack(json.dumps(d).encode()))


def trial_boots(fs):
    p = storage.unpack(storage.read(fs, TRIAL))
    return int.from_bytes(p, "big") if p is not None and len(p) == 2 else 0


def select(fs):
    """Slot root to run ("" = factory app in /lib, else e.g. "/app/b"), handling trial and rollback."""
    d = read_pointer(fs)
    if d is None:
        return FACTORY
    if d.get("trial"):
        n = trial_boots(fs) + 1
        if n > d.get("k", 3):
            back = {"slot": d.get("prev", FACTORY), "version": d.get("prev_version", 0), "trial": 0}
            write_pointer(fs, back)
            storage.write_atomic(fs, ROLLED, storage.pack(d.get("version", 0).to_bytes(2, "big")))
            storage.remove(fs, TRIAL)
            return back["slot"]
        storage.write_atomic(fs, TRIAL, storage.pack(n.to_bytes(2, "big")))
    return d["slot"]


def in_trial(fs):
    d = read_pointer(fs)
    return bool(d and d.get("trial"))


def pending(fs):
    """Cheap check for the app (no parsing): is there a trial or a rollback to deal with?"""
    return fs.exists(TRIAL) or fs.exists(ROLLED)


def confirm(fs):
    """The running app sent an acknowledged report: make it permanent. True if a trial ended."""
    d = read_pointer(fs)
    if d is None or not d.get("trial"):
        return False
    d["trial"] = 0
    write_pointer(fs, d)
    storage.remove(fs, TRIAL)
    return True


def take_rollback(fs):
    """Version that was rolled back (once, for the fault report), or None."""
    p = storage.unpack(storage.read(fs, ROLLED))
    if p is None:
        return None
    storage.remove(fs, ROLLED)
    return int.from_bytes(p, "big")


class OsFs:
    """hal.fs-compatible wrapper of the os module for boot.py (before any HAL exists)."""

    def __init__(self, os_module):
        self._os = os_module

    def open(self, path, mode="rb"):
        return open(path, mode)

    def rename(self, a, b):
        self._os.rename(a, b)

    def remove(self, path):
        self._os.remove(path)

    def exists(self, path):
        try:
            self._os.stat(path)
            return True
        except OSError:
            return False

    def mkdir(self, path):
        try:  # noqa: SIM105 - MicroPython has no contextlib
            self._os.mkdir(path)
        except OSError:
            pass

    def listdir(self, path):
        return self._os.listdir(path)
