#!/usr/bin/env bash
# One entry for a fresh machine: installs what Lifeline needs, then runs the demo or the tests.
#   tools/bootstrap.sh demo [ARGS...]   set up, then `lifeline demo ARGS...`
#   tools/bootstrap.sh test [PYTEST ARGS...]  set up, then ruff + mypy --strict + pytest
#   tools/bootstrap.sh setup            set up only
# Idempotent: each step checks before it installs.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mode=${1:-setup}
shift || true

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# SM2 batch signatures use the system libcrypto 3 (lifeline/protocols/sm2.py); gmalglib (dev) builds with gcc
ls /usr/lib/*/libcrypto.so.3 /usr/lib/libcrypto.so.3 >/dev/null 2>&1 || need_apt+=(libssl3)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
# NATS cluster with JetStream + MQTT listener for the platform ingest tests and bench (tools/natsserver.py)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || need_apt+=(dpkg)
# PKCS#11 software token for the HSM signing/KEK tests (gateway/tests/test_hsm.py)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
# headless browser for the gateway status page test (gateway/tests/test_statuspage_browser.py)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# PostgreSQL server programs for the platform store tests (tools/pgserver.py starts its own cluster)
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing system packages: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start a system broker / PostgreSQL; the tests start their own on free ports.
fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "Lifeline needs Python >= 3.11 (found $("$py" --version))" >&2; exit 3; }

stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

venv=.venv
want=$(stamp_of pyproject.toml)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.lifeline-stamp" 2>/dev/null)" != "$want" ]; then
  say "creating/updating $venv (pip install -e .[dev])"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e '.[dev]'
  echo "$want" > "$venv/.lifeline-stamp"
fi

# An independent COSE implementation for the tests. pycose 1.1.0 mis-decodes with cbor2 >= 6, so it
# lives in its own venv with a cbor2 it works with; tests call it as a separate process.
cose=.venv-cose
if [ ! -x "$cose/bin/python" ] || ! "$cose/bin/python" -c 'import pycose' >/dev/null 2>&1; then
  say "creating $cose (pycose 1.1.0 + cbor2 5.x, independent COSE verifier)"
  "$py" -m venv "$cose"
  "$cose/bin/python" -m pip install -q 'pycose==1.1.0' 'cbor2>=5.4,<6'
fi

# Real MicroPython (WebAssembly port) for running the device-side code in CI.
mp=tools/micropython
if [ ! -f "$mp/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs" ]; then
  say "installing MicroPython WebAssembly (npm ci in $mp)"
  (cd "$mp" && npm ci --no-audit --no-fund --loglevel=error)
fi

export PATH="$top/$venv/bin:$PATH"
case "$mode" in
  setup) say "ready: . $venv/bin/activate && lifeline --help" ;;
  demo) exec lifeline demo "$@" ;;
  test)
    say "ruff"
    ruff check .
    say "mypy --strict (gateway, protocols, provisioning, tools)"
    # mypy cannot see through setuptools' editable finder; give it the installed layout as symlinks.
    tc=$venv/typecheck/lifeline
    mkdir -p "$tc"
    for part in firmware gateway protocols provisioning hil_tests sim_devices tools; do
      ln -sfn "$top/$part" "$tc/$part"
    done
    MYPYPATH=$venv/typecheck mypy --strict -p lifeline.gateway -p lifeline.protocols \
      -p lifeline.provisioning -p lifeline.tools
    say "pytest"
    exec python -m pytest -q "$@"
    ;;
  *) echo "usage: tools/bootstrap.sh {setup|demo|test} [ARGS...]" >&2; exit 2 ;;
esac
