import Dispatch
import Foundation
import TibetTwin

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

// Test support for the appliance tests; what all test targets share is in TestSupport.

/// The crane map of docs/register-maps.md, built in code, pointed at `port`.
/// A generous default timeout: tests about timeouts pass their own; the rest must not flake under load.
func craneMap(port: Int, pollMs: Int = 50, timeoutMs: Int = 1000, maxGap: Int = 16) -> DeviceMap {
    DeviceMap(
        device: "crane-01", profile: .port,
        plc: PLCEndpoint(host: "127.0.0.1", port: port, unit: 1, pollMs: pollMs, timeoutMs: timeoutMs, maxGap: maxGap),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        identity: [IdentitySpec(register: RegisterSpec(name: "serial", address: 9000, type: .uint32), expect: .uint(4711))],
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                           values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
        registers: [
            RegisterSpec(name: "position_x", address: 100, type: .float32, unit: "m", tolerance: 0.5),
            RegisterSpec(name: "load_kg", address: 102, type: .uint32, order: .CDAB, unit: "kg", tolerance: 100),
            RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
            RegisterSpec(name: "wind_speed", table: .input, address: 4, type: .int16, scale: 0.1, unit: "m/s"),
        ],
        intents: [IntentSpec(name: "move_left", coil: 0)])
}

/// Collects what a poller delivers and lets a test wait for a state it wants.
final class StateLog: @unchecked Sendable {
    private let cond = NSCondition()
    private var states: [PhysicalState] = []

    func put(_ s: PhysicalState) { cond.lock(); states.append(s); cond.broadcast(); cond.unlock() }

    var all: [PhysicalState] { cond.lock(); defer { cond.unlock() }; return states }
    var count: Int { cond.lock(); defer { cond.unlock() }; return states.count }

    /// The first state from index `from` on that satisfies `ok`, waiting up to `timeoutMs`
    /// (a generous liveness bound, never a measurement).
    @discardableResult
    func wait(from: Int = 0, timeoutMs: Int = 5000, _ ok: (PhysicalState) -> Bool) -> (index: Int, state: PhysicalState)? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock(); defer { cond.unlock() }
        var i = from
        while true {
            while i < states.count {
                if ok(states[i]) { return (i, states[i]) }
                i += 1
            }
            if !cond.wait(until: deadline) { return nil }
        }
    }
}

func value(_ s: PhysicalState, _ name: String) -> Double? { s.values[name]?.value?.number }

