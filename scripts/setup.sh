#!/usr/bin/env bash
# Installs what tibet-twin needs on a fresh Debian machine, idempotently:
#   - libmodbus-dev (the C library the poller and interlock server use) and pkg-config
#   - mbpoll (an outside Modbus client the tests use as a second opinion)
#   - systemd (systemd-analyze and systemd-sysusers check the unit file; nothing is started)
#   - curl (an outside HTTP client the tests use beside our own)
#   - openssl (the TLS tests make a throwaway CA and certificates with it)
#   - socat (a pseudo-terminal pair stands in for an RS-485 line in the Modbus RTU tests)
#   - libmosquitto-dev (the MQTT client library), mosquitto + mosquitto-clients (a real broker
#     and mosquitto_pub/_sub/_passwd for the MQTT tests)
#   - chromium (renders the status page headless in a test), prometheus (promtool checks the
#     shipped alert rules)
#   - a Python venv in .venv with pinned outside peers for tests: pymodbus (Modbus), pyserial
#     (Modbus RTU), paho-mqtt (MQTT), asyncua (OPC UA)
# Run by `make demo`, `make test` and `make bench`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned outside peers for the tests, as name==version.
PY_PEERS=(pymodbus==3.8.6 pyserial==3.5 paho-mqtt==2.1.0 asyncua==2.1.0)
need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in libmodbus-dev pkg-config mbpoll python3-venv systemd curl openssl socat \
         libmosquitto-dev mosquitto mosquitto-clients chromium prometheus; do
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
    # One pip call for whatever is missing or at another version; a second run installs nothing.
    missing=$(.venv/bin/python - "${PY_PEERS[@]}" <<'PY'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        if metadata.version(name) == version:
            continue
    except metadata.PackageNotFoundError:
        pass
    print(pin)
PY
)
    if [ -n "$missing" ]; then
        echo "setup: installing $(echo $missing) into .venv" >&2
        # shellcheck disable=SC2086
        .venv/bin/pip install -q --disable-pip-version-check $missing
    fi
fi
