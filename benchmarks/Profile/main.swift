// `tibet-twin-profile WORKLOAD [N]`: one hot path, synchronously on the main thread, for
// `valgrind --tool=callgrind` (instruction counts are repeatable on a noisy machine, where
// timings are not; docs/benchmarks.md). valgrind cannot follow the bench binary's async main,
// so the workloads live here, in plain code with the same inputs as GuardBench.
//
//   check  SyncGuard.check(device:intent:) on one crane (evaluate, explain, token, SHA-256, ring)

import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A fixed wall time moving 100 ns per reading, as in GuardBench: every check takes the full
/// passing path.
final class StepClock: TimeSource, @unchecked Sendable {
    var ns: Int64 = 1_795_703_520_000_000_000
    func now() -> ClockReading {
        ns += 100
        return ClockReading(monotonicNs: ns, wallNs: ns)
    }
}

func checks(_ n: Int) -> Int {
    let g = SyncGuard(maxDriftMs: 200, valueTolerances: ["crane-0": ["position_x": 0.5, "load_kg": 100]],
                      node: "bench", host: "bench", clock: StepClock())
    g.updatePhysical(device: "crane-0", status: "operational",
                     values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    g.updateTwin(device: "crane-0", status: "operational",
                 values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    var allowed = 0
    for _ in 0..<n where g.check(device: "crane-0", intent: "move_left").allowed { allowed += 1 }
    return allowed
}

let args = CommandLine.arguments.dropFirst()
let n = args.dropFirst().first.flatMap { Int($0) } ?? 20_000
switch args.first {
case "check":
    let allowed = checks(n)
    print("check: \(n) checks, \(allowed) allowed")
    exit(allowed == n ? 0 : 1)
case "token":
    let g = SyncGuard(maxDriftMs: 200, valueTolerances: ["crane-0": ["position_x": 0.5, "load_kg": 100]],
                      node: "bench", host: "bench", clock: StepClock())
    g.updatePhysical(device: "crane-0", status: "operational", values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    g.updateTwin(device: "crane-0", status: "operational", values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
    _ = g.check(device: "crane-0", intent: "move_left")
    _ = g.check(device: "crane-0", intent: "move_left")
    let t = g.exportAudit().last!
    print(t.json.canonical)
    print(t.hashedBytes.count)
default:
    print("usage: tibet-twin-profile check [N]")
    exit(2)
}
