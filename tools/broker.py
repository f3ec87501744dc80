"""A real Mosquitto broker on a free loopback port, for tests, the demo and the bench.

:class:`MosquittoBroker` runs ``/usr/sbin/mosquitto`` (or the one on ``PATH``) with a generated config in
its own directory: listeners on 127.0.0.1 only, persistence off (unless asked for), anonymous clients
allowed on the plain listener. An optional TLS listener requires a client certificate and uses its common
name as the MQTT username. :class:`TestPKI` makes the CA, server and client certificates for it with ``cryptography``.

The broker can be stopped, restarted on the same port (the gateway must find it again by itself), killed
with SIGKILL and frozen with SIGSTOP (a stalled peer: TCP still accepts, MQTT never answers). The child
asks the kernel for SIGKILL when its parent dies, so a crashed test run leaves no broker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lifeline.tools.serverproc import ServerProcess
from lifeline.tools.serverproc import port_accepts as port_accepts  # re-exported: the other servers use it

LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """The broker could not be found, started or stopped; the message carries the log tail."""


def find_mosquitto() -> Path:
    """Path of the mosquitto executable: ``PATH`` first, then /usr/sbin and /usr/local/sbin."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found on PATH or in /usr/sbin (apt-get install mosquitto)")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate and its private key, both PEM files (mode 0600)."""

    cert: Path
    key: Path


class TestPKI:
    """A throw-away certificate authority: CA, a server certificate for 127.0.0.1/localhost, and client
    certificates whose common name becomes the MQTT username (``use_identity_as_username``).

    Keys are ECDSA P-256 (fast to generate); every file is written with mode 0600.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, *, days: int = 30) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._days = days
        self._now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lifeline test CA")])
        ca_cert = (
            self._builder(ca_name, ca_name, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self._ca_cert = ca_cert
        self.ca = self._store("ca", ca_cert, self._ca_key)
        self.server = self.issue("server", server=True)

    @property
    def ca_cert(self) -> Path:
        return self.ca.cert

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now)
            .not_valid_after(self._now + dt.timedelta(days=self._days))
        )

    def _store(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return CertPair(cert_path, key_path)

    def issue(self, common_name: str, *, server: bool = False) -> CertPair:
        """A new certificate signed by this CA. ``server=True`` adds SANs 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            self._builder(subject, self._ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        stem = "server" if server else f"client-{common_name}"
        return self._store(stem, cert, key)

    def client(self, common_name: str) -> CertPair:
        """A client certificate; Mosquitto takes ``common_name`` as the username."""
        return self.issue(common_name)


# ------------------------------------------------------------------------------------------- broker


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class MosquittoBroker(ServerProcess):
    """One Mosquitto process. Use as a context manager or call :meth:`start` / :meth:`stop`.

    ``port`` is the plain listener (picked free when None); with ``pki`` a second listener on
    ``tls_port`` requires client certificates from that PKI. ``plain=False`` leaves only TLS.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        pki: TestPKI | None = None,
        tls_port: int | None = None,
        plain: bool = True,
        workdir: Path | None = None,
        executable: Path | None = None,
        max_queued_messages: int = 100_000,
        persistence: bool = False,
        extra_config: str = "",
    ) -> None:
        self.host = LOOPBACK
        self.executable = executable or find_mosquitto()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lifeline-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.plain = plain or pki is None
        self._auto_ports = port is None and (pki is None or tls_port is None)
        self.port = port if port is not None else free_port()
        self.tls_port: int | None = None
        if pki is not None:
            self.tls_port = tls_port if tls_port is not None else free_port()
        self._max_queued = max_queued_messages
        self.persistence = persistence
        self._extra = extra_config
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = self.workdir / "mosquitto.log"
        self.starts = 0

    # -------------------------------------------------------------------------------- config

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def _config(self) -> str:
        try:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            user = "root"
        lines = [
            "# generated by lifeline.tools.broker",
            f"user {user}",  # never drop to the 'mosquitto' user: it could not read the 0600 keys
            "per_listener_settings false",
            "allow_anonymous true",
            *(
                # sessions, subscriptions and queued messages survive stop()/restart() (not kill())
                ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 0"]
                if self.persistence
                else ["persistence false"]
            ),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            f"max_queued_messages {self._max_queued}",
            "set_tcp_nodelay true",
        ]
        if self.plain:
            lines += [f"listener {self.port} {self.host}"]
        if self.pki is not None and self.tls_port is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.pki.ca.cert}",
                f"certfile {self.pki.server.cert}",
                f"keyfile {self.pki.server.key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        if self._extra:
            lines.append(self._extra)
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------------------- lifecycle

    error_type = BrokerError
    stop_timeout_s = DEFAULT_STOP_TIMEOUT_S

    def _label(self) -> str:
        return "mosquitto"

    def _ports(self) -> list[int]:
        ports = [self.port] if self.plain else []
        if self.tls_port is not None:
            ports.append(self.tls_port)
        return ports

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> MosquittoBroker:
        """Start and wait (bounded) until every listener accepts connections."""
        if self.is_running():
            return self
        attempts = 3 if self._auto_ports and self.starts == 0 else 1
        for attempt in range(attempts):
            try:
                return self._start_once(timeout_s)
            except BrokerError:
                if attempt == attempts - 1:
                    raise
                # another process took the port between free_port() and mosquitto's bind: pick again
                self.port = free_port()
                if self.tls_port is not None:
                    self.tls_port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> MosquittoBroker:
        self.config_path.write_text(self._config())
        os.chmod(self.config_path, 0o600)
        log = open(self._log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                [str(self.executable), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        pending = self._ports()
        while pending:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with {code} during start:\n{self.log_tail()}")
            if port_accepts(self.host, pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"mosquitto did not listen on {pending} within {timeout_s}s:\n{self.log_tail()}"
                )
            time.sleep(0.01)  # polling a port for readiness, bounded by the deadline
        return self

    def restart(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> MosquittoBroker:
        """Stop and start again on the same port(s)."""
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Stop and remove the generated directory (when this object created it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MosquittoBroker(port={self.port}, tls_port={self.tls_port}, pid={self.pid})"
