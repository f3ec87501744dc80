"""``lifeline gateway init``: a new gateway's files, in one idempotent step.

In ``--dir`` (default /etc/lifeline): ``gateway.toml`` (the annotated starter config from
:mod:`config_template`, validated before it is written; an existing one is kept unless ``force``),
``gateway.key`` (Ed25519 or SM2 per the config's suite, 0600; never replaced: that is ``keygen --force``'s
job), ``status.token`` (the status page token, 0600; never replaced) and ``registry.kek`` (the registry's
key-encryption key, 0600, AES-256-GCM; never replaced: the root keys in the registry are wrapped under it).
With ``owner`` (root only; the Debian package's postinst passes ``lifeline``) the keys, the token and the
state directory belong to that user and the config is ``root:<owner's group> 0640``. Running it again
creates only what is missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from lifeline.gateway import config_template, statuspage
from lifeline.gateway import kek as keywrap
from lifeline.gateway.config import ConfigError, GatewayConfig, parse
from lifeline.protocols import keys

DEFAULT_DIR = Path("/etc/lifeline")
CONFIG_NAME, KEY_NAME, TOKEN_NAME, KEK_NAME = "gateway.toml", "gateway.key", "status.token", "registry.kek"
NOT_SET = "(not set)"  # the id of a config that has none yet (the package's)


class InitError(Exception):
    """init cannot do its job; ``code`` is the CLI exit code (2 usage, 3 environment)."""

    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class InitResult:
    gateway_id: str
    config: Path
    config_written: bool
    key: Path
    key_created: bool
    public_key_hex: str
    token: Path
    token_created: bool
    state_dir: Path
    status_url: str  # without the token
    kek: Path | None = None
    kek_created: bool = False

    def as_json(self) -> dict[str, object]:
        return {"gateway_id": self.gateway_id, "config": str(self.config), "config_written": self.config_written,
                "key": str(self.key), "key_created": self.key_created, "public_key": self.public_key_hex,
                "token": str(self.token), "token_created": self.token_created, "state_dir": str(self.state_dir),
                "kek": str(self.kek) if self.kek else None, "kek_created": self.kek_created,
                "status_url": self.status_url}


def default_gateway_id() -> str:
    """``gw-<hostname>``, reduced to what a gateway id may contain."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "gateway"
    return f"gw-{host}"[:64]


def _write_config(path: Path, text: str, gid: int | None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o640)
    try:
        os.fchmod(fd, 0o640)
        if gid is not None:
            os.fchown(fd, 0, gid)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def init(directory: Path = DEFAULT_DIR, *, gateway_id: str | None = None, state_dir: Path | None = None,
         owner: str | None = None, force: bool = False) -> InitResult:
    """Create what is missing in ``directory``. Raises InitError."""
    uid = gid = None
    if owner is not None:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise InitError(f"no such user {owner!r}", code=2) from None
        uid, gid = pw.pw_uid, pw.pw_gid
        if os.geteuid() != 0:
            raise InitError("--owner needs root (it changes file ownership)")
    directory = directory.absolute()
    cfg_path, key_path, token_path = directory / CONFIG_NAME, directory / KEY_NAME, directory / TOKEN_NAME
    kek_path: Path | None = directory / KEK_NAME
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        written = False
        if force or not cfg_path.exists():
            new_id = gateway_id or default_gateway_id()
            text = config_template.starter(new_id, key_file=key_path, token_file=token_path,
                                           state_dir=state_dir, kek_file=kek_path)
            try:
                parse(text, str(cfg_path))  # what we write must be what `run` accepts
            except ConfigError as e:
                raise InitError(e.reason if e.key == "gateway.id" else str(e), code=2) from None
            _write_config(cfg_path, text, gid)
            written = True
        cfg: GatewayConfig | None
        try:
            cfg = parse(cfg_path.read_text(encoding="utf-8"), str(cfg_path))
        except ConfigError as e:
            if written:
                raise InitError(str(e)) from None
            cfg = None  # an operator's config that does not validate yet (the package's has no id)
        if cfg is not None:  # make the files the config names
            effective_id, effective_state, key_path = cfg.gateway.id, cfg.gateway.state_dir, cfg.gateway.key_file
            token_path = cfg.status_page.token_file or token_path
            kek_path = cfg.keys.kek_file
        else:
            effective_id, effective_state = gateway_id or NOT_SET, state_dir or Path("/var/lib/lifeline")

        key_created = False
        suite = cfg.gateway.suite if cfg is not None else "intl"
        if key_path.exists():
            key = keys.load_signing_key(key_path, suite)
        else:
            key = keys.generate_for(suite)
            keys.save_private_key(key, key_path)
            key_created = True
        token_created = statuspage.create_token_file(token_path)
        statuspage.load_token(token_path)  # an existing one must be usable too
        kek_created = False
        if kek_path is not None:
            if not kek_path.exists():
                keywrap.generate_file(kek_path, "intl")
                kek_created = True
            keywrap.load_file(kek_path)  # an existing one must be usable too
        effective_state.mkdir(mode=0o700, parents=True, exist_ok=True)
        if uid is not None and gid is not None:
            for p in (key_path, token_path, effective_state, *((kek_path,) if kek_path else ())):
                os.chown(p, uid, gid)
    except keys.KeyFileError as e:
        raise InitError(str(e)) from None
    except statuspage.StatusPageError as e:
        raise InitError(str(e)) from None
    except keywrap.KekError as e:
        raise InitError(str(e)) from None
    except OSError as e:
        raise InitError(f"{e.filename or directory}: {e.strerror or e}") from None
    listen, port = "127.0.0.1", 9110
    if cfg is not None:
        listen, port = cfg.status_page.listen, cfg.status_page.port
    host = socket.gethostname() if listen in ("0.0.0.0", "::") else listen
    return InitResult(gateway_id=effective_id, config=cfg_path, config_written=written, key=key_path,
                      key_created=key_created, public_key_hex=keys.public_key_hex(key), token=token_path,
                      token_created=token_created, state_dir=effective_state,
                      status_url=f"http://{host}:{port}/", kek=kek_path, kek_created=kek_created)


def next_steps(r: InitResult, user: str = "lifeline") -> list[str]:
    """What the operator does next, as numbered lines."""
    cfg = r.config
    who = "this gateway" if r.gateway_id == NOT_SET else f"gateway {r.gateway_id}"
    return [
        f"Give the platform operator {who}'s public key: {r.public_key_hex}",
        f"Edit {cfg}: [gateway] id, one [[uplink.endpoints]] per broker (TLS files), one [[ingress]] per radio",
        f"Check it:        lifeline gateway check-config {cfg}",
        f"Import devices:  sudo -u {user} lifeline gateway devices import provisioning.jsonl --config {cfg}",
        "Start it:        sudo systemctl enable --now lifeline-gateway",
        f"Watch it:        lifeline gateway status --config {cfg}",
        f"Phone:           set [status_page] listen to the LAN address, open {r.status_url}?token=<the line in "
        f"{r.token}>",
        *([f"Back up {r.kek} apart from the registry: the device keys are encrypted under it (docs/keys.md)"]
          if r.kek is not None else []),
    ]
