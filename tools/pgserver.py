"""A real PostgreSQL server in a temporary directory on a free loopback port, for tests and the bench.

:class:`PgServer` runs Debian's ``initdb`` and ``postgres`` (found on ``PATH`` or under
``/usr/lib/postgresql/*/bin``, newest first), listening on 127.0.0.1 only with a Unix socket in its own
directory (never the system instance on 5432). Authentication is ``trust`` for loopback: a throw-away
cluster for tests, not a deployment.

PostgreSQL refuses to run as root (``initdb`` and ``postgres`` both exit). When the tests run as root the
cluster lives in a fresh ``/tmp/lifeline-pg-*`` directory owned by an unprivileged account (``postgres``,
which Debian's package creates, else ``nobody``) and every PostgreSQL process is started as that account
(``subprocess`` ``user=``/``group=``); the directory is removed on :meth:`close`. As a normal user nothing
changes hands.

``stop(fast=True)`` is ``pg_ctl stop -m fast`` (SIGINT: abort open transactions, checkpoint, exit);
``start()`` again brings the same cluster back on the same port. The postmaster asks the kernel for SIGKILL
when its parent dies, so a crashed test run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lifeline.tools.broker import LOOPBACK, _die_with_parent, free_port, port_accepts


class PgServerError(RuntimeError):
    """initdb/postgres missing, refused, or not ready in time; the message carries the log tail."""


def find_pg_bin(name: str = "initdb") -> Path:
    """A PostgreSQL server program: ``PATH`` first, then the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    def version(d: str) -> int:
        v = Path(d).parent.name
        return int(v) if v.isdigit() else 0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    raise PgServerError(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)")


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise PgServerError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class PgServer:
    """One PostgreSQL cluster (superuser ``lifeline``, database ``lifeline``) on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None, durable: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        self._as = _run_as()
        self._own_dir = workdir is None or self._as is not None
        if self._own_dir:
            self.workdir = Path(tempfile.mkdtemp(prefix="lifeline-pg-"))
        else:
            assert workdir is not None
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.data = self.workdir / "data"
        # a Unix socket path must fit in 107 bytes: a pytest tmp_path of a long test name does not
        self.socket_dir = Path(tempfile.mkdtemp(prefix="llpg-"))
        self.log_path = self.workdir / "postgres.log"
        self.host = LOOPBACK
        self.port = port or free_port()
        self.user = "lifeline"
        self.dbname = "lifeline"
        self.durable = durable
        self.settings = dict(settings or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialised = False
        self.starts = 0

    # ----------------------------------------------------------------------------------- helpers

    def _spawn_kw(self) -> dict[str, object]:
        kw: dict[str, object] = {"preexec_fn": _die_with_parent}
        if self._as is not None:
            kw["user"], kw["group"] = self._as
            kw["extra_groups"] = []
        return kw

    def _chown(self, path: Path) -> None:
        if self._as is not None:
            os.chown(path, *self._as)

    def _init(self) -> None:
        self.workdir.chmod(0o700)
        self._chown(self.workdir)
        self.socket_dir.chmod(0o700)
        self._chown(self.socket_dir)
        r = subprocess.run(
            [str(find_pg_bin("initdb")), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, cwd=self.workdir, timeout=120, **self._spawn_kw(),  # type: ignore[call-overload]
        )
        if r.returncode != 0:
            raise PgServerError(f"initdb failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
        self._initialised = True

    def _args(self) -> list[str]:
        conf = {"listen_addresses": LOOPBACK, "port": str(self.port), "unix_socket_directories": str(self.socket_dir),
                "max_connections": "100", "shared_buffers": "128MB", "log_min_messages": "warning",
                "max_wal_size": "2GB"}
        if not self.durable:  # tests only: a crash of the machine may lose data, a crash of postgres does not
            conf.update({"fsync": "off", "full_page_writes": "off"})
        conf.update(self.settings)
        args = [str(find_pg_bin("postgres")), "-D", str(self.data)]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}"]
        return args

    # --------------------------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def start(self, timeout_s: float = 60.0) -> PgServer:
        if self.is_running():
            return self
        if not self._initialised:
            self._init()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._chown(self.log_path)
        try:
            self._proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir, **self._spawn_kw())  # type: ignore[call-overload]
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None:
                raise PgServerError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise PgServerError(f"postgres not ready within {timeout_s}s: {self.log_tail()}")
            time.sleep(0.05)
        if self.starts == 0:
            self._create_db()
        self.starts += 1
        return self

    def _ready(self) -> bool:
        if not port_accepts(self.host, self.port):
            return False
        r = subprocess.run([str(find_pg_bin("pg_isready")), "-h", self.host, "-p", str(self.port), "-U", self.user,
                            "-d", "postgres", "-t", "1"], capture_output=True, timeout=10)
        return r.returncode == 0

    def _create_db(self) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname=%s", (self.dbname,)).fetchone() is None:
                c.execute(f'CREATE DATABASE "{self.dbname}"')

    def stop(self, fast: bool = True, timeout_s: float = 60.0) -> None:
        """``pg_ctl stop -m fast`` (or ``-m smart``), then reap the postmaster."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            r = subprocess.run([str(find_pg_bin("pg_ctl")), "stop", "-D", str(self.data), "-m",
                                "fast" if fast else "smart", "-w", "-t", str(int(timeout_s))],
                               capture_output=True, timeout=timeout_s + 10, **self._spawn_kw())  # type: ignore[call-overload]
            if r.returncode != 0 and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash: the next start runs crash recovery)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self, fast: bool = True) -> PgServer:
        self.stop(fast=fast)
        return self.start()

    def close(self) -> None:
        with contextlib.suppress(PgServerError, subprocess.SubprocessError, OSError):
            self.stop()
        self.kill()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgServer({self.url}, pid={self.pid})"
