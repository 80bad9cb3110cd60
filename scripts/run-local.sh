#!/usr/bin/env bash
# `make run`: the appliance on examples/run/tibet-twin.yaml with everything it needs around it,
# so a newcomer sees the live status page in one command:
#   - `tibet-twin simulate` as the crane's PLC (maps/crane-01.yaml, 127.0.0.1:1502),
#   - `tibet-twin run` (interlock 127.0.0.1:5020, twin feed 127.0.0.1:7502, HTTP 127.0.0.1:9102),
#   - scripts/twin_sender.py as the digital twin, agreeing with the simulated PLC.
# The audit key and chain go to .build/run/. Ctrl-C (SIGINT) or SIGTERM stops all three.
# TIBET_TWIN_BIN picks the binary (default .build/debug/tibet-twin).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TIBET_TWIN_BIN:-.build/debug/tibet-twin}
config=examples/run/tibet-twin.yaml
state=.build/run
[ -x "$bin" ] || { echo "run: $bin is not built (make build)" >&2; exit 2; }

mkdir -p "$state"
[ -e "$state/guard.key" ] || "$bin" keygen "$state/guard.key" >/dev/null

pids=()
stop() {
    trap - INT TERM EXIT
    echo "run: stopping" >&2
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    # tibet-twin run serves permits as 0 for its stop grace (2 s), then closes the audit chain.
    for _ in $(seq 100); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# The PLC: keeps serving after the end of its input (commands would come on stdin).
"$bin" simulate --map maps/crane-01.yaml </dev/null &
pids+=($!)
"$bin" run --config "$config" &
pids+=($!)
python3 scripts/twin_sender.py --tcp 127.0.0.1:7502 --device crane-01 \
    position_x=0 load_kg=0 hoist_locked=0 wind_speed=0 &
pids+=($!)

url=http://127.0.0.1:9102/
for _ in $(seq 300); do
    curl -fsS -o /dev/null "${url}healthz" 2>/dev/null && break
    kill -0 "${pids[1]}" 2>/dev/null || { echo "run: the appliance did not start (see above)" >&2; exit 1; }
    sleep 0.1
done
cat <<TEXT

  The appliance is running on $config.
  Status page:  $url        (JSON: ${url}status, metrics: ${url}metrics)
  Permit coils: mbpoll -m tcp -p 5020 -a 1 -t 0 -r 1 -c 4 127.0.0.1
  Audit chain:  $bin audit show $state/audit
  Ctrl-C stops everything.

TEXT
# Until one of them ends (or Ctrl-C).
wait -n "${pids[@]}" || true
