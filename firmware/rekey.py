# Over-the-air re-key, node side (docs/keys.md, "Rotating a device key"). Imported only when a `rekey`
# downlink arrives or a re-key is pending in flash, so a node's wake heap is unchanged otherwise.
# MicroPython subset.
#
# Flash record PATH: epoch (2) | old root key (32) | pending root key (32), written before the confirm is
# sent. Every step can be cut by a power loss and continues at the next wake:
#   record, config root = old      -> send rekey_confirm (counter 1, pending keys), wait for the ACK
#   ACK heard                      -> downlink counter saved, config root = pending, uplink counter = 2,
#                                     record removed (in this order)
#   record, config root = pending  -> a cut switch: redo the counter reset and remove the record
#   record, config root = neither  -> re-provisioned meanwhile: the record is stale, removed

from lifeline.firmware import config, fcnt, storage
from lifeline.firmware.downlink import DOWN_FCNT_PATH
from lifeline.protocols import frame, rekey, schema

try:
    from micropython import const
except ImportError:

    def const(x):
        return x

_K_REKEY_CONFIRM = const(11)  # schema_table.K_REKEY_CONFIRM (schema._LAZY: no device constant)

PATH = "/rekey"
FIRST_FCNT = 1  # the confirm's counter: the counter-reset handshake


def load(fs):
    p = storage.load_record(fs, PATH)
    if p is None or len(p) != 66:
        return None
    return int.from_bytes(p[:2], "big"), p[2:34], p[34:66]


def begin(node, fields):
    """A verified `rekey` downlink (under the current keys): derive and store the pending key, confirm."""
    cfg = node.cfg
    epoch = fields[1]
    rec = load(node.hal.fs)
    if rec is None or rec[0] != epoch or rec[1] != cfg.root_key:
        new = rekey.pending_root(cfg.suite, cfg.root_key, node.dev_id, epoch, fields[2])
        rec = (epoch, cfg.root_key, new)
        storage.save_record(node.hal.fs, PATH, epoch.to_bytes(2, "big") + rec[1] + new)
    return confirm(node, rec)


def resume(node):
    """At a wake with PATH present: finish a cut switch, or re-send the confirm."""
    fs = node.hal.fs
    rec = load(fs)
    root = node.cfg.root_key
    if rec is None or (root != rec[1] and root != rec[2]):
        storage.remove(fs, PATH)
        return False
    if root == rec[2]:
        _finish(node)
        return True
    return confirm(node, rec)


def confirm(node, rec):
    """Send rekey_confirm under the pending keys with counter 1; switch on its ACK. True when switched."""
    if not node._open_radio():
        return False
    epoch, _old, new = rec
    keys = frame.derive_keys(new, node.dev_id, node.cfg.suite)
    t = node.hal.time() if node.rtc.get("ts") else 0
    data = frame.encode(keys, node.dev_id, FIRST_FCNT, t, _K_REKEY_CONFIRM, {1: epoch}, frame.FLAG_ACK_REQ)
    ok, downs = node.radio.send(data, True)
    if ok:
        node.tx.append(data)
    for d in downs:
        try:
            f = frame.decode(d, keys, True)
        except frame.FrameError:
            node.rejected_downlinks += 1  # e.g. a downlink still under the old keys
            continue
        if f.header.dev_id == node.dev_id and f.header.kind == schema.C_ACK and f.fields[1] == FIRST_FCNT:
            _switch(node, new, keys, f.header.fcnt)
            return True
    return False


def _switch(node, new, keys, down_fcnt):
    fs = node.hal.fs
    node.rtc.set("dfc", down_fcnt)
    storage.save_record(fs, DOWN_FCNT_PATH, down_fcnt.to_bytes(4, "big"))
    raw = dict(node.cfg.raw)
    raw["root_key"] = new.hex()
    config.save(fs, raw)
    cfg, _ = config.build(raw, True)
    node.cfg = cfg
    node.keys = keys
    _finish(node)


def _finish(node):
    """The new epoch's uplink counters continue after the confirm's 1; the record goes last."""
    fs = node.hal.fs
    c = FIRST_FCNT + 1
    storage.save_record(fs, fcnt.PATH, c.to_bytes(4, "big"))
    ctr = node.counter
    if ctr is not None:
        ctr.reserved = c
        ctr.value = c
    node.rtc.set("fc", c)
    node.rtc.save()
    storage.remove(fs, PATH)
