#!/usr/bin/env bash
# Installs what tibet-twin needs on a fresh Debian machine, idempotently:
#   - libmodbus-dev (the C library the poller and interlock server use) and pkg-config
#   - mbpoll (an outside Modbus client the tests use as a second opinion)
#   - systemd (systemd-analyze and systemd-sysusers check the unit file; nothing is started)
#   - curl (an outside HTTP client the tests use beside our own)
#   - openssl (the TLS tests make a throwaway CA and certificates with it)
#   - a Python venv in .venv with a pinned pymodbus (an outside Modbus peer for tests)
# Run by `make demo`, `make test` and `make bench`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYMODBUS_VERSION=3.8.6
need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in libmodbus-dev pkg-config mbpoll python3-venv systemd curl openssl; do
    have_pkg "$p" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need_apt[*]} (apt)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "${TIBET_SKIP_PY:-0}" != "1" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv" >&2
        python3 -m venv .venv
    fi
    if ! .venv/bin/python -c "import pymodbus, sys; sys.exit(0 if pymodbus.__version__ == '$PYMODBUS_VERSION' else 1)" 2>/dev/null; then
        echo "setup: installing pymodbus==$PYMODBUS_VERSION into .venv" >&2
        .venv/bin/pip install -q --disable-pip-version-check "pymodbus==$PYMODBUS_VERSION"
    fi
fi
