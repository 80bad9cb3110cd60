import Dispatch
import Synchronization
import TibetTwin

/// The interim `tibet-twin demo` (until the guard exists): a simulated PLC for a map on a free
/// loopback port, read back by the poller; values and status changed through the simulator, and
/// the poller seen picking the changes up. The appliance's full crane story replaces it.
public enum PhysicalDemo {
    /// Runs the demo for `map`, printing through `say`. Returns true when every value and the
    /// status read back as set.
    public static func run(map original: DeviceMap, say: @escaping @Sendable (String) -> Void) -> Bool {
        let sim: PLCSimulator
        do {
            sim = try PLCSimulator(maps: [original], host: "127.0.0.1", port: 0)
        } catch {
            say("error: cannot start the simulator: \(error)")
            return false
        }
        defer { sim.stop() }
        var map = original
        map.plc.host = sim.endpoints[0].host
        map.plc.port = sim.endpoints[0].port
        say("simulated PLC for \(map.device) listening on \(map.plc.host):\(map.plc.port) (unit \(map.plc.unit))")

        // First values: something recognisable per type, set through the simulator.
        let first = Dictionary(uniqueKeysWithValues: map.registers.enumerated().map { ($1.name, demoValue($1, step: $0 + 1)) })
        let second = Dictionary(uniqueKeysWithValues: map.registers.enumerated().map { ($1.name, demoValue($1, step: $0 + 2)) })
        let otherStatus = map.status.values.sorted { $0.key < $1.key }.first { $0.value != "operational" }?.value

        do {
            for r in map.registers { try sim.execute("set \(r.name) \(first[r.name]!)") }
        } catch {
            say("error: \(error)")
            return false
        }

        let latest = LatestState()
        let poller = Poller(maps: [map]) { latest.put($0) }
        do { try poller.start() } catch {
            say("error: \(error)")
            return false
        }
        defer { poller.stop() }
        say("poller: every \(map.plc.pollMs) ms, \(ReadPlan(map: map).groups.count) requests per poll")

        guard let s1 = latest.wait(timeoutMs: 5000, until: { matches($0, map: map, values: first, status: "operational") }) else {
            say("FAIL: the poller did not read back the first values within 5 s")
            if let s = latest.current { say(ReadReport.text(s, map: map)) }
            return false
        }
        say("\nread back:")
        say(ReadReport.text(s1, map: map))

        do {
            for r in map.registers { try sim.execute("set \(r.name) \(second[r.name]!)") }
            if let otherStatus { try sim.execute("status \(otherStatus)") }
        } catch {
            say("error: \(error)")
            return false
        }
        say("changed through the simulator: " + map.registers.map { "\($0.name)=\(second[$0.name]!)" }.joined(separator: " ")
            + (otherStatus.map { " status=\($0)" } ?? ""))
        guard let s2 = latest.wait(timeoutMs: 5000, until: {
            matches($0, map: map, values: second, status: otherStatus ?? "operational")
        }) else {
            say("FAIL: the poller did not see the change within 5 s")
            if let s = latest.current { say(ReadReport.text(s, map: map)) }
            return false
        }
        say("\nthe poller saw it:")
        say(ReadReport.text(s2, map: map))
        let stats = poller.stats()
        say("polls \(stats.polls), good \(stats.goodPolls), requests \(stats.requests), "
            + "poll latency p99 ≤ \(stats.latency.quantileUpperBoundMs(0.99).map { "\($0)" } ?? "-") ms")
        return true
    }

    /// A value for register `r` that differs per `step` and survives the register's type and scale.
    static func demoValue(_ r: RegisterSpec, step: Int) -> String {
        if r.bit != nil || r.table.isBitTable || r.type == .bool { return step % 2 == 1 ? "true" : "false" }
        switch r.type {
        case .string: return "demo\(step)"
        case .float32, .float64: return "\(Double(step) * 10 + 0.5)"
        default:
            // Integral in raw units, so scale/offset round-trip exactly.
            let raw = Double(step * 100)
            let v = raw * r.scale + r.offset
            return r.isScaled ? "\(v)" : "\(step * 100)"
        }
    }

    /// Whether a state carries exactly these values (as text) and this status, all good.
    static func matches(_ s: PhysicalState, map: DeviceMap, values: [String: String], status: String) -> Bool {
        guard s.pollError == nil, s.status == status else { return false }
        for r in map.registers {
            guard let reading = s.values[r.name], reading.quality.isGood, let v = reading.value,
                  let want = values[r.name] else { return false }
            if let a = v.number, let b = Double(want) {
                if abs(a - b) > max(abs(b), 1) * 1e-6 { return false }
            } else if let a = v.number, let b = ["true": 1.0, "false": 0.0][want] {
                if a != b { return false }
            } else if v.description != want {
                return false
            }
        }
        return true
    }
}

/// The newest state from a poll thread, and a way to wait for one that satisfies a condition.
final class LatestState: Sendable {
    private let state = Mutex<PhysicalState?>(nil)
    private let signal = DispatchSemaphore(value: 0)

    func put(_ s: PhysicalState) {
        state.withLock { $0 = s }
        signal.signal()
    }

    var current: PhysicalState? { state.withLock { $0 } }

    func wait(timeoutMs: Int, until ok: (PhysicalState) -> Bool) -> PhysicalState? {
        let deadline = DispatchTime.now() + .milliseconds(timeoutMs)
        while true {
            if let s = current, ok(s) { return s }
            if signal.wait(timeout: deadline) == .timedOut {
                if let s = current, ok(s) { return s }
                return nil
            }
        }
    }
}
