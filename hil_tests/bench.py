"""One bench per drill: brokers, the platform, the gateway process, the node(s) under test and, when asked,
simulated neighbours for load.

    node broker (Mosquitto) <-- NB-IoT neighbours (fleet simulator)        also the site LAN broker for rules
          |                                                                 |
          v                                                                 |
    lifeline gateway run  <-- lora-serial <-- RAK3172 (emulated pty | the bench's modem) <~~ air ~~ DUT
          |
          v
    platform broker (Mosquitto, persistence) --> reference platform sink (SQLite)

``--dut sim``: the DUTs are fleet nodes in a :class:`~lifeline.hil_tests.world.SimWorld`.
``--dut serial:PORT``: the DUT is the board on PORT; the gateway uses the bench's modem (``--bench-modem``);
neighbours, if a drill wants them, still come from the simulator over the node broker.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.gateway.testing_proc import GatewayProcess, wait_until
from lifeline.hil_tests.app import App
from lifeline.hil_tests.dut import Dut, Operator, read_board_config, serial_dut, sim_dut
from lifeline.hil_tests.gateway_proc import GATEWAY_ID, GatewaySettings
from lifeline.hil_tests.platform import Platform
from lifeline.protocols import keys

TECHNICIANS = ("sim-technician", "hil-technician")


@dataclass(frozen=True, slots=True)
class HilConfig:
    """The session's options (plugin command line)."""

    dut: str  # "sim" or "serial:<url>"
    logdir: Path
    kpi_path: Path | None
    technician_key: Ed25519PrivateKey
    bench_modem: str | None = None
    bench_records: Path | None = None
    bench_firmware: Path | None = None
    bench_power: str | None = None
    operator_timeout_s: float = 600.0
    alarm_budget_ms: float = 3000.0

    @property
    def is_sim(self) -> bool:
        return self.dut == "sim"

    @property
    def serial_url(self) -> str:
        return self.dut.split(":", 1)[1]


@dataclass(slots=True)
class DutSpec:
    """A node under test as a drill asks for it."""

    kind: str = "water_level"  # firmware kind
    name: str = ""
    interval_s: int = 300
    heartbeat_s: int = 86400
    config: dict[str, Any] = field(default_factory=dict)  # extra /config.json keys
    model: dict[str, float] = field(default_factory=dict)  # physics model parameters (sim)
    wrong_key: bool = False  # flashed with another root key than its record holds (sim)
    x_m: float = 20.0
    sf: int = 9  # LoRa spreading factor of the node and of the gateway modem's channel (EU868 default 9)

    def node_config(self) -> dict[str, Any]:
        cfg = dict(self.config)
        if self.sf != 9:
            cfg["lora"] = {"freq": 869_525_000, "sf": self.sf, "bw": 125, "cr": 0, "preamble": 8, "power": 14,
                           "rx_ms": 1500}
        return cfg


@dataclass(slots=True)
class NeighbourSpec:
    count: int = 20
    interval_s: int = 60
    kinds: Sequence[str] = ("water_meter", "smoke", "water_level")
    speed: float = 60.0  # virtual seconds per real second
    seed: int = 2000


@dataclass(slots=True)
class Provisioned:
    """A node that went through the real provisioning flow: its config (with key), record and flash files."""

    spec: DutSpec
    config: dict[str, Any]
    record: dict[str, Any]
    flash: dict[str, bytes] = field(default_factory=dict)


class Bench:
    def __init__(self, cfg: HilConfig, workdir: Path, *, duts: Sequence[DutSpec], neighbours: NeighbourSpec | None,
                 quota_mb: int, rules: str | None, seed: int, provisioned: Provisioned | None) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.dut_specs = list(duts)
        self.neighbour_spec = neighbours
        self.quota_mb = quota_mb
        self.rules_text = rules
        self.seed = seed
        self.provisioned = provisioned
        self.node_broker: Any = None
        self._platform: Platform | None = None
        self._gateway: GatewayProcess | None = None
        self.world: Any = None
        self.neighbours: Any = None
        self.duts: list[Dut] = []
        self.apps: list[App] = []
        self.records: list[dict[str, Any]] = []
        self._exit = contextlib.ExitStack()

    # ------------------------------------------------------------------------------ build
    def start(self) -> Bench:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        from lifeline.tools.broker import MosquittoBroker

        wd = self.workdir
        self.node_broker = MosquittoBroker(workdir=wd / "node-broker")
        self.node_broker.start()
        self._platform = Platform(wd, GATEWAY_ID)
        self._platform.start_broker()
        trusted = wd / "technicians.json"
        pub = keys.public_key_hex(self.cfg.technician_key)
        trusted.write_text(json.dumps({t: pub for t in TECHNICIANS}), encoding="utf-8")
        specs_with_names = [self._named(i, s) for i, s in enumerate(self.dut_specs)]
        companions = [] if self.cfg.is_sim else specs_with_names[1:]  # beside a board: simulated, over NB-IoT
        need_world = self.cfg.is_sim or self.neighbour_spec is not None or bool(companions)
        if need_world:
            from lifeline.hil_tests.world import SimWorld

            self.world = SimWorld(wd / "world", seed=self.seed, modem=self.cfg.is_sim).start()
        records: list[dict[str, Any]] = []
        if self.cfg.is_sim:
            records += self._sim_nodes(specs_with_names)
        else:
            self.apps = [self._bench_app()]
            if self.provisioned is not None:
                records.append(self.provisioned.record)
            if companions:
                records += self._companions(companions)
        if self.neighbour_spec is not None:
            records += self._neighbours(self.neighbour_spec)
        rule_files: list[Path] = []
        if self.rules_text is not None:
            rf = wd / "rules.toml"
            rf.write_text(self.rules_text.replace("{lan_port}", str(self.node_broker.port)), encoding="utf-8")
            rule_files.append(rf)
        modem = str(self.world.modem_path) if self.cfg.is_sim else self.cfg.bench_modem
        if modem is None:
            raise RuntimeError("--dut serial:... needs --bench-modem PORT (the gateway's LoRa modem)")
        sfs = {s.sf for s in self.dut_specs} | ({self.provisioned.spec.sf} if self.provisioned else set())
        if len(sfs) > 1:
            raise RuntimeError(f"the nodes on one modem channel share its spreading factor, not {sorted(sfs)}")
        settings = GatewaySettings(lora_serial=modem, lora_sf=sfs.pop() if sfs else 9, platform=self.platform.address,
                                   node_broker=(self.node_broker.host, self.node_broker.port), quota_mb=self.quota_mb,
                                   rule_files=rule_files, trusted_technicians=trusted)
        self._gateway = GatewayProcess(wd / "gateway", settings.spec())
        if records:
            self.gateway.import_devices(records)
        self.records = records
        self.platform.start_sink(self.gateway.public_key)
        if self.world is not None:
            self.world.metrics_url = self.gateway.metrics_url
        self.gateway.start()
        self.wait_gateway_ready()
        logdir = self.cfg.logdir
        if self.cfg.is_sim:
            self.duts = [sim_dut(self.world, app, self.platform, logdir) for app in self.apps]
            self.world.power_on([a.name for a in self.apps])
        else:
            self.duts = [serial_dut(self.cfg.serial_url, self.apps[0], self.platform, logdir,
                                    operator=Operator(self.cfg.operator_timeout_s), power_cmd=self.cfg.bench_power)]
        if companions:
            self.world.power_on([a.name for a in self.apps[1:]])
        if self.neighbours is not None:
            self.neighbours.start()

    def _named(self, i: int, s: DutSpec) -> DutSpec:
        if not s.name:
            s.name = f"dut-{s.kind.replace('_', '-')}" + (f"-{i + 1}" if len(self.dut_specs) > 1 else "")
        return s

    def _sim_nodes(self, specs: Sequence[DutSpec]) -> list[dict[str, Any]]:
        from lifeline.sim_devices.fleet import NodeSpec

        def node_spec(s: DutSpec) -> NodeSpec:
            return NodeSpec(name=s.name, kind=s.kind, radio="lora-serial", x_m=s.x_m, y_m=0.0,
                            interval_s=s.interval_s, heartbeat_s=s.heartbeat_s, address=f"HIL bench, {s.name}",
                            unit="hil-bench", tags=("hil",), model=dict(s.model), config=s.node_config())

        records: list[dict[str, Any]] = []
        if self.provisioned is not None:
            pspec, config, record = self.provisioned.spec, self.provisioned.config, self.provisioned.record
            self._named(0, pspec)
            v = self.world.add_provisioned(node_spec(pspec), config, self.provisioned.flash)
            self.apps.append(App.from_record(pspec.name, record, config))
            records.append(record)
            assert v.dev_id.hex() == record["device_id"]
        if specs and self.provisioned is None:
            nspecs = [node_spec(s) for s in specs]
            recs = self.world.add_nodes(nspecs, technician_key=self.cfg.technician_key,
                                        wrong_key=[s.name for s in specs if s.wrong_key])
            for s, rec in zip(specs, recs, strict=True):
                v = self.world.node(s.name)
                self.apps.append(App.from_record(s.name, rec, v.config))
            records += recs
        return records

    def _companions(self, specs: Sequence[DutSpec]) -> list[dict[str, Any]]:
        """Extra nodes a drill wants beside a real board: simulated NB-IoT nodes on the node broker."""
        from lifeline.sim_devices.fleet import NodeSpec

        nspecs = [NodeSpec(name=s.name, kind=s.kind, radio="nbiot", x_m=s.x_m, interval_s=s.interval_s,
                           heartbeat_s=s.heartbeat_s, unit="hil-bench", tags=("hil",), config=dict(s.config))
                  for s in specs]
        recs = self.world.add_nodes(nspecs, technician_key=self.cfg.technician_key,
                                    wrong_key=[s.name for s in specs if s.wrong_key], under_test=False)
        self.world.connect_nbiot((self.node_broker.host, self.node_broker.port))
        for s, rec in zip(specs, recs, strict=True):
            self.apps.append(App.from_record(s.name, rec, self.world.node(s.name).config))
        return list(recs)

    def _bench_app(self) -> App:
        if self.provisioned is not None:
            p = self.provisioned
            return App.from_record(self._named(0, p.spec).name, p.record, p.config, target="device")
        if self.cfg.bench_records is None:
            raise RuntimeError("--dut serial:... needs --bench-records FILE (the board's provisioning record)")
        config = read_board_config(self.cfg.serial_url)
        app = App.from_records_file(self.cfg.bench_records, str(config["device_id"]), config)
        want = [s.kind for s in self.dut_specs]
        if want and app.kind not in want:
            raise RuntimeError(f"this drill needs a {' or '.join(want)} node; the board is a {app.kind} node")
        return app

    def _neighbours(self, ns: NeighbourSpec) -> list[dict[str, Any]]:
        from lifeline.hil_tests.world import Neighbours
        from lifeline.sim_devices.fleet import NodeSpec

        specs = [NodeSpec(name=f"nb-{i + 1:03d}", kind=ns.kinds[i % len(ns.kinds)], radio="nbiot", x_m=30.0 + i,
                          interval_s=ns.interval_s, heartbeat_s=86400, unit="hil-neighbours", tags=("hil",))
                 for i in range(ns.count)]
        self.neighbours = Neighbours(self.world, specs, broker=(self.node_broker.host, self.node_broker.port),
                                     seed=ns.seed, technician_key=self.cfg.technician_key, speed=ns.speed)
        return list(self.neighbours.records)

    def wait_gateway_ready(self, timeout_s: float = 30.0) -> None:
        """Online at the platform and (simulator) the modem configured for continuous receive."""
        self.platform.wait(lambda p: p.presence() == "online", timeout_s, "the gateway online at the platform")
        if self.cfg.is_sim:
            world = self.world
            wait_until(lambda: world.call(lambda: world.modem.rx_mode) == 65534, timeout_s,
                       "the gateway configures the LoRa modem")
        wait_until(lambda: self.gateway.metric("uplink_connected") == 1, timeout_s, "the gateway's uplink")

    # ------------------------------------------------------------------------------ helpers for drills
    @property
    def dut(self) -> Dut:
        return self.duts[0]

    def restart_gateway(self) -> None:
        self.gateway.start()
        self.wait_gateway_ready()

    def sync_time(self, dut: Dut, within_s: float = 3600.0, attempts: int = 3) -> int:
        """Set the node's clock as the platform does: a ``time_sync`` command, queued at the gateway and sent
        in the node's next receive window; the proof is the node's next report carrying a node time. A
        downlink that missed the window ("sent" but never heard) is sent again, as a platform would when
        reports still say 0. Returns the attempts it took."""
        platform = self.platform
        for attempt in range(1, attempts + 1):
            cid = platform.command(dut.device_id, "time_sync", {})
            platform.wait_result(cid, "queued", 15)
            dut.run_until(lambda cid=cid: (platform.result(cid) or {}).get("status") == "sent",  # type: ignore[misc]
                          within_s, step_s=30.0, what="the time sync sent to the node")
            last = max((r.fcnt for r in dut.reports()), default=-1)

            def synced(last: int = last) -> bool:
                return any(r.fcnt > last and r.node_time > 0 for r in dut.reports())

            try:
                dut.run_until(synced, 2 * dut.app.interval_s + 60, step_s=30.0, settle_s=5.0,
                              what="a report with the node's clock set")
                return attempt
            except AssertionError:
                dut.note(f"time sync attempt {attempt} not applied by the node (downlink missed its window)")
        raise AssertionError(f"{dut.name}: the node's clock was not set after {attempts} time sync commands")

    @property
    def gateway(self) -> GatewayProcess:
        if self._gateway is None:
            raise RuntimeError("the bench has no gateway yet")
        return self._gateway

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            raise RuntimeError("the bench has no platform yet")
        return self._platform

    def log_paths(self) -> list[Path]:
        out = [d.console.log_path for d in self.duts]
        if self._gateway is not None:
            out.append(self._gateway.log)
        if self.node_broker is not None:
            out.append(self.node_broker.workdir / "mosquitto.log")
        if self._platform is not None:
            out.append(self._platform.broker.workdir / "mosquitto.log")
        return out

    def close(self) -> None:
        for d in self.duts:
            with contextlib.suppress(Exception):
                d.close()
        if self._gateway is not None:
            with contextlib.suppress(Exception):
                self._gateway.stop()
        if self.world is not None:
            with contextlib.suppress(Exception):
                self.world.stop()
        if self._platform is not None:
            with contextlib.suppress(Exception):
                self._platform.close()
        if self.node_broker is not None:
            with contextlib.suppress(Exception):
                self.node_broker.close()


BenchFactory = Callable[..., Bench]  # the ``bench`` fixture: ``bench(DutSpec(...), neighbours=..., ...)``
