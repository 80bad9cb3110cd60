import Appliance
import Commissioning
import Foundation
import Modbus
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `SystemBench`: the whole system on this machine (issue 7). The appliance runs as its own
/// process (`.build/release/tibet-twin run`), against N simulated PLCs (the project's
/// simulator, one port each: in this process for the latencies, which change registers
/// directly; in a `tibet-twin simulate --replicas N` child process for the soak), a twin client
/// sending every device's line over TCP every 50 ms, and an interlock client reading all permit
/// coils with libmodbus, under `SCHED_FIFO` as the appliance's drop path (the PLC it stands for
/// reads on a CPU of its own, not behind the simulated plant that shares this machine's cores):
/// every 10 ms, a PLC's scan, and every 0.25 ms while a latency sample is in flight.
///
/// - PLC register change → coil seen by the interlock client, p50/p99 (goal p99 ≤ poll period
///   + 5 ms), with 1 and with 200 devices at 20 Hz; beside the baseline: a bare libmodbus client
///   polling the same register at the same 20 Hz in the same run (what any poller can see).
/// - Twin line → coil, p50/p99 (goal p99 ≤ 2 ms).
/// - Silent twin → coil 0: the delay past `max_age_ms` (goal ≤ one tick + 5 ms).
/// - RSS and CPU of the appliance with 500 devices over a 10-minute soak (goal ≤ 64 MB, flat
///   within 5 %).
///
/// Environment: `SYSTEM_BENCH_N` (default `1,200,1000`), `SYSTEM_BENCH_SAMPLES` (default 100),
/// `SYSTEM_BENCH_SOAK_N` (default 1000), `SYSTEM_BENCH_SOAK_S` (default 600; 0 skips the soak),
/// `SYSTEM_BENCH_MOVING` (percent of devices that move, default 0: every poll and twin line
/// after the first repeats its device's last one), `SYSTEM_BENCH_READER_NICE` (the interlock
/// client at this nice value instead of `SCHED_FIFO`; `none`: at the process's).
/// Above 200 devices the simulated PLCs sit behind gateways, 32 to a port (one shared link
/// each, as a plant of that size is wired; `SYSTEM_BENCH_UNITS_PER_PORT` overrides): 1,000
/// links of their own cannot fit below libmodbus's descriptor ceiling.
struct SystemBench: BenchSuite {
    let name = "SystemBench"

    /// Read requests per device per poll: 1 (default) lays the status and values out in one
    /// block of five registers, as a map written for fast polling does; 2 puts the values 100
    /// registers away from the status (`SYSTEM_BENCH_BLOCKS=2`, the layout of the runs before
    /// 2026-12-06 afternoon), which doubles the Modbus transactions.
    static var blocks: Int { ProcessInfo.processInfo.environment["SYSTEM_BENCH_BLOCKS"] == "2" ? 2 : 1 }

    /// The percentage of devices whose position changes every 50 ms (`SYSTEM_BENCH_MOVING`,
    /// default 0: every device stands still, so polls and twin lines repeat).
    static var movingPercent: Int { min(100, max(0, Int(ProcessInfo.processInfo.environment["SYSTEM_BENCH_MOVING"] ?? "") ?? 0)) }

    /// The interlock client's priority: `SCHED_FIFO` at the drop path's priority, or the nice
    /// value in `SYSTEM_BENCH_READER_NICE` (`none`: the process's, nil).
    static var readerPriority: CoilReader.Priority? {
        guard let v = ProcessInfo.processInfo.environment["SYSTEM_BENCH_READER_NICE"] else {
            return .realtime(SafetyPriority.realtimePriority)
        }
        return v == "none" ? nil : .nice(Int32(v) ?? SafetyPriority.nice)
    }

    static func mapYAML(device: String, port: Int, coil: Int, unit: Int = 1) -> String {
        let base = blocks == 2 ? 100 : 1
        return """
        device: \(device)
        profile: port
        plc: {host: 127.0.0.1, port: \(port), unit: \(unit), poll_ms: 50, timeout_ms: 100}
        limits: {max_drift_ms: 200, max_age_ms: 200, rearm_ms: 100}
        status: {address: 0, table: holding, type: uint16, values: {0: operational, 1: fault}}
        registers:
          - {name: position_x, address: \(base), type: float32, unit: m, tolerance: 0.5}
          - {name: load_kg, address: \(base + 2), type: uint32, order: CDAB, unit: kg, tolerance: 100}
        intents:
          move: {coil: \(coil)}

        """
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let ns = (env["SYSTEM_BENCH_N"] ?? "1,200,1000").split(separator: ",").compactMap { Int($0) }
        let samples = Int(env["SYSTEM_BENCH_SAMPLES"] ?? "100") ?? 100
        // The soak's simulated PLCs run in a child process: in this one (a listening and an
        // accepted socket each, under the select() cap of 1024 descriptors) 500 of them ran it
        // out of descriptors, and libdispatch's pool monitor then trapped.
        let soakN = Int(env["SYSTEM_BENCH_SOAK_N"] ?? "1000") ?? 1000
        let soakS = Int(env["SYSTEM_BENCH_SOAK_S"] ?? "600") ?? 600
        try DescriptorLimit.capForSelect()
        print("appliance: \(Self.binary()) (its own process); twin and interlock client in this process;"
              + " simulated PLCs in this process for the latencies, in a `tibet-twin simulate` child for the soak")
        print("load average at start: \(Self.loadAverage())")
        print("interlock client: \(Self.readerPriority.map(String.init(describing:)) ?? "the process's priority")")
        print("each device: \(Self.blocks) read request\(Self.blocks == 1 ? "" : "s") per poll (SYSTEM_BENCH_BLOCKS)")
        for n in ns {
            try await latencies(devices: n, samples: samples)
        }
        if soakS > 0 {
            try await soak(devices: soakN, seconds: soakS)
        }
    }

    // MARK: Latencies

    func latencies(devices n: Int, samples: Int) async throws {
        let rig = try await Rig(devices: n, simulator: .inProcess)
        defer { rig.stop() }
        guard let sim = rig.sim else { throw BenchError("the latencies need the in-process simulator") }
        guard rig.reader.waitAll(true, count: n, timeoutMs: 60_000) else {
            print("n=\(n): not every permit rose within 60 s; coils \(rig.reader.permitsUp)/\(n)")
            return
        }
        func now() -> Int64 { SystemTimeSource().now().monotonicNs }
        // Moving devices (`SYSTEM_BENCH_MOVING`, percent): their position changes every 50 ms on
        // both sides (the simulated PLC's register and the twin's line, within tolerance), so
        // their polls and lines are news, never repeats.
        let mover = Mover(sim: sim, twin: rig.twin, devices: Array(rig.names.prefix(n * Self.movingPercent / 100)))
        mover.start()
        defer { mover.stop() }

        let metrics0 = rig.child.metrics()
        let started = now()
        // PLC register change → coil.
        var plc: [Double] = []
        for k in 0..<samples {
            let d = k % n
            guard rig.reader.waitFor(coil: d, true, sinceNs: 0, timeoutMs: 5000) != nil else { continue }
            // A random phase against the poll schedule: right after one device's drop the next
            // device's poll is due within a few ms (they are polled in one round), which would
            // make the figures look better than they are.
            rig.reader.watch(forMs: 150)
            usleep(UInt32.random(in: 0...50_000))
            let t0 = now()
            try sim.execute("@\(rig.names[d]) status fault")
            if let t = rig.reader.waitFor(coil: d, false, sinceNs: t0, timeoutMs: 5000) { plc.append(Double(t - t0) / 1e6) }
            try sim.execute("@\(rig.names[d]) status operational")
            if n < 4 { _ = rig.reader.waitFor(coil: d, true, sinceNs: now(), timeoutMs: 5000) }
        }

        // Baseline: a bare libmodbus client polling device 0's status register at 20 Hz.
        var bare: [Double] = []
        let poller = BarePoller(port: rig.ports[0], periodMs: 50)
        poller.start()
        for _ in 0..<min(samples, 60) {
            usleep(UInt32.random(in: 20_000...70_000))  // a random phase against the poll schedule
            let t0 = now()
            try sim.execute("@\(rig.names[0]) set load_kg 7777")
            if let t = poller.waitFor(7777, sinceNs: t0, timeoutMs: 2000) { bare.append(Double(t - t0) / 1e6) }
            try sim.execute("@\(rig.names[0]) set load_kg 2500")
            _ = poller.waitFor(2500, sinceNs: now(), timeoutMs: 2000)
            // The appliance saw the deviation too: let device 0 re-arm before the next sample.
            _ = rig.reader.waitFor(coil: 0, true, sinceNs: now(), timeoutMs: 5000)
        }
        poller.stop()

        // Twin line → coil.
        var twin: [Double] = []
        var fellBefore = 0
        for k in 0..<samples {
            let d = k % n
            guard rig.reader.waitFor(coil: d, true, sinceNs: 0, timeoutMs: 5000) != nil else { continue }
            rig.reader.watch(forMs: 100)
            usleep(UInt32.random(in: 0...20_000))
            let revision = rig.twin.update(device: rig.names[d]) { $0.status = "fault" }
            // The fault line goes out alone (the periodic lines of every device keep flowing
            // beside it), timed from the write of the first line that carries it: a periodic
            // batch may carry it first; one built just before the change may be written after
            // it without it.
            let asked = now()
            rig.twin.sendNow(device: rig.names[d])
            guard let t0 = rig.twin.waitSent(device: rig.names[d], revision: revision, timeoutMs: 2000) else { continue }
            if let t = rig.reader.waitFor(coil: d, false, sinceNs: asked, timeoutMs: 5000) {
                if t >= t0 { twin.append(Double(t - t0) / 1e6) } else { fellBefore += 1 }
            }
            rig.twin.update(device: rig.names[d]) { $0.status = "operational" }
            rig.twin.sendNow(device: rig.names[d])
            if n < 4 { _ = rig.reader.waitFor(coil: d, true, sinceNs: now(), timeoutMs: 5000) }
        }

        // Silent twin → coil 0, past max_age_ms.
        var silent: [Double] = []
        for k in 0..<min(samples, 20) {
            let d = (k * 7) % n
            guard rig.reader.waitFor(coil: d, true, sinceNs: 0, timeoutMs: 5000) != nil else { continue }
            rig.twin.update(device: rig.names[d]) { $0.silent = true }
            rig.reader.watch(forMs: 500)
            usleep(60_000)  // the line in flight, if any, is sent; the clock starts at the last one
            let last = rig.twin.lastSent(device: rig.names[d])
            if let t = rig.reader.waitFor(coil: d, false, sinceNs: last, timeoutMs: 5000) {
                silent.append(Double(t - last) / 1e6 - 200)
            }
            rig.twin.update(device: rig.names[d]) { $0.silent = false }
            rig.twin.sendNow()
            _ = rig.reader.waitFor(coil: d, true, sinceNs: now(), timeoutMs: 5000)
        }

        print("n=\(n) devices at 20 Hz (poll 50 ms, max_age 200 ms, tick 50 ms), \(mover.devices.count) of them moving:")
        print("  PLC change → coil         \(Self.pq(plc))   goal p99 ≤ 55 ms")
        print("  baseline bare 20 Hz poll  \(Self.pq(bare))   (a libmodbus client seeing the register change)")
        print("  twin line → coil          \(Self.pq(twin))   goal p99 ≤ 2 ms"
              + (fellBefore > 0 ? " (\(fellBefore) coils fell before their fault line was written, not counted)" : ""))
        print("  silent twin → coil 0      \(Self.pq(silent, label: "ms past max_age"))   goal ≤ 55 ms past (one tick + 5)")
        if let refused = rig.reader.priorityRefusal.withLock({ $0 }) {
            print("  the interlock client kept the process's priority: \(refused)")
        }
        print("  interlock client read errors: \(rig.reader.errorCount); appliance CPU over the run: \(rig.child.cpuSeconds().map { String(format: "%.1f s", $0) } ?? "?")")
        if let m0 = metrics0, let m1 = rig.child.metrics() {
            print("  " + Self.pollSchedule(before: m0, after: m1, devices: n, seconds: Double(now() - started) / 1e9))
        }
    }

    // MARK: Soak

    func soak(devices n: Int, seconds: Int) async throws {
        let rig = try await Rig(devices: n, simulator: .childProcess)
        defer { rig.stop() }
        if let p = rig.simProcess { print("soak: simulated PLCs in `tibet-twin simulate --replicas \(n)` (pid \(p.pid)), 32 to a port above 200 devices") }
        let armed = rig.reader.waitAll(true, count: n, timeoutMs: 120_000)
        print("soak: \(n) devices for \(seconds) s; all permits up at start: \(armed ? "yes" : "NO (\(rig.reader.permitsUp)/\(n))")")
        let start = Date()
        let cpu0 = rig.child.cpuSeconds() ?? 0
        let metrics0 = rig.child.metrics()
        var rss: [(Double, Double)] = []
        let step = max(1, min(10, seconds / 20))
        while Date().timeIntervalSince(start) < Double(seconds) {
            try await Task.sleep(for: .seconds(step))
            if let r = rig.child.rssMB() { rss.append((Date().timeIntervalSince(start), r)) }
        }
        let cpu1 = rig.child.cpuSeconds() ?? 0
        let elapsed = Date().timeIntervalSince(start)
        let values = rss.map(\.1)
        let window = max(1, values.count / 6)
        let early = values.prefix(window).reduce(0, +) / Double(window)
        let late = values.suffix(window).reduce(0, +) / Double(window)
        let growth = early > 0 ? (late - early) / early * 100 : 0
        let up = rig.reader.permitsUp
        print(String(format: "  RSS first/last sixth %.1f / %.1f MB (max %.1f MB), change %+.1f %%   goal ≤ 64 MB, flat within 5 %%",
                     early, late, values.max() ?? 0, growth))
        print(String(format: "  CPU %.1f %% of one core (%.1f s over %.0f s); permits up at end %d/%d; interlock read errors %d",
                     (cpu1 - cpu0) / elapsed * 100, cpu1 - cpu0, elapsed, up, n, rig.reader.errorCount))
        if let m0 = metrics0, let m1 = rig.child.metrics() {
            print("  " + Self.pollSchedule(before: m0, after: m1, devices: n, seconds: elapsed))
        } else {
            print("  poll schedule: the appliance's /metrics could not be read")
        }
    }

    // MARK: Helpers

    /// Polls, missed slots and the p99 of schedule jitter over a window, from the appliance's
    /// own counters (`tibet_twin_poll_*`, read from /metrics before and after).
    static func pollSchedule(before m0: [String: Double], after m1: [String: Double], devices n: Int, seconds: Double) -> String {
        func delta(_ k: String) -> Double { (m1[k] ?? 0) - (m0[k] ?? 0) }
        let polls = delta("tibet_twin_polls_total")
        let missed = delta("tibet_twin_poll_missed_slots_total")
        // Cumulative buckets: the first bound holding 99 % of the window's polls.
        let prefix = "tibet_twin_poll_jitter_seconds_bucket{le=\""
        let bounds = m1.keys.filter { $0.hasPrefix(prefix) }
            .compactMap { k -> (Double, String)? in
                let v = k.dropFirst(prefix.count).dropLast(2)
                return v == "+Inf" ? (.infinity, k) : Double(v).map { ($0, k) }
            }
            .sorted { $0.0 < $1.0 }
        let total = delta("tibet_twin_poll_jitter_seconds_count")
        var p99 = "?"
        if total > 0, let hit = bounds.first(where: { delta($0.1) >= total * 0.99 }) {
            p99 = hit.0.isInfinite ? "> 5 s" : String(format: "≤ %.1f ms", hit.0 * 1000)
        }
        // The share of polls that started within the goal's 5 ms of their slot (99 % must).
        if total > 0, let five = bounds.first(where: { $0.0 == 0.005 }) {
            p99 += String(format: " (%.2f %% within 5 ms)", delta(five.1) / total * 100)
        }
        return String(format: "poll schedule: %.0f polls (%.1f per device per second), %.0f missed slots, jitter p99 %@"
                      + "   goal: no missed slot, p99 ≤ 5 ms", polls, polls / Double(max(n, 1)) / max(seconds, 1), missed, p99)
    }

    static func pq(_ v: [Double], label: String = "ms") -> String {
        guard !v.isEmpty else { return "no samples" }
        let s = v.sorted()
        func q(_ p: Double) -> Double { s[min(s.count - 1, max(0, Int((Double(s.count) * p).rounded(.up)) - 1))] }
        return String(format: "p50 %6.2f  p90 %6.2f  p99 %6.2f  max %6.2f %@ (n=%d)", q(0.5), q(0.9), q(0.99), s.last!, label, s.count)
    }

    static func binary() -> String {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("tibet-twin").path
    }

    static func loadAverage() -> String {
        (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
    }
}

/// N simulated PLCs, the appliance process, a twin client and an interlock reader.
/// Moves `devices`: every 50 ms a new `position_x` (12.3 … 12.7 m, within the map's 0.5 m
/// tolerance of each other) in the simulated PLC and in what the twin says.
final class Mover: @unchecked Sendable {
    let sim: PLCSimulator
    let twin: TwinClient
    let devices: [String]
    let running = Atomic<Bool>(true)
    let done = DispatchSemaphore(value: 0)

    init(sim: PLCSimulator, twin: TwinClient, devices: [String]) {
        self.sim = sim
        self.twin = twin
        self.devices = devices
    }

    func start() {
        guard !devices.isEmpty else { return }
        Thread { [self] in
            var k = 0
            while running.load(ordering: .relaxed) {
                k += 1
                for (i, d) in devices.enumerated() {
                    let v = 12.5 + Double((k + i) % 5 - 2) / 10
                    _ = try? sim.execute("@\(d) set position_x \(v)")
                    twin.update(device: d) { $0.values["position_x"] = v }
                }
                usleep(50_000)
            }
            done.signal()
        }.start()
    }

    func stop() {
        guard !devices.isEmpty else { return }
        running.store(false, ordering: .relaxed)
        done.wait()
    }
}

final class Rig: @unchecked Sendable {
    /// Where the simulated PLCs run.
    enum Simulator { case inProcess, childProcess }

    let dir: URL
    /// The in-process simulator (`.inProcess`), which the latencies drive directly.
    let sim: PLCSimulator?
    /// The `tibet-twin simulate` child (`.childProcess`).
    let simProcess: SimulatorProcess?
    let names: [String]
    let ports: [Int]
    let child: ApplianceProcess
    let twin: TwinClient
    let reader: CoilReader

    init(devices n: Int, simulator: Simulator) async throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-system-bench-\(getpid())-\(n)")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("maps"), withIntermediateDirectories: true)
        let names = (0..<n).map { String(format: "dev-%04d", $0) }
        self.names = names
        let env = ProcessInfo.processInfo.environment
        let unitsPerPort = Int(env["SYSTEM_BENCH_UNITS_PER_PORT"] ?? "") ?? (n > 200 ? 32 : 1)
        let initial = ["load_kg": "2500", "position_x": "12.5"]
        let ports: [Int]
        switch simulator {
        case .inProcess:
            let probe = try (0..<n).map { i in
                try MapLoader.parse(yaml: SystemBench.mapYAML(device: names[i], port: 1502, coil: i), file: "\(names[i]).yaml")
            }
            let s = try PLCSimulator(maps: probe, host: "127.0.0.1", port: 0, initial: initial, unitsPerPort: unitsPerPort)
            sim = s
            simProcess = nil
            ports = s.endpoints.map(\.port)
        case .childProcess:
            // One map served n times: the appliance tells the devices apart by port.
            let template = dir.appendingPathComponent("sim-plc.yaml")
            try SystemBench.mapYAML(device: "sim-plc", port: 1502, coil: 0).write(to: template, atomically: true, encoding: .utf8)
            let p = try SimulatorProcess(mapFile: template.path, replicas: n,
                                         extra: initial.sorted { $0.key < $1.key }.flatMap { ["--set", "\($0.key)=\($0.value)"] }
                                             + ["--units-per-port", String(unitsPerPort)])
            sim = nil
            simProcess = p
            ports = p.ports
        }
        self.ports = ports
        do {
            for i in 0..<n {
                try SystemBench.mapYAML(device: names[i], port: ports[i], coil: i, unit: i % unitsPerPort + 1)
                    .write(to: dir.appendingPathComponent("maps/\(names[i]).yaml"), atomically: true, encoding: .utf8)
            }
            _ = try KeyFiles.generate(out: dir.appendingPathComponent("guard.key").path)
            try """
                node: bench-guard
                maps: maps/
                interlock: {listen: 127.0.0.1:0, unit: 1, allow: [127.0.0.0/8], stop_grace_ms: 100}
                twin:
                  feeds:
                    - tcp: 127.0.0.1:0
                audit: {dir: audit, key: guard.key, checkpoint_s: 60}
                http: {listen: 127.0.0.1:0}

                """.write(to: dir.appendingPathComponent("tibet-twin.yaml"), atomically: true, encoding: .utf8)
            child = try ApplianceProcess(binary: SystemBench.binary(), config: dir.appendingPathComponent("tibet-twin.yaml").path)
            twin = TwinClient(port: child.twinPort, periodMs: Int(env["SYSTEM_BENCH_TWIN_MS"] ?? "") ?? 50, devices: names.map {
                ($0, TwinClient.Said(status: "operational", values: ["position_x": 12.5, "load_kg": 2500]))
            })
            twin.start()
            reader = CoilReader(port: child.interlockPort, count: n, periodUs: 250, idlePeriodUs: 10_000,
                                priority: SystemBench.readerPriority)
            reader.start()
        } catch {
            // Whatever started before the failure is stopped with it.
            sim?.stop()
            simProcess?.stop()
            throw error
        }
    }

    func stop() {
        reader.stop()
        twin.stop()
        child.stop()
        sim?.stop()
        simProcess?.stop()
        if ProcessInfo.processInfo.environment["SYSTEM_BENCH_DEBUG"] == nil { try? FileManager.default.removeItem(at: dir) }
    }
}

/// `tibet-twin run` as a child process: its ports from its `serving …` line, its RSS and CPU
/// from /proc, stopped with SIGTERM.
final class ApplianceProcess: @unchecked Sendable {
    let process = Process()
    let interlockPort: Int
    let twinPort: Int
    let httpPort: Int?

    init(binary: String, config: String) throws {
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["run", "--config", config, "--log-level", "warning"]
        process.currentDirectoryURL = URL(fileURLWithPath: config).deletingLastPathComponent()
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        var line = ""
        let h = out.fileHandleForReading
        while !line.hasSuffix("\n") {
            let d = h.readData(ofLength: 1)
            if d.isEmpty { throw BenchError("the appliance exited before serving (see its stderr above)") }
            line += String(decoding: d, as: UTF8.self)
        }
        var fields: [String: String] = [:]
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { fields[String(kv[0])] = String(kv[1]).trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        guard let i = fields["interlock"].flatMap({ Int($0) }), let t = fields["twin_tcp"].flatMap({ Int($0) }) else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw BenchError("unexpected first line from the appliance: \(line)")
        }
        interlockPort = i
        twinPort = t
        httpPort = fields["http"].flatMap { Int($0) }
    }

    /// The appliance's `/metrics`, as name{labels} → value lines (nil if unreadable).
    func metrics() -> [String: Double]? {
        guard let p = httpPort,
              let r = try? SimpleHTTPClient.request(method: "GET", url: "http://127.0.0.1:\(p)", path: "/metrics"), r.status == 200
        else { return nil }
        var out: [String: Double] = [:]
        for line in String(decoding: r.body, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let sp = line.lastIndex(of: " "), let v = Double(line[line.index(after: sp)...]) else { continue }
            out[String(line[..<sp])] = v
        }
        return out
    }

    func rssMB() -> Double? {
        guard let s = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) }) else { return nil }
        return kb / 1024
    }

    func cpuSeconds() -> Double? {
        guard let s = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 13, let u = Double(f[11]), let k = Double(f[12]) else { return nil }
        return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// The baseline: a bare libmodbus client polling one register at a fixed period on its own
/// thread, remembering when it first saw each value.
final class BarePoller: @unchecked Sendable {
    let port: Int
    let periodMs: Int
    let seen = NSLock()
    var changes: [(Int64, UInt16)] = []
    var running = true
    let done = DispatchSemaphore(value: 0)

    init(port: Int, periodMs: Int) {
        self.port = port
        self.periodMs = periodMs
    }

    func start() {
        Thread { [self] in
            defer { done.signal() }
            guard let c = try? ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 500),
                  (try? c.connect()) != nil else { return }
            var next = SystemTimeSource().now().monotonicNs
            while seen.withLock({ running }) {
                // load_kg is a CDAB uint32 (SystemBench.mapYAML): its low word comes first.
                let address = SystemBench.blocks == 2 ? 102 : 3
                if let w = try? c.readRegisters(table: .holding, address: address, count: 2) {
                    let now = SystemTimeSource().now().monotonicNs
                    seen.withLock { if changes.last?.1 != w[0] { changes.append((now, w[0])) } }
                }
                next += Int64(periodMs) * 1_000_000
                let wait = next - SystemTimeSource().now().monotonicNs
                if wait > 0 { usleep(UInt32(wait / 1000)) }
            }
        }.start()
    }

    func waitFor(_ value: UInt16, sinceNs: Int64, timeoutMs: Int) -> Int64? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            if let hit = seen.withLock({ changes.last.flatMap { $0.1 == value ? max($0.0, sinceNs) : nil } }) { return hit }
            usleep(500)
        }
        return nil
    }

    func stop() {
        seen.withLock { running = false }
        done.wait()
    }
}

extension CoilReader {
    /// Coils that read 1 now.
    var permitsUp: Int { (current ?? []).reduce(0) { $0 + Int($1) } }

    /// Waits until the first `count` coils all read `value`.
    func waitAll(_ value: Bool, count: Int, timeoutMs: Int) -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            if let c = current, c.count >= count, c.prefix(count).allSatisfy({ ($0 == 1) == value }) { return true }
            usleep(20_000)
        }
        return false
    }
}
