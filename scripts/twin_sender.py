#!/usr/bin/env python3
"""A small digital twin for trying the appliance: sends one twin feed line (docs/twin-feed.md)
for a device every 50 ms to a unix socket or a TCP feed, reconnecting when the appliance is not
there yet or restarts. Standard library only.

  twin_sender.py (--unix PATH | --tcp HOST:PORT) --device D [--status S] [NAME=VALUE ...]

The values must agree with what the PLC reports (within each register's tolerance) for the
permits to rise; `tibet-twin simulate` starts with status operational and every value 0.
Prints `connected` on each (re)connection; stops on SIGINT/SIGTERM or end of its stdin with --stdin.
"""
import argparse, datetime, json, signal, socket, sys, time

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH")
    where.add_argument("--tcp", metavar="HOST:PORT")
    ap.add_argument("--device", required=True)
    ap.add_argument("--status", default="operational")
    ap.add_argument("--period-ms", type=int, default=50)
    ap.add_argument("values", nargs="*", metavar="NAME=VALUE")
    a = ap.parse_args()
    values = {}
    for v in a.values:
        name, _, text = v.partition("=")
        values[name] = float(text)
    # A parent may have blocked these (a test harness does); the twin must stop on them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock, seq, warned = None, int(time.time() * 1000), False
    while True:
        try:
            if sock is None:
                if a.unix:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(a.unix)
                else:
                    host, _, port = a.tcp.rpartition(":")
                    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=1)
                print("connected", flush=True)
                warned = False
            seq += 1
            ts = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            line = json.dumps({"device": a.device, "ts": ts, "seq": seq, "status": a.status, "values": values})
            sock.sendall((line + "\n").encode())
        except OSError as e:
            if not warned:
                print(f"twin_sender: {a.unix or a.tcp}: {e.strerror or e}; retrying", file=sys.stderr, flush=True)
                warned = True
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(a.period_ms / 1000)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
