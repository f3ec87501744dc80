# Node-side queue of readings that could not be sent: bounded, alarms kept over periodic reports, retried
# with exponential backoff, sent oldest first when the link returns. Readings (not frames) are stored, so
# each is re-encoded at send time with a fresh frame counter and FLAG_QUEUED. Kept in flash (one small
# atomic file, written only when the link fails) so it survives power loss.
# MicroPython subset.

from lifeline.firmware import storage

PATH = "/queue"
CAPACITY = 24
BACKOFF_MIN_S = 60
BACKOFF_MAX_S = 3600

PRIO_ALARM = 0
PRIO_EVENT = 1
PRIO_PERIODIC = 2


class TxQueue:
    def __init__(self, fs, capacity=CAPACITY):
        self._fs = fs
        self.capacity = capacity
        self.items = []  # [prio, time, kind, fields(dict str->int), ack_req]
        self.dropped = 0
        self.failures = 0
        self.next_try = 0
        self._dirty = False
        d = storage.load_json(fs, PATH)
        if isinstance(d, dict):
            items = d.get("q")
            if isinstance(items, list):
                self.items = items[:capacity]
            self.dropped = d.get("drop", 0)
            self.failures = d.get("fail", 0)
            self.next_try = d.get("next", 0)

    def __len__(self):
        return len(self.items)

    def push(self, prio, t, kind, fields, ack_req):
        """Add a reading; when full, the oldest periodic reading goes first, alarms last."""
        item = [prio, t, kind, {str(k): fields[k] for k in fields}, 1 if ack_req else 0]
        if len(self.items) >= self.capacity:
            victim = self._victim(prio)
            if victim < 0:
                self.dropped += 1
                return False
            self.items.pop(victim)
            self.dropped += 1
        self.items.append(item)
        self._dirty = True
        return True

    def _victim(self, new_prio):
        # lowest priority (highest number) first, oldest among equals; never evict for a lower priority
        worst = -1
        for i in range(len(self.items)):
            if worst < 0 or self.items[i][0] > self.items[worst][0]:
                worst = i
        if worst >= 0 and self.items[worst][0] < new_prio:
            return -1
        return worst

    def peek(self):
        """Oldest reading as (prio, time, kind, fields dict int->value, ack_req), or None."""
        if not self.items:
            return None
        p, t, k, f, a = self.items[0]
        return p, t, k, {int(x): f[x] for x in f}, bool(a)

    def pop(self):
        if self.items:
            self.items.pop(0)
            self._dirty = True

    def due(self, now):
        return bool(self.items) and now >= self.next_try

    def failed(self, now):
        """A send from the queue failed: back off exponentially (60 s doubling to 1 h)."""
        self.failures += 1
        delay = BACKOFF_MIN_S
        for _ in range(min(self.failures - 1, 8)):
            delay *= 2
        if delay > BACKOFF_MAX_S:
            delay = BACKOFF_MAX_S
        self.next_try = now + delay
        self._dirty = True

    def succeeded(self):
        if self.failures or self.next_try:
            self._dirty = True
        self.failures = 0
        self.next_try = 0

    def flush(self):
        if not self._dirty:
            return
        if not self.items and not self.dropped and not self.failures:
            storage.remove(self._fs, PATH)
        else:
            storage.save_json(self._fs, PATH, {"q": self.items, "drop": self.dropped,
                                               "fail": self.failures, "next": self.next_try})
        self._dirty = False
