"""The seed's SyncGuard.check() (tibet-twin 0.1.1), measured for GuardBench with the same inputs
as the Swift figures: one crane (or 1,000), three values, two with tolerances, checks of
"move_left" round-robin over the devices, one thread. Prints `RATE <devices> <checks/s>` lines
for the bench and human-readable lines."""
import gc
import os
import sys
import time
from datetime import datetime, timedelta, timezone

from tibet_twin import PhysicalState, SyncGuard, TwinState

VALUES = {"position_x": 12.5, "position_y": 8.3, "load_kg": 2500.0}


def setup(n):
    tol = {f"crane-{i}": {"position_x": 0.5, "load_kg": 100.0} for i in range(n)}
    g = SyncGuard(max_drift_ms=200, value_tolerances=tol)
    now = datetime.now(timezone.utc)
    for i in range(n):
        d = f"crane-{i}"
        g.update_physical(d, PhysicalState(device_id=d, timestamp=now.isoformat(), values=dict(VALUES),
                                           status="operational"))
        g.update_twin(d, TwinState(device_id=d, timestamp=(now - timedelta(milliseconds=20)).isoformat(),
                                   values=dict(VALUES), status="operational"))
    return g


def bench(n, total):
    g = setup(n)
    names = [f"crane-{i}" for i in range(n)]
    allowed = 0
    t0 = time.perf_counter()
    for k in range(total):
        if g.check(names[k % n], "move_left").allowed:
            allowed += 1
    dt = time.perf_counter() - t0
    assert allowed == total, allowed
    return total / dt


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


print(f"Python {sys.version.split()[0]}, best of 3 runs of 50k checks")
for n in (1, 1000):
    r = max(bench(n, 50_000) for _ in range(3))
    gc.collect()
    print(f"RATE {n} {r:.1f}")
    print(f"{n:5d} device(s)  {r / 1000:.1f}k/s  ({1e6 / r:.2f} µs each)")

g = setup(1)
for _ in range(1000):
    g.check("crane-0", "move_left")
a = rss()
for _ in range(100_000):
    g.check("crane-0", "move_left")
b = rss()
print(f"memory: RSS +{(b - a) / 100_000:.0f} bytes per check over 100k checks (the token list is never trimmed)")
