"""The HIL pytest plugin (entry point ``lifeline_hil``): DUT options, bench fixtures, drill markers,
KPI recording and self-explaining failures.

Inert unless asked for: without ``--dut`` (or ``-m hil``) it adds its options and markers and nothing
else; the drills in ``hil_tests/drills`` are not even collected, so the rest of the suite is unaffected.

    pytest hil_tests/drills --dut sim                      # every drill on simulated nodes
    pytest hil_tests/drills --dut sim --fast               # the CI subset
    pytest hil_tests/drills --dut serial:/dev/ttyUSB0 --bench-modem /dev/ttyUSB1 --bench-records rec.jsonl

``lifeline hil run`` wraps this and writes the drill report.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

DRILLS_DIR = Path(__file__).resolve().parent / "drills"
_ACTIVE = pytest.StashKey[bool]()
_CFG = pytest.StashKey[Any]()
_BENCHES = pytest.StashKey[list[Any]]()

MARKERS = (
    "hil: a hardware-in-the-loop drill (runs against --dut sim or a bench board)",
    "fast: a drill in the CI subset (lifeline hil run --fast)",
    "drill(number, title): the drill's number and title in the report",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("lifeline-hil", "Lifeline hardware-in-the-loop drills")
    g.addoption("--dut", default=None, metavar="SPEC",
                help="device under test: sim (simulated nodes, default for -m hil) or serial:PORT (a real board)")
    g.addoption("--fast", action="store_true", default=False, help="only the drills marked fast (the CI subset)")
    g.addoption("--hil-kpi", default=None, metavar="FILE", help="append drill results and KPIs (JSON lines) here")
    g.addoption("--hil-logs", default=None, metavar="DIR", help="keep DUT consoles and gateway logs here")
    g.addoption("--bench-modem", default=None, metavar="PORT", help="bench: the gateway's LoRa modem (RAK3172)")
    g.addoption("--bench-records", default=None, metavar="FILE",
                help="bench: provisioning records file holding the board's record")
    g.addoption("--bench-firmware", default=None, metavar="BIN", help="bench: MicroPython image for drill 1")
    g.addoption("--bench-power", default=None, metavar="CMD",
                help="bench: relay command, '{state}' becomes on/off (else the operator is asked)")
    g.addoption("--operator-timeout", type=float, default=600.0, help="bench: seconds to wait for the operator")
    g.addoption("--alarm-budget-ms", type=float, default=3000.0,
                help="alarm latency budget node -> platform, p99 (default 3000 ms)")


def _active(config: pytest.Config) -> bool:
    if config.getoption("dut") is not None:
        return True
    markexpr = str(config.getoption("markexpr", "") or "")
    return "hil" in markexpr.replace("not hil", "")


def pytest_configure(config: pytest.Config) -> None:
    for m in MARKERS:
        config.addinivalue_line("markers", m)
    config.stash[_ACTIVE] = _active(config)
    config.stash[_BENCHES] = []
    if not config.stash[_ACTIVE]:
        return
    dut = config.getoption("dut") or "sim"
    if dut != "sim" and not dut.startswith("serial:"):
        raise pytest.UsageError(f"--dut {dut!r}: expected sim or serial:PORT")
    from lifeline.hil_tests.bench import HilConfig
    from lifeline.protocols import keys

    kpi = config.getoption("hil_kpi")
    logs = config.getoption("hil_logs")
    logdir = Path(logs) if logs else Path(tempfile.gettempdir()) / "lifeline-hil-logs"
    logdir.mkdir(parents=True, exist_ok=True)

    def opt_path(name: str) -> Path | None:
        v = config.getoption(name)
        return Path(v) if v else None

    config.stash[_CFG] = HilConfig(
        dut=dut, logdir=logdir, kpi_path=Path(kpi) if kpi else None, technician_key=keys.generate(),
        bench_modem=config.getoption("bench_modem"), bench_records=opt_path("bench_records"),
        bench_firmware=opt_path("bench_firmware"), bench_power=config.getoption("bench_power"),
        operator_timeout_s=float(config.getoption("operator_timeout")),
        alarm_budget_ms=float(config.getoption("alarm_budget_ms")))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.stash.get(_ACTIVE, False):
        return None
    try:
        collection_path.relative_to(DRILLS_DIR)
    except ValueError:
        return None
    return True  # drills run only with --dut / -m hil


def _drill(item: pytest.Item) -> tuple[int | None, str]:
    m = item.get_closest_marker("drill")
    if m is None:
        return None, item.name
    number = m.args[0] if m.args else m.kwargs.get("number")
    title = m.args[1] if len(m.args) > 1 else m.kwargs.get("title", item.name)
    return (int(number) if number is not None else None), str(title)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.stash.get(_ACTIVE, False):
        return
    keep, drop = [], []
    for item in items:
        is_drill = item.get_closest_marker("drill") is not None
        if is_drill:
            item.add_marker(pytest.mark.hil)
            number, title = _drill(item)
            item.user_properties.append(("drill", number))
            item.user_properties.append(("drill_title", title))
        if config.getoption("fast") and is_drill and item.get_closest_marker("fast") is None:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    cfg = config.stash[_CFG]
    from lifeline.hil_tests import kpi

    kpi.append(cfg.kpi_path, {"type": "session", "ts": round(time.time(), 3), "dut": cfg.dut,
                               "fast": bool(config.getoption("fast")),
                               "collected": [{"nodeid": i.nodeid, "drill": _drill(i)[0], "title": _drill(i)[1]}
                                             for i in items if i.get_closest_marker("drill") is not None]})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if not item.config.stash.get(_ACTIVE, False) or item.get_closest_marker("drill") is None:
        return
    benches = getattr(item, "_hil_benches", [])
    if rep.failed and benches:
        paths = [str(p) for b in benches for p in b.log_paths()]
        rep.sections.append(("HIL logs", "\n".join(paths)))
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        number, title = _drill(item)
        message = ""
        if rep.failed:
            text = str(rep.longrepr) if rep.longrepr is not None else ""
            message = "\n".join(text.strip().splitlines()[-12:])[-2000:]
        cfg = item.config.stash[_CFG]
        from lifeline.hil_tests import kpi

        kpi.append(cfg.kpi_path, {"type": "result", "nodeid": item.nodeid, "drill": number, "title": title,
                                  "outcome": rep.outcome, "when": rep.when, "duration_s": round(rep.duration, 3),
                                  "message": message, "ts": round(time.time(), 3),
                                  "logs": [str(p) for b in benches for p in b.log_paths()]})


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def hil_config(request: pytest.FixtureRequest) -> Any:
    """The session's HIL options (HilConfig); errors when the plugin is not active."""
    if not request.config.stash.get(_ACTIVE, False):
        raise pytest.UsageError("HIL fixtures need --dut sim|serial:PORT (or -m hil)")
    return request.config.stash[_CFG]


@pytest.fixture
def bench(request: pytest.FixtureRequest, hil_config: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``bench(DutSpec(kind=...), neighbours=NeighbourSpec(...), quota_mb=..., rules=TEXT)`` builds and
    starts a whole bench (brokers, platform sink, gateway process, DUTs) and tears it down after the test."""
    from lifeline.hil_tests.bench import Bench, DutSpec

    made: list[Any] = []
    item = request.node

    def make(*duts: Any, neighbours: Any = None, quota_mb: int = 256, rules: str | None = None, seed: int = 1,
             provisioned: Any = None) -> Any:
        specs = list(duts) or ([] if provisioned is not None else [DutSpec()])
        logdir_item = hil_config.logdir / _safe(item.nodeid)
        logdir_item.mkdir(parents=True, exist_ok=True)
        from dataclasses import replace

        cfg = replace(hil_config, logdir=logdir_item)
        b = Bench(cfg, tmp_path / f"bench{len(made)}", duts=specs, neighbours=neighbours, quota_mb=quota_mb,
                  rules=rules, seed=seed, provisioned=provisioned)
        made.append(b)
        item._hil_benches = made
        return b.start()

    yield make
    for b in reversed(made):
        b.close()


@pytest.fixture
def kpi(request: pytest.FixtureRequest, hil_config: Any) -> Any:
    """Record the drill's figures: ``kpi.value(name, v, unit)``, ``kpi.samples(name, values, unit)``."""
    from lifeline.hil_tests.kpi import KpiRecorder

    number, title = _drill(request.node)
    return KpiRecorder(hil_config.kpi_path, request.node.nodeid, number, title)


def _safe(nodeid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid.split("::")[-1])[:80]
