import Foundation
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// The decision rule's speed (issue 3): the evaluation alone as the appliance runs it, and
/// `SyncGuard.check(device:intent:)` with its token and hash, for 1 and 1,000 devices, beside
/// the seed's Python `check()` (tibet-twin 0.1.1) measured in the same run.
struct GuardBench: BenchSuite {
    let name = "GuardBench"

    func run() async throws {
        print("one thread, release build; each figure the best of 3 runs")
        print("")
        print("evaluation alone (DeviceGuard.evaluate: 3 intents, 4 registers; no text, no token)")
        for devices in [1, 1000] {
            let tick = best(of: 3) { evaluateTicks(devices: devices, total: 4_000_000) }
            let poll = best(of: 3) { evaluatePolls(devices: devices, total: 2_000_000) }
            print("  \(devices.padded(5)) device(s)  tick (states unchanged): \(rate(tick))/s  " +
                  "poll (new physical state, then evaluate): \(rate(poll))/s")
        }
        print("  goal ≥ 2M decisions/s")
        print("")
        print("SyncGuard.check(device:intent:) — evaluate, explain, ERIN JSON, token, SHA-256 chain, ring")
        var swiftRates: [Int: Double] = [:]
        for devices in [1, 1000] {
            let r = best(of: 3) { libraryChecks(devices: devices, total: 200_000) }
            swiftRates[devices] = r
            print("  \(devices.padded(5)) device(s)  \(rate(r))/s  (\(String(format: "%.2f", 1e6 / r)) µs each)")
        }
        let (rss100k, rss1M) = libraryMemory()
        print("  memory: RSS after 100k checks \(rss100k / 1024) KiB, after 1M checks \(rss1M / 1024) KiB " +
              "(\(String(format: "%+.1f", Double(rss1M - rss100k) / 900_000)) bytes per check after the ring filled)")
        print("")
        print("baseline: seed tibet-twin 0.1.1 SyncGuard.check() (Python, same inputs)")
        guard let seed = seedBaseline() else { return }
        print(seed.text, terminator: "")
        for devices in [1, 1000] {
            if let s = seed.rates[devices], let r = swiftRates[devices] {
                print("  \(devices.padded(5)) device(s): Swift \(String(format: "%.1f", r / s))× the seed  (goal ≥ 10×)")
            }
        }
    }

    // MARK: - Workloads

    static let map = DeviceMap(
        device: "crane-01", profile: .port, plc: PLCEndpoint(host: "127.0.0.1", pollMs: 50),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                           values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
        registers: [
            RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
            RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100),
            RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
            RegisterSpec(name: "wind_speed", table: .input, address: 4, type: .int16, scale: 0.1),
        ],
        intents: [
            IntentSpec(name: "move_left", coil: 0),
            IntentSpec(name: "hoist", coil: 1, requires: [Requirement(name: "load_kg", max: 40000),
                                                          Requirement(name: "hoist_locked", eq: 0)]),
            IntentSpec(name: "move_right", coil: 2),
        ])

    func guards(_ n: Int, at now: ClockReading) -> [DeviceGuard] {
        (0..<n).map { i in
            var m = Self.map
            m.device = "crane-\(i)"
            var g = DeviceGuard(map: m)
            g.updatePhysical(physical(m.device, at: now))
            g.updateTwin(TwinState(device: m.device, tsNs: now.wallNs - 20_000_000, seq: 1, status: "operational",
                                   values: ["position_x": 12.5, "load_kg": 2500, "hoist_locked": 0, "wind_speed": 3.2],
                                   received: now))
            return g
        }
    }

    func physical(_ device: String, at now: ClockReading) -> PhysicalState {
        PhysicalState(device: device, status: "operational", values: [
            "position_x": Reading(value: .double(12.5), quality: .good),
            "load_kg": Reading(value: .uint(2500), quality: .good),
            "hoist_locked": Reading(value: .bool(false), quality: .good),
            "wind_speed": Reading(value: .double(3.2), quality: .good),
        ], time: now)
    }

    /// Guards that have re-armed (every intent permitted) at `start + rearm_ms`; the timed loops
    /// then run within the states' freshness, so every evaluation takes the full passing path.
    func armedGuards(_ n: Int, at start: ClockReading) -> ([DeviceGuard], ClockReading) {
        var gs = guards(n, at: start)
        let armed = start.adding(milliseconds: Self.map.limits.rearmMs)
        for i in gs.indices {
            gs[i].evaluate(now: start, auditOK: true)
            gs[i].evaluate(now: armed, auditOK: true)
            precondition(gs[i].verdict(intent: 0).permit)
        }
        return (gs, armed)
    }

    /// Decisions per second (one device-intent verdict each) on the tick path.
    func evaluateTicks(devices: Int, total: Int) -> Double {
        let start = ClockReading(monotonicNs: 1_000_000_000, wallNs: 1_795_703_520_000_000_000)
        var (gs, armed) = armedGuards(devices, at: start)
        let rounds = total / (devices * 3)
        let step = Swift.max(1, 90_000_000 / Int64(rounds))  // stay within max_age_ms
        var permits = 0
        let t0 = ContinuousClock.now
        for r in 0..<rounds {
            let now = ClockReading(monotonicNs: armed.monotonicNs + Int64(r) * step, wallNs: armed.wallNs + Int64(r) * step)
            for i in gs.indices {
                gs[i].evaluate(now: now, auditOK: true)
                if gs[i].verdict(intent: 2).permit { permits += 1 }
            }
        }
        let s = seconds(since: t0)
        precondition(permits == rounds * devices)
        return Double(rounds * devices * 3) / s
    }

    /// Decisions per second when each evaluation follows a new physical state (the poll path).
    func evaluatePolls(devices: Int, total: Int) -> Double {
        let start = ClockReading(monotonicNs: 1_000_000_000, wallNs: 1_795_703_520_000_000_000)
        var (gs, armed) = armedGuards(devices, at: start)
        let states = gs.map { physical($0.map.device, at: armed) }
        let rounds = total / (devices * 3)
        let step = Swift.max(1, 90_000_000 / Int64(rounds))
        var permits = 0
        let t0 = ContinuousClock.now
        for r in 0..<rounds {
            let now = ClockReading(monotonicNs: armed.monotonicNs + Int64(r) * step, wallNs: armed.wallNs + Int64(r) * step)
            for i in gs.indices {
                gs[i].updatePhysical(states[i])
                gs[i].evaluate(now: now, auditOK: true)
                if gs[i].verdict(intent: 2).permit { permits += 1 }
            }
        }
        let s = seconds(since: t0)
        precondition(permits == rounds * devices)
        return Double(rounds * devices * 3) / s
    }

    /// A clock for the library: a fixed wall time moving 100 ns per reading (1M checks stay
    /// within max_age_ms, so each takes the full passing path).
    final class StepClock: TimeSource, @unchecked Sendable {
        var ns: Int64 = 1_795_703_520_000_000_000
        func now() -> ClockReading {
            ns += 100
            return ClockReading(monotonicNs: ns, wallNs: ns)
        }
    }

    func library(devices: Int) -> SyncGuard {
        var tol: [String: [String: Double]] = [:]
        for i in 0..<devices { tol["crane-\(i)"] = ["position_x": 0.5, "load_kg": 100] }
        let g = SyncGuard(maxDriftMs: 200, valueTolerances: tol, node: "bench", host: "bench", clock: StepClock())
        for i in 0..<devices {
            g.updatePhysical(device: "crane-\(i)", status: "operational",
                             values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
            g.updateTwin(device: "crane-\(i)", status: "operational",
                         values: ["position_x": 12.5, "position_y": 8.3, "load_kg": 2500])
        }
        return g
    }

    func libraryChecks(devices: Int, total: Int) -> Double {
        let g = library(devices: devices)
        let names = (0..<devices).map { "crane-\($0)" }
        var allowed = 0
        let t0 = ContinuousClock.now
        for k in 0..<total {
            if g.check(device: names[k % devices], intent: "move_left").allowed { allowed += 1 }
        }
        let s = seconds(since: t0)
        precondition(allowed == total)
        return Double(total) / s
    }

    func libraryMemory() -> (Int, Int) {
        let g = library(devices: 1)
        for _ in 0..<100_000 { _ = g.check(device: "crane-0", intent: "move_left") }
        let a = residentBytes()
        for _ in 0..<900_000 { _ = g.check(device: "crane-0", intent: "move_left") }
        let b = residentBytes()
        precondition(g.status().checks == 1_000_000)
        return (a, b)
    }

    // MARK: - The seed, in the same run

    struct Seed {
        var rates: [Int: Double]
        var text: String
    }

    func seedBaseline() -> Seed? {
        let root = packageRoot()
        let venv = root + "/.build/seed-venv"
        let python = venv + "/bin/python"
        if !FileManager.default.isExecutableFile(atPath: python) ||
            !run([python, "-c", "import tibet_twin"]) {
            print("  (setting up \(venv): python3 -m venv, pip install --no-deps tibet-twin==0.1.1, pip install tibet-core)")
            guard run(["python3", "-m", "venv", venv]),
                  run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "tibet-twin==0.1.1"]),
                  run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "tibet-core"]),
                  run([python, "-c", "import tibet_twin"])
            else {
                print("  baseline unavailable: could not install tibet-twin 0.1.1 into \(venv) (pip unreachable?)")
                return nil
            }
        }
        let script = root + "/benchmarks/seed_check.py"
        guard let out = capture([python, script]) else {
            print("  baseline unavailable: \(script) failed")
            return nil
        }
        var rates: [Int: Double] = [:]
        var text = ""
        for line in out.split(separator: "\n") {
            if line.hasPrefix("RATE ") {
                let parts = line.split(separator: " ")
                if parts.count == 3, let d = Int(parts[1]), let r = Double(parts[2]) { rates[d] = r }
            } else {
                text += "  " + line + "\n"
            }
        }
        return Seed(rates: rates, text: text)
    }

    // MARK: - Helpers

    func best(of n: Int, _ body: () -> Double) -> Double {
        (0..<n).map { _ in body() }.max()!
    }

    func seconds(since t0: ContinuousClock.Instant) -> Double {
        let d = ContinuousClock.now - t0
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    func rate(_ r: Double) -> String {
        r >= 1e6 ? String(format: "%.2fM", r / 1e6) : String(format: "%.1fk", r / 1e3)
    }

    func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let f = s.split(separator: " ")
        return f.count > 1 ? (Int(f[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    func packageRoot() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe)
        for _ in 0..<3 { url.deleteLastPathComponent() }  // .build/<triple>/release/tibet-twin-bench
        while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
            url.deleteLastPathComponent()
        }
        return url.path
    }

    @discardableResult
    func run(_ args: [String]) -> Bool {
        capture(args) != nil
    }

    func capture(_ args: [String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }
}

extension Int {
    func padded(_ w: Int) -> String {
        let s = String(self)
        return String(repeating: " ", count: Swift.max(0, w - s.count)) + s
    }
}
