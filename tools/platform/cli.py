"""Store maintenance subcommands of ``lifeline platform-sink``: ``migrate``, ``devices import``, ``retention``.

Exit codes: 0 ok, 1 something was refused (bad device lines), 2 usage error, 3 store unreachable or
refused (the message names the store URL without its password).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from lifeline.tools.platform.store import StoreError


def _pg(url: str) -> Any:
    if not url.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("this needs a postgresql:// store (the SQLite store upgrades itself on open)",
                                 param_hint="--store")
    try:
        from lifeline.tools.platform.pg_store import PgStore
    except ImportError as e:
        _fail(StoreError(f"the PostgreSQL store needs psycopg ({e}): pip install 'lifeline[platform]'"))
    return PgStore


def _out(as_json: bool, obj: Mapping[str, Any]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    else:
        for k, v in obj.items():
            click.echo(f"{k}: {v}")


def _fail(e: Exception) -> NoReturn:
    click.echo(f"error: {e}", err=True)
    sys.exit(3)


@click.command("migrate")
@click.option("--store", "store_url", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
@click.option("--to", "target", type=click.IntRange(1), default=None, help="Stop at this schema version.")
@click.option("--days-ahead", type=click.IntRange(0, 366), default=7, show_default=True,
              help="Create the daily reading partitions up to this many days ahead.")
@click.option("--json", "as_json", is_flag=True)
def migrate_cmd(store_url: str, target: int | None, days_ahead: int, as_json: bool) -> None:
    """Create or upgrade the PostgreSQL schema in place (versioned, idempotent) and create partitions."""
    _pg(store_url)
    import psycopg

    from lifeline.tools.platform import pg_store

    now = time.time_ns() // 1_000_000
    try:
        with psycopg.connect(store_url, autocommit=True, connect_timeout=10) as conn:
            before = pg_store.applied_versions(conn)
            done = pg_store.migrate(conn, target or pg_store.SCHEMA_VERSION, now)
            created: list[str] = []
            if (target or pg_store.SCHEMA_VERSION) >= 1:
                today = now // pg_store.DAY_MS
                created = pg_store.ensure_partitions(conn, range(today - 1, today + days_ahead + 1))
            after = pg_store.applied_versions(conn)
    except psycopg.Error as e:
        _fail(StoreError(f"{pg_store.safe_url(store_url)}: {str(e).splitlines()[0] if str(e) else e}"))
    except StoreError as e:
        _fail(e)
    _out(as_json, {"store": pg_store.safe_url(store_url), "from_version": before[-1] if before else 0,
                   "applied": done, "version": after[-1] if after else 0, "partitions_created": created})


@click.group("devices")
def devices_group() -> None:
    """The platform's device registry (spatial units for the queries)."""


@devices_group.command("import")
@click.option("--store", "store_url", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def devices_import_cmd(store_url: str, files: tuple[Path, ...], as_json: bool) -> None:
    """Import provisioning records (JSON lines; root keys are not stored) into the store's device table."""
    from lifeline.tools.platform.devices import DeviceFileError, read_file

    cls = _pg(store_url)
    parsed = []
    for f in files:
        try:
            parsed.append((f, read_file(f)))
        except DeviceFileError as e:
            _fail(e)
    now = time.time_ns() // 1_000_000
    try:
        store = cls(store_url)
    except StoreError as e:
        _fail(e)
    problems = []
    imported = revoked = 0
    try:
        for f, p in parsed:
            imported += store.import_devices(p.devices, now)
            revoked += sum(1 for d in p.revoked if store.revoke_device(d, now))
            problems += [f"{f}:{line}: {why}" for line, why in p.problems]
    except StoreError as e:
        _fail(e)
    finally:
        store.close()
    _out(as_json, {"imported": imported, "revoked": revoked, "refused": len(problems), "problems": problems})
    sys.exit(1 if problems else 0)


@click.command("retention")
@click.option("--store", "store_url", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
@click.option("--keep-days", type=click.IntRange(1), required=True, help="Drop reading partitions older than this.")
@click.option("--json", "as_json", is_flag=True)
def retention_cmd(store_url: str, keep_days: int, as_json: bool) -> None:
    """Drop whole daily reading partitions (and their dedupe keys) older than --keep-days."""
    cls = _pg(store_url)
    try:
        store = cls(store_url)
    except StoreError as e:
        _fail(e)
    try:
        dropped = store.drop_partitions_before(time.time_ns() // 1_000_000 - keep_days * 86_400_000)
    except StoreError as e:
        _fail(e)
    finally:
        store.close()
    _out(as_json, {"dropped": dropped})



COMMANDS = (migrate_cmd, devices_group, retention_cmd)
