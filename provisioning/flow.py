"""One device, start to finish: detect, flash, install, key and configure, register, self-test, finalize,
label, with every step recorded in the state file and the audit log.

Order and why:
1. **detect** - if MicroPython answers on the port, read its facts (MAC, existing /config.json). A
   board that already carries a config is refused unless ``force`` (or unless the state file says this
   very run put it there). Then ``machine.bootloader()`` puts it in download mode.
2. **flash** - ROM loader: chip must be the expected one, MAC -> device id, fastest reliable baud, erase
   everything outside the image (old filesystem, old keys, NVS), write (resumable), verify by MD5, run.
3. **install** - the .mpy app bundle, verified by hash read-back.
4. **config** - fresh root key (CSPRNG on this host), /config.json, verified by hash.
5. **register** - signed record into the records file (0600) for ``lifeline gateway devices import``.
6. **selftest** - sensors, battery, test frame (FLAG_TEST) over the radio, ack if a gateway answers;
   the frame is verified here with the record's key. With ``gateway`` the same frame goes to that
   gateway's node broker as the node's NB-IoT uplink and the gateway's ACK is handed back to the board,
   whose firmware checks it (``gateway_import`` first hands the records file to the gateway).
7. **finalize** - boot.py/main.py/bootsel.py last: from the next reset on, the node runs.
8. **label** - QR code PNG with device id, kind and a random claim code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import serial
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.provisioning import bundle as bundles
from lifeline.provisioning import gateway_import, gateway_link, labels, records, selftest
from lifeline.provisioning.audit import AuditLog
from lifeline.provisioning.errors import ProvisionError, UsageProblem
from lifeline.provisioning.firmware_image import FirmwareImage
from lifeline.provisioning.flasher import BAUD_LADDER, Flasher
from lifeline.provisioning.identity import eui64_from_mac, new_claim_code, new_root_key
from lifeline.provisioning.installer import CONFIG_PATH, BoardFacts, Installer
from lifeline.provisioning.nodeconfig import DeviceSpec, node_config
from lifeline.provisioning.rawrepl import RawRepl, ReplError
from lifeline.provisioning.state import StateFile

PROBE_TIMEOUT_S = 3.0
ROM_PROBE_S = 0.3
BOOT_TIMEOUT_S = 15.0


class _Done(Exception):
    """Nothing left to do for this device."""


class StepSink(Protocol):
    def start(self, step: str, total: int | None = None) -> None: ...
    def advance(self, done: int, total: int) -> None: ...
    def finish(self, step: str, status: str, note: str = "") -> None: ...


class NullSink:
    def start(self, step: str, total: int | None = None) -> None:
        return None

    def advance(self, done: int, total: int) -> None:
        return None

    def finish(self, step: str, status: str, note: str = "") -> None:
        return None


@dataclass
class Options:
    port: str
    firmware: FirmwareImage
    records_path: Path
    state: StateFile
    audit: AuditLog
    technician_key: Ed25519PrivateKey
    labels_dir: Path
    force: bool = False
    reset_lines: bool | None = None  # None: auto (no DTR/RTS on a pty or socket://)
    baud_ladder: tuple[int, ...] = BAUD_LADDER
    expect_chip: str = "ESP32"
    hal: str = "auto"  # auto | device | sim
    repl_chunk_delay: float | None = None
    gateway: gateway_link.GatewayTarget | None = None  # node broker of the gateway that acks the test frame
    gateway_import: tuple[str, ...] | None = None  # argv with {records}: run after register (gateway_import.py)
    gateway_timeout_s: float = gateway_link.DEFAULT_DEADLINE_S


@dataclass
class Outcome:
    device_id: str | None
    result: str  # passed | failed | refused | skipped
    reason: str = ""
    message: str = ""
    steps: list[tuple[str, str, str]] = field(default_factory=list)
    selftest: selftest.SelfTestResult | None = None
    seconds: float = 0.0
    baud: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "result": self.result, "reason": self.reason, "message": self.message,
                "steps": [list(s) for s in self.steps], "seconds": round(self.seconds, 3), "baud": self.baud,
                "selftest": self.selftest.to_json() if self.selftest else None}


def has_reset_lines(url: str) -> bool:
    if url.startswith("socket://") or url.startswith("loop://"):
        return False
    real = os.path.realpath(url)
    return not (real.startswith("/dev/pts/") or real.startswith("/dev/ptmx"))


class DeviceFlow:
    def __init__(self, opts: Options, spec: DeviceSpec, *, row: int | None = None, sink: StepSink | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.o = opts
        self.spec = spec
        self.row = row
        self.sink = sink or NullSink()
        self.clock = clock
        self.reset_lines = has_reset_lines(opts.port) if opts.reset_lines is None else opts.reset_lines
        self.chunk_delay = opts.repl_chunk_delay if opts.repl_chunk_delay is not None else (
            0.01 if self.reset_lines else 0.0)
        self.dev: str | None = None
        self.outcome = Outcome(None, "failed")

    # ---- helpers -----------------------------------------------------------------------------------
    def _step(self, name: str, status: str, note: str = "") -> None:
        self.outcome.steps.append((name, status, note))
        self.sink.finish(name, status, note)
        self.o.audit.write("step", device_id=self.dev or "-", row=self.row, step=name, result=status,
                           message=note, firmware_sha256=self.o.firmware.sha256)

    def _repl(self, timeout: float = BOOT_TIMEOUT_S) -> RawRepl:
        repl = RawRepl.open(self.o.port, timeout=timeout, chunk_delay=self.chunk_delay)
        try:
            repl.enter()
        except ProvisionError:
            repl.port.close()
            raise
        repl.timeout = selftest.SELFTEST_TIMEOUT_S
        return repl

    def _rom_answers(self) -> bool:
        """True when the ROM loader answers a SYNC at 115200 within ROM_PROBE_S (the board is in download
        mode), so the slower REPL probe can be skipped. A REPL that receives the SYNC bytes sees a line of
        noise (no Ctrl-D in it), which the probe's Ctrl-C then discards."""
        try:
            port = serial.serial_for_url(self.o.port, baudrate=115200, timeout=ROM_PROBE_S)
        except (serial.SerialException, OSError, ValueError):
            return False
        try:
            port.reset_input_buffer()
            port.write(b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0")
            seen = b""
            deadline = self.clock() + ROM_PROBE_S
            while self.clock() < deadline and b"\xc0\x01\x08" not in seen:
                seen += port.read(64)
            return b"\xc0\x01\x08" in seen
        except (serial.SerialException, OSError):
            return False
        finally:
            port.close()

    def _probe(self) -> BoardFacts | None:
        """Facts of a MicroPython board on the port, or None when nothing answers the REPL."""
        if self._rom_answers():
            return None
        try:
            repl = self._repl(PROBE_TIMEOUT_S)
        except ReplError:
            return None
        with repl:
            return Installer(repl).facts()

    def _to_bootloader(self) -> None:
        repl = self._repl()
        try:
            repl.send_only("import machine\nmachine.bootloader()")
        finally:
            repl.port.close()

    # ---- the flow ----------------------------------------------------------------------------------
    def run(self) -> Outcome:
        t0 = self.clock()
        try:
            self._run()
        except _Done:
            pass
        except ProvisionError as exc:
            self.outcome.result = "refused" if exc.reason in ("already_provisioned", "wrong_chip") else "failed"
            self.outcome.reason = exc.reason
            self.outcome.message = str(exc)
            if self.dev:
                self.o.state.set_result(self.dev, self.outcome.result)
        self.outcome.seconds = self.clock() - t0
        self.o.audit.write("device", device_id=self.dev or "-", row=self.row, result=self.outcome.result,
                           reason=self.outcome.reason, message=self.outcome.message,
                           firmware_sha256=self.o.firmware.sha256, seconds=round(self.outcome.seconds, 3))
        return self.outcome

    def _fail(self, step: str, exc: ProvisionError) -> None:
        if self.dev:
            self.o.state.fail(self.dev, step, exc.reason)
        self._step(step, "fail", str(exc))
        raise exc

    def _run(self) -> None:
        o = self.o
        # 1. detect
        self.sink.start("detect")
        facts = self._probe()
        if facts is not None:
            self.dev = eui64_from_mac(facts.mac).hex()
            self.outcome.device_id = self.dev
            if self.row is not None:
                self._check_row_binding()
            if o.state.result(self.dev) == "passed" and facts.has_config and not o.force:
                self._step("detect", "skip", "already provisioned by this run's state file")
                self.outcome.result = "skipped"
                self.outcome.reason = "already_done"
                raise _Done
            ours = o.state.done(self.dev, "config")
            if facts.has_config and not o.force and not ours:
                self._step("detect", "fail", "already provisioned")
                raise ProvisionError(
                    "already_provisioned",
                    f"board {self.dev} already carries {CONFIG_PATH} (device {facts.provisioned_id}); "
                    "refusing to overwrite its identity. Decommission it first or pass --force.")
            if o.force and facts.has_config and not ours:
                o.state.reset(self.dev)
            self._facts = facts
        self._step("detect", "pass", "MicroPython answers" if facts else "no REPL (download mode or blank)")

        # 2. flash
        if self.dev is not None and o.state.done(self.dev, "flash", firmware=o.firmware.sha256) and facts is not None:
            self._step("flash", "skip", "this firmware is already flashed")
        else:
            if facts is not None:
                self._to_bootloader()
            self._flash()

        # 3..7 over the REPL
        assert self.dev is not None
        repl = self._repl()
        with repl:
            inst = Installer(repl, progress=lambda _w, d, t: self.sink.advance(d, t))
            facts = inst.facts()
            if eui64_from_mac(facts.mac).hex() != self.dev:
                raise ProvisionError("board_changed", "a different board answers now than the one flashed")
            self._install(inst, facts)
            key = self._config(inst)
            record = self._register(key)
            self._selftest(repl, key)
            self._finalize(inst, facts)
        self._label(record)
        o.state.set_result(self.dev, "passed")
        self.outcome.result = "passed"

    def _check_row_binding(self) -> None:
        assert self.dev is not None and self.row is not None
        bound = self.o.state.row_device(self.row)
        if bound is not None and bound != self.dev:
            raise UsageProblem("row_board_mismatch",
                               f"row {self.row} was started with board {bound}, but board {self.dev} is connected")
        for other_row, dev in self.o.state.data.get("rows", {}).items():
            if dev == self.dev and int(other_row) != self.row:
                raise UsageProblem("duplicate_device",
                                   f"board {self.dev} was already provisioned for row {other_row} of this batch")
        if self.spec.expected_mac is not None and eui64_from_mac(self.spec.expected_mac).hex() != self.dev:
            raise UsageProblem("unexpected_board",
                               f"row {self.row} expects MAC {self.spec.expected_mac.hex(':')}, board is {self.dev}")
        self.o.state.bind_row(self.row, self.dev)

    def _flash(self) -> None:
        o = self.o
        self.sink.start("flash", len(o.firmware.data))
        fl = Flasher(o.port, reset_lines=self.reset_lines, progress=lambda _w, d, t: self.sink.advance(d, t))
        try:
            try:
                info = fl.connect(o.expect_chip)
            except ProvisionError as exc:
                self._fail("flash", exc)
            self.dev = info.device_id.hex()
            self.outcome.device_id = self.dev
            if info.chip != o.expect_chip:
                self._fail("flash", ProvisionError(
                    "wrong_chip", f"the board is an {info.chip} ({info.description}), this firmware is for "
                    f"{o.expect_chip}; nothing was written"))
            if o.firmware.chip != info.chip:
                self._fail("flash", ProvisionError(
                    "wrong_image", f"{o.firmware.path.name} is built for {o.firmware.chip}, the board is {info.chip}"))
            if self.row is not None:
                self._check_row_binding()
            try:
                self.outcome.baud = fl.set_fastest_baud(o.baud_ladder)
                start, end = o.firmware.flash_range
                if not o.state.done(self.dev, "erase", firmware=o.firmware.sha256):
                    fl.erase(end, info.flash_size)
                    o.state.mark(self.dev, "erase", firmware=o.firmware.sha256)
                # a first attempt writes straight away; after a failed one, segments already in flash are kept
                tried = "flash" in o.state.data["devices"].get(self.dev, {}).get("steps", {})
                report = fl.write_image(o.firmware.data, start, resume=tried)
                fl.verify(o.firmware.data, start)
                fl.run_app()
            except ProvisionError as exc:
                self._fail("flash", exc)
        finally:
            fl.close()
        for later in ("install", "config", "register", "selftest", "finalize"):
            o.state.data["devices"].get(self.dev, {}).get("steps", {}).pop(later, None)
        o.state.mark(self.dev, "flash", firmware=o.firmware.sha256, baud=self.outcome.baud)
        self._step("flash", "pass", f"{report.segments_written} segments written, {report.segments_skipped} already "
                   f"in flash, verified, {self.outcome.baud} baud")

    def _bundle(self, facts: BoardFacts) -> bundles.Bundle:
        device = {"device": True, "sim": False}.get(self.o.hal, not facts.emulated)
        return bundles.build(self.spec.kind, self.spec.radio, device=device)

    def _install(self, inst: Installer, facts: BoardFacts) -> None:
        assert self.dev is not None
        b = self._bundle(facts)
        self._bundle_cache = b
        if self.o.state.done(self.dev, "install", bundle=b.sha256):
            self._step("install", "skip", "bundle already installed")
            return
        self.sink.start("install", b.size)
        try:
            n = inst.install(b.lib)
        except ProvisionError as exc:
            self._fail("install", exc)
        self.o.state.mark(self.dev, "install", bundle=b.sha256)
        self._step("install", "pass", f"{n} of {len(b.lib)} files written, all verified")

    def _config(self, inst: Installer) -> bytes:
        assert self.dev is not None
        existing = records.find(self.o.records_path, self.dev)
        key = bytes.fromhex(existing["root_key"]) if existing and not self.o.force else None
        if key is None or not self.o.state.done(self.dev, "config"):
            key = key or new_root_key()
        cfg = node_config(self.spec, bytes.fromhex(self.dev), key)
        data = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        self._pending_key = key
        # keep the key recoverable before it reaches the board: the record goes out before the config
        self._register(key, announce=False)
        if self.o.state.done(self.dev, "config", digest=digest) and inst.sha256(CONFIG_PATH) == digest:
            self._step("config", "skip", "configuration already on the board")
            return key
        self.sink.start("config")
        try:
            inst.install({CONFIG_PATH: data}, what="config")
        except ProvisionError as exc:
            self._fail("config", exc)
        self.o.state.mark(self.dev, "config", digest=digest)
        self._step("config", "pass", "fresh root key and configuration written, hash verified")
        return key

    def _register(self, key: bytes, announce: bool = True) -> dict[str, Any]:
        assert self.dev is not None
        o = self.o
        rec = records.build(self.spec, bytes.fromhex(self.dev), key, o.audit.technician)
        signed = records.sign(rec, o.technician_key)
        records.upsert(o.records_path, signed)
        if announce:
            note = f"signed record in {o.records_path.name} (written before the key went to the board)"
            if o.gateway_import is not None:
                self.sink.start("register")
                try:
                    said = gateway_import.run(o.gateway_import, o.records_path)
                except ProvisionError as exc:
                    self._fail("register", exc)
                note += f"; gateway import: {said or 'done'}"
            o.state.mark(self.dev, "register")
            self._step("register", "pass", note)
        return signed

    def _selftest(self, repl: RawRepl, key: bytes) -> None:
        assert self.dev is not None
        self.sink.start("selftest")
        try:
            out = repl.exec(selftest.DEVICE_SOURCE, timeout=selftest.SELFTEST_TIMEOUT_S).stdout
        except ProvisionError as exc:
            self._fail("selftest", exc)
        result = selftest.verify(out, device_id=bytes.fromhex(self.dev), root_key=key, kind=self.spec.kind,
                                     suite=self.spec.suite)
        if self.o.gateway is not None:
            result = self._gateway_ack(repl, key, result, self.o.gateway)
        self.outcome.selftest = result
        failed = [c for c in result.checks if c.status == "fail"]
        skipped = [c for c in result.checks if c.status == "skipped"]
        acked = result.check("gateway_ack")
        note = "; ".join(f"{c.name}: {c.reason}" for c in failed) or "; ".join(
            f"{c.name} skipped: {c.reason}" for c in skipped) or (acked.reason if acked else "")
        if failed:
            self.o.state.fail(self.dev, "selftest", "selftest_failed")
            self._step("selftest", "fail", note)
            raise ProvisionError("selftest_failed", f"self-test failed: {note}")
        self.o.state.mark(self.dev, "selftest", fcnt=result.fcnt)
        self._step("selftest", "pass", note)

    def _gateway_ack(self, repl: RawRepl, key: bytes, result: selftest.SelfTestResult,
                     target: gateway_link.GatewayTarget) -> selftest.SelfTestResult:
        """Publish the board's test frame on the gateway's node broker, wait for the gateway's downlink and
        let the board's firmware judge it; the ``gateway_ack`` check says how that went."""
        assert self.dev is not None
        ack = result.check("gateway_ack")
        verified = result.check("frame_verify")
        if (ack is None or ack.status != "skipped" or verified is None or verified.status != "pass"
                or result.frame_hex is None or result.fcnt is None):
            return result  # acked over the board's own radio, or nothing worth sending
        dev, fcnt = bytes.fromhex(self.dev), result.fcnt
        try:
            ex = gateway_link.exchange(target, dev, bytes.fromhex(result.frame_hex),
                                       selftest.is_ack_for(key, dev, fcnt, self.spec.suite),
                                       deadline_s=self.o.gateway_timeout_s)
        except gateway_link.LinkError as exc:
            return result.with_check(selftest.Check("gateway_ack", "fail", str(exc)))
        verdict: str | None = None
        if ex.downlinks:
            try:
                verdict = repl.exec(selftest.ack_source(ex.downlinks, fcnt),
                                    timeout=selftest.SELFTEST_TIMEOUT_S).stdout
            except ProvisionError as exc:
                self._fail("selftest", exc)
        return result.with_check(selftest.ack_check(
            verdict, downlinks=len(ex.downlinks), publishes=ex.publishes, deadline_s=self.o.gateway_timeout_s,
            where=f"nbiot://{target}", seconds=ex.seconds))

    def _finalize(self, inst: Installer, facts: BoardFacts) -> None:
        assert self.dev is not None
        b = self._bundle_cache
        try:
            inst.install(b.root, what="finalize")
        except ProvisionError as exc:
            self._fail("finalize", exc)
        self.o.state.mark(self.dev, "finalize")
        self._step("finalize", "pass", "boot files installed; the node starts at its next reset")

    def _label(self, record: dict[str, Any]) -> None:
        assert self.dev is not None
        if self.o.state.done(self.dev, "label"):
            self._step("label", "skip", "label already made")
            return
        claim = new_claim_code()
        lab = labels.Label(self.dev, self.spec.kind, claim, self.spec.location.spatial_unit)
        path = labels.write_png(lab, self.o.labels_dir)
        claims = self.o.labels_dir / "claims.jsonl"
        with claims.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"device_id": self.dev, "kind": self.spec.kind, "claim_code": claim,
                                 "spatial_unit": self.spec.location.spatial_unit}) + "\n")
        self.o.state.mark(self.dev, "label", png=path.name)
        self.o.audit.write("label", device_id=self.dev, claim_code_sha256=hashlib.sha256(claim.encode()).hexdigest())
        self._step("label", "pass", path.name)


def load_labels(labels_dir: Path) -> list[labels.Label]:
    out: dict[str, labels.Label] = {}
    claims = labels_dir / "claims.jsonl"
    if claims.exists():
        for line in claims.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                d = json.loads(line)
                out[d["device_id"]] = labels.Label(d["device_id"], d["kind"], d["claim_code"],
                                                   d.get("spatial_unit", ""))
    return list(out.values())
