"""`lifeline bench`: measured speed and memory, each figure next to a baseline measured in the same run.

Benchmarks are registered by name in BENCHMARKS ("module:function"), imported only when selected. A
benchmark takes a :class:`BenchContext` and returns :class:`Figure` records. A figure may carry a budget;
the command exits 1 when any budget is missed, so CI or an operator can act on it. Budgets live here, in
benchmarks, never in timed unit tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Figure:
    bench: str
    name: str
    value: float
    unit: str
    better: str = "higher"  # or "lower"
    budget: float | None = None  # the value must be >= budget (higher) or <= budget (lower)
    baseline: str | None = None  # name of the same-run baseline figure this one compares with
    note: str = ""

    @property
    def within_budget(self) -> bool | None:
        if self.budget is None:
            return None
        return self.value >= self.budget if self.better == "higher" else self.value <= self.budget


@dataclass(slots=True)
class BenchContext:
    quick: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lifeline-bench-")))
    baselines: list[Figure] = field(default_factory=list)  # measured once per run, shared by benchmarks

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


BENCHMARKS: dict[str, tuple[str, str]] = {
    "baselines": ("lifeline.tools.bench:bench_baselines", "raw SQLite commit rates (same-run baselines)"),
    "protocol": ("lifeline.tools.bench:bench_protocol", "frame encode/decode and batch signing"),
}
# Parts add their benchmarks here: name -> ("module:function", description)
OPTIONAL: dict[str, tuple[str, str]] = {
    "gateway": ("lifeline.gateway.bench:bench", "end-to-end throughput, alarm latency, drain, RSS (+ paho baseline)"),
    "firmware": ("lifeline.tools.bench:bench_firmware", "node report wake memory under real MicroPython"),
    "rules": ("lifeline.gateway.rules_engine.bench:bench", "rule evaluation cost with 100 rules"),
    "fleet": ("lifeline.sim_devices.bench:bench", "fleet simulator CPU per simulated node-hour"),
    "provisioning": ("lifeline.tools.bench:bench_provisioning", "time per device against the emulated ESP32"),
    "crypto_suites": ("lifeline.tools.bench_suites:bench",
                      "node frame suites intl vs sm: gateway MIC verifications/s, device time and heap per frame"),
    "platform-store": ("lifeline.tools.platform.store_bench:bench",
                       "PostgreSQL store ingest + CPU per 1k readings (+ raw COPY baseline), queries at 10M readings"),
    "ingest": ("lifeline.tools.platform.bench_nats:bench",
               "gateways -> MQTT -> 3-node NATS JetStream -> 1/2/3 sink processes -> store (+ engine/store baselines)"),
    "keys": ("lifeline.gateway.bench_keys:bench",
             "key storage: SoftHSM2 vs file signing, KEK unwrap rates, registry load with wrapped keys"),
    "batch_suites": ("lifeline.tools.bench_batchsig:bench",
                     "batch signatures/verifications per suite (Ed25519 vs SM2), x5chain size and chain check cost"),
}


def available() -> dict[str, tuple[str, str]]:
    """Benchmarks whose module exists in this checkout."""
    out = dict(BENCHMARKS)
    for name, (target, desc) in OPTIONAL.items():
        module = target.split(":")[0]
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            out[name] = (target, desc)
    return out


def load(target: str) -> Callable[[BenchContext], list[Figure]]:
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn  # type: ignore[no-any-return]


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# ---------------------------------------------------------------- baselines


def bench_baselines(ctx: BenchContext) -> list[Figure]:
    """Raw SQLite on this disk: one fsync'd commit per row, and many rows per commit (WAL, synchronous=FULL)."""
    if ctx.baselines:
        return list(ctx.baselines)
    fd, name = tempfile.mkstemp(prefix="baseline-", suffix=".sqlite", dir=ctx.workdir)
    os.close(fd)
    path = Path(name)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, dev BLOB, fcnt INTEGER, body BLOB)")
    row = (os.urandom(8), 1, os.urandom(40))
    n_commits = ctx.scale(2000, 300)
    with timer() as t:
        for _ in range(n_commits):
            db.execute("BEGIN")
            db.execute("INSERT INTO t (dev, fcnt, body) VALUES (?, ?, ?)", row)
            db.execute("COMMIT")
    commits = rate(n_commits, t())
    n_rows = ctx.scale(500_000, 50_000)
    group = 1000
    with timer() as t:
        for _ in range(n_rows // group):
            db.execute("BEGIN")
            db.executemany("INSERT INTO t (dev, fcnt, body) VALUES (?, ?, ?)", [row] * group)
            db.execute("COMMIT")
    rows = rate(n_rows, t())
    db.close()
    ctx.baselines = [
        Figure("baselines", "sqlite_commit_rate", commits, "commits/s", note="1 row per fsync'd commit"),
        Figure("baselines", "sqlite_group_commit_rows", rows, "rows/s", note=f"{group} rows per fsync'd commit"),
    ]
    return list(ctx.baselines)


# ---------------------------------------------------------------- protocol


def bench_protocol(ctx: BenchContext) -> list[Figure]:
    from lifeline.protocols import batch, fastpath, frame, keys, schema

    root, dev = os.urandom(32), os.urandom(8)
    node = frame.derive_keys(root, dev)
    meter = frame.encode(node, dev, 1, 1, schema.K_WATER_METER, {1: 123456, 2: 30, 3: 0, 15: 3600})
    level = frame.encode(node, dev, 1, 1, schema.K_WATER_LEVEL, {1: 312, 2: 85, 15: 3400})
    n = ctx.scale(200_000, 20_000)
    figures = []
    for name, data in (("decode_fast_encrypted", meter), ("decode_fast_clear", level)):
        with timer() as t:
            for _ in range(n):
                fastpath.decode(data, node)
        figures.append(Figure("protocol", name, t() / n * 1e6, "us/frame", better="lower"))
    m = ctx.scale(5_000, 1_000)
    with timer() as t:
        for _ in range(m):
            frame.decode(meter, node)
    figures.append(Figure("protocol", "decode_reference_encrypted", t() / m * 1e6, "us/frame", better="lower",
                          note="device-side code on CPython (pure AES)"))
    with timer() as t:
        for i in range(m):
            frame.encode(node, dev, i, 1, schema.K_WATER_LEVEL, {1: 312, 2: 85, 15: 3400})
    figures.append(Figure("protocol", "encode_reference_clear", t() / m * 1e6, "us/frame", better="lower"))

    signer = batch.BatchSigner(keys.generate(), "gw-bench")
    rec = batch.BatchRecord(device_id=dev, fcnt=1, node_time=1, rx_ms=1, kind=schema.K_WATER_LEVEL,
                            fields={1: 312, 2: 85, 15: 3400}, data_class=0,
                            receptions=(batch.WireReception("nbiot", "nb0", 1, -90, 5),))
    records = [rec] * 1000
    batches = ctx.scale(200, 20)
    with timer() as t:
        for _ in range(batches):
            signer.sign(records, lane=0, created_ms=1)
    figures.append(Figure("protocol", "batch_sign_rate", rate(batches * len(records), t()), "records/s",
                          note="1000 records per COSE_Sign1 encoded and signed (one Ed25519 signature)"))
    encoded = [batch.encode_record(rec)] * 1000
    with timer() as t:
        for _ in range(batches):
            signer.sign_encoded(encoded, lane=0, created_ms=1)
    figures.append(Figure("protocol", "batch_sign_encoded_rate", rate(batches * len(encoded), t()), "records/s",
                          note="the gateway's path: records encoded once when buffered, then concatenated"))
    with timer() as t:
        for _ in range(m):
            batch.encode_record(rec)
    figures.append(Figure("protocol", "encode_record", t() / m * 1e6, "us/record", better="lower"))
    return figures


# ---------------------------------------------------------------- parts measured by their own modules


def bench_firmware(ctx: BenchContext) -> list[Figure]:
    """One report wake per node kind under the real MicroPython WebAssembly build (.mpy code)."""
    from lifeline.sim_devices import fw_memory

    figures = []
    kinds = ["smoke", "water_level"] if ctx.quick else ["smoke", "tilt", "water_level", "water_meter",
                                                        "gas_meter", "electricity_meter"]
    for kind in kinds:
        m = fw_memory.measure(kind)
        figures.append(Figure("firmware", f"heap_in_use_{kind}", m.firmware_in_use / 1024, "KiB", better="lower",
                              budget=fw_memory.BUDGET_IN_USE / 1024,
                              note="after gc.collect(), firmware + protocol modules, one LoRa report wake"))
        figures.append(Figure("firmware", f"alloc_per_wake_{kind}", m.cycle_alloc / 1024, "KiB", better="lower",
                              note="bytes allocated during the wake with gc disabled"))
    return figures


def bench_provisioning(ctx: BenchContext) -> list[Figure]:
    from lifeline.provisioning import bench as prov

    size = 300_000 if ctx.quick else 1_500_000
    workdir = ctx.workdir / "provisioning"
    workdir.mkdir(parents=True, exist_ok=True)
    r = prov.measure(size, workdir=workdir)
    return [
        Figure("provisioning", "emulated_device_s", r.wall_s, "s", better="lower",
               note=f"{size:,} B image at {r.baud:,} baud against the emulated ESP32 (pty), all steps"),
        Figure("provisioning", "expected_real_device_s", r.formula_s, "s", better="lower",
               note="serial transfer + ESP32 flash erase/write rates from the datasheet (docs/technician.md)"),
    ]


# ---------------------------------------------------------------- command


def run(names: Sequence[str], ctx: BenchContext, console: Console | None) -> list[Figure]:
    table = available()
    figures: list[Figure] = []
    for name in names:
        target, desc = table[name]
        if console is not None:
            with console.status(f"[bold]bench {name}[/]: {desc}"):
                figures.extend(load(target)(ctx))
        else:
            figures.extend(load(target)(ctx))
    return figures


def render(figures: Sequence[Figure], console: Console) -> None:
    table = Table(title="lifeline bench")
    for col in ("bench", "figure", "value", "unit", "budget", "ok"):
        table.add_column(col, no_wrap=True)
    table.add_column("baseline / note")
    by_name = {f.name: f for f in figures}
    for f in figures:
        ok = f.within_budget
        budget = "" if f.budget is None else ("≥ " if f.better == "higher" else "≤ ") + f"{f.budget:,.6g}"
        base = ""
        if f.baseline and f.baseline in by_name:
            b = by_name[f.baseline]
            base = f"{f.baseline} = {b.value:,.6g} {b.unit}"
        note = "; ".join(x for x in (base, f.note) if x)
        table.add_row(f.bench, f.name, f"{f.value:,.6g}", f.unit, budget,
                      "" if ok is None else ("[green]yes[/]" if ok else "[red]NO[/]"), note)
    console.print(table)


@click.command()
@click.option("--only", "only", multiple=True, help="Run only these benchmarks (repeatable).")
@click.option("--quick", is_flag=True, help="Smaller sizes (smoke run; budgets still reported).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON to this file.")
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and exit.")
def bench(only: tuple[str, ...], quick: bool, as_json: bool, out: Path | None, list_only: bool) -> None:
    """Measure throughput, latency and memory; exit 1 when a budget is missed."""
    table = available()
    if list_only:
        for name, (_, desc) in table.items():
            click.echo(f"{name:14} {desc}")
        return
    unknown = [n for n in only if n not in table]
    if unknown:
        raise click.UsageError(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    names = list(only) if only else list(table)
    ctx = BenchContext(quick=quick)
    console = None if as_json else Console(width=max(Console().width, 150))
    figures = run(names, ctx, console)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "quick": quick,
        "figures": [asdict(f) | {"within_budget": f.within_budget} for f in figures],
    }
    if out is not None:
        out.write_text(json.dumps(doc, indent=1))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        assert console is not None
        render(figures, console)
    if any(f.within_budget is False for f in figures):
        sys.exit(1)
