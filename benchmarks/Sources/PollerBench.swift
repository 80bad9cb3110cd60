import Appliance
import Commissioning
import Foundation
import Logging
import Modbus
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `PollerBench`: N simulated PLCs (one `tibet-twin simulate` process, one port each) polled
/// at 20 Hz by the poller: the largest N with no missed cycle and p99 schedule jitter ≤ 5 ms;
/// and the poller's CPU per read beside a bare `modbus_read_registers` loop (the libmodbus
/// baseline), measured in the same run against the same simulator.
///
/// Environment: `POLLER_BENCH_N` (comma-separated N to try, default 50,100,200,300,400),
/// `POLLER_BENCH_SECONDS` (per N, default 5).
struct PollerBench: BenchSuite {
    let name = "PollerBench"

    /// A typical small device: status + 8 values in 10 contiguous holding registers, one read per poll.
    static let mapYAML = """
        device: bench-plc
        profile: manufacturing
        plc: {host: 127.0.0.1, port: 1502, unit: 1, poll_ms: 50, timeout_ms: 200}
        status: {address: 0, type: uint16, values: {0: operational, 1: fault}}
        registers:
          - {name: speed, address: 1, type: uint16, unit: rpm}
          - {name: temperature, address: 2, type: int16, scale: 0.1, unit: C}
          - {name: position, address: 3, type: float32, unit: m, tolerance: 0.01}
          - {name: count, address: 5, type: uint32, order: CDAB}
          - {name: running, address: 7, bit: 0}
          - {name: torque, address: 8, type: int16, unit: Nm}
          - {name: pressure, address: 9, type: uint16, scale: 0.01, unit: bar}
        intents:
          run: {coil: 0}
        """

    func run() async throws {
        try DescriptorLimit.capForSelect()
        let ns = (ProcessInfo.processInfo.environment["POLLER_BENCH_N"] ?? "50,100,200,300,400")
            .split(separator: ",").compactMap { Int($0) }
        let seconds = Double(ProcessInfo.processInfo.environment["POLLER_BENCH_SECONDS"] ?? "5") ?? 5
        let template = try MapLoader.parse(yaml: Self.mapYAML, file: "bench-plc.yaml")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-bench-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let mapFile = dir.appendingPathComponent("bench-plc.yaml")
        try Self.mapYAML.write(to: mapFile, atomically: true, encoding: .utf8)

        let maxN = ns.max() ?? 0
        let sim = try SimulatorProcess(mapFile: mapFile.path, replicas: maxN)
        defer { sim.stop() }
        print("simulator: \(maxN) PLCs in one `tibet-twin simulate` process (pid \(sim.pid)), one port each")
        print(String(format: "load average at start: %@", Self.loadAverage()))

        // Baseline: a bare libmodbus loop reading the same 10 registers from one simulated PLC.
        let port0 = sim.ports[0]
        let bare = try Self.onThread { try Self.bareLoop(port: port0, reads: 20_000) }
        print(String(format: "baseline  bare modbus_read_registers loop: %d reads, CPU %.1f µs/read, wall %.1f µs/read",
                     bare.reads, bare.cpuUsPerRead, bare.wallUsPerRead))
        // The same loop paced like one poll thread (a read every 1 ms, sleeping to an absolute
        // deadline in between): what waking up on a schedule costs by itself.
        let paced = try Self.onThread { try Self.bareLoop(port: port0, reads: 3_000, periodNs: 1_000_000) }
        print(String(format: "reference bare loop paced at 1 kHz (clock_nanosleep): CPU %.1f µs/read", paced.cpuUsPerRead))

        // The pure part of a poll alone: decode one group into a PhysicalState.
        let plan = ReadPlan(map: template)
        let words: [UInt16] = [0, 1500, 215, 0x4048, 0xF5C3, 7, 0, 1, 12, 250]
        let results = [ReadPlan.GroupResult.registers(words)]
        let clock = SystemTimeSource()
        let k = 200_000
        let c0 = Self.cpuNs()
        var sink = 0
        for _ in 0..<k { sink &+= plan.state(from: results, at: clock.now()).values.count }
        let c1 = Self.cpuNs()
        print(String(format: "decode one poll (ReadPlan.state, 7 values + status): %.2f µs CPU", Double(c1 - c0) / 1000 / Double(k))
              + (sink == 0 ? "!" : ""))

        var best: Int?
        var ratioAt200: Double?
        print("N     threads  polls   missed  jitter p50/p99 (ms)  latency p50/p99 (ms)  CPU µs/read  ratio  errors")
        for n in ns.sorted() {
            let maps = (0..<n).map { i -> DeviceMap in
                var m = template
                m.device = "bench-\(i)"
                m.plc.port = sim.ports[i]
                return m
            }
            let r = try Self.pollRun(maps: maps, seconds: seconds)
            let ok = r.stats.missedSlots == 0 && (r.stats.jitter.quantileUpperBoundMs(0.99) ?? 99) <= 5
                && r.stats.errors.isEmpty && r.stats.polls > 0
            if ok { best = n }
            let ratio = r.cpuUsPerRead / bare.cpuUsPerRead
            if n == 200 || (ratioAt200 == nil && n > 200) { ratioAt200 = ratio }
            let errs = r.stats.errors.map { "\($0.key.rawValue)=\($0.value)" }.sorted().joined(separator: ",")
            print(String(format: "%-5d %-8d %-7d %-7d %5.2f / %-12.2f %5.2f / %-13.2f %-12.1f %-6.2f %@%@",
                         n, r.threads, r.stats.polls, r.stats.missedSlots,
                         r.stats.jitter.quantileUpperBoundMs(0.5) ?? 0, r.stats.jitter.quantileUpperBoundMs(0.99) ?? 0,
                         r.stats.latency.quantileUpperBoundMs(0.5) ?? 0, r.stats.latency.quantileUpperBoundMs(0.99) ?? 0,
                         r.cpuUsPerRead, ratio, errs.isEmpty ? "-" : errs, ok ? "" : "  (fails the goal)"))
        }
        print("(jitter and latency are histogram bucket bounds: \"p99 ≤ x ms\")")
        print("largest N at 20 Hz with no missed cycle and p99 jitter ≤ 5 ms: \(best.map(String.init) ?? "none") (goal ≥ 200)")
        if let ratioAt200 { print(String(format: "poller CPU per read / bare loop at N≈200: %.2f× (goal ≤ 1.5×)", ratioAt200)) }
        print(String(format: "load average at end: %@", Self.loadAverage()))
    }

    struct PollRun {
        var stats: PollerStats
        var threads: Int
        var cpuUsPerRead: Double
    }

    /// Polls `maps` for `seconds` after a one-second warm-up; CPU is this process's (the poll threads).
    static func pollRun(maps: [DeviceMap], seconds: Double) throws -> PollRun {
        let sink: PhysicalStateSink = { _ in }
        // The first second (connects, first polls) is warm-up; the figures are the steady state after it.
        let quiet = Logger(label: "bench.poller") { _ in SwiftLogNoOpLogHandler() }
        let poller = Poller(maps: maps, logger: quiet, sink: sink)
        try poller.start()
        Thread.sleep(forTimeInterval: 1.0)
        let before = poller.stats()
        let cpu0 = cpuNs()
        Thread.sleep(forTimeInterval: seconds)
        let cpu1 = cpuNs()
        let after = poller.stats()
        poller.stop()
        var delta = PollerStats()
        delta.devices = zip(after.devices, before.devices).map { a, b in
            var d = a
            d.polls -= b.polls
            d.goodPolls -= b.goodPolls
            d.requests -= b.requests
            d.missedSlots -= b.missedSlots
            for (k, v) in b.errors { d.errors[k, default: 0] -= v }
            d.errors = d.errors.filter { $0.value != 0 }
            return d
        }
        delta.jitter = after.jitter.subtracting(before.jitter)
        delta.latency = after.latency.subtracting(before.latency)
        let reads = max(delta.requests, 1)
        return PollRun(stats: delta, threads: poller.threadCount, cpuUsPerRead: Double(cpu1 - cpu0) / 1000 / Double(reads))
    }

    struct BareResult: Sendable {
        var reads: Int
        var cpuUsPerRead: Double
        var wallUsPerRead: Double
    }

    /// The baseline: `modbus_read_registers` of the same 10 registers in a tight loop, straight
    /// through libmodbus (`LibmodbusBaselineClient`: no typed errors, no decoding).
    static func bareLoop(port: Int, reads: Int, periodNs: Int64 = 0) throws -> BareResult {
        let ctx: LibmodbusBaselineClient
        do { ctx = try LibmodbusBaselineClient(host: "127.0.0.1", port: port) } catch {
            throw BenchError("modbus_new_tcp_pi failed: \(error)")
        }
        guard ctx.connect() == 0 else { throw BenchError("modbus_connect failed: errno \(ctx.lastErrno)") }
        defer { ctx.close() }
        var regs = [UInt16](repeating: 0, count: 10)
        for _ in 0..<500 { _ = ctx.readRegisters(0, 10, into: &regs) }  // warm-up
        let cpu0 = cpuNs(), wall0 = monoNs()
        var deadline = wall0
        for _ in 0..<reads {
            if periodNs > 0 {
                deadline += periodNs
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
            }
            if ctx.readRegisters(0, 10, into: &regs) != 10 { throw BenchError("read failed: errno \(ctx.lastErrno)") }
        }
        let cpu1 = cpuNs(), wall1 = monoNs()
        return BareResult(reads: reads, cpuUsPerRead: Double(cpu1 - cpu0) / 1000 / Double(reads),
                          wallUsPerRead: Double(wall1 - wall0) / 1000 / Double(reads))
    }

    static func cpuNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    static func monoNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    static func loadAverage() -> String {
        (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
    }

    /// Runs blocking libmodbus work on a thread of its own.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let result = BenchBox<Result<T, Error>>()
        let done = DispatchSemaphore(value: 0)
        Thread { result.value = Result { try body() }; done.signal() }.start()
        done.wait()
        return try result.value!.get()
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

final class BenchBox<T>: @unchecked Sendable {
    var value: T?
}

/// `tibet-twin simulate --replicas N` as a child process (the release binary next to the bench).
/// A second child, a `sh` watchdog, kills the simulator if the bench process disappears without
/// calling `stop()` (a trap, SIGKILL), since the simulator keeps serving at the end of its input.
/// (The watchdog is not forked from the simulator's shell: it would inherit the descriptor
/// through which Foundation learns that the simulator exited, and `stop()` would hang.)
final class SimulatorProcess: @unchecked Sendable {
    let process = Process()
    let watchdog = Process()
    let ports: [Int]
    var pid: Int32 { process.processIdentifier }
    private let input = Pipe()

    /// `extra` goes after the fixed arguments, e.g. `["--set", "load_kg=2500"]`.
    init(mapFile: String, replicas: Int, extra: [String] = []) throws {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tibet-twin")
        guard FileManager.default.isExecutableFile(atPath: bin.path) else {
            throw BenchError("\(bin.path) not found: build it with `swift build -c release --product tibet-twin`")
        }
        let out = Pipe()
        process.executableURL = bin
        process.arguments = ["simulate", "--map", mapFile, "--replicas", String(replicas), "--listen", "127.0.0.1:0"] + extra
        process.standardInput = input
        process.standardOutput = out
        try process.run()
        let s = process.processIdentifier
        watchdog.executableURL = URL(fileURLWithPath: "/bin/sh")
        watchdog.arguments = ["-c", "while kill -0 \(getpid()) && kill -0 \(s); do sleep 1; done 2>/dev/null; kill \(s) 2>/dev/null"]
        watchdog.standardInput = FileHandle.nullDevice
        watchdog.standardOutput = FileHandle.nullDevice
        watchdog.standardError = FileHandle.nullDevice
        do {
            try watchdog.run()
        } catch {
            process.terminate()
            throw error
        }
        var ports: [Int] = []
        var pending = Data()
        let handle = out.fileHandleForReading
        while ports.count < replicas {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...nl)
                // "listening 127.0.0.1:PORT DEVICE"
                let words = line.split(separator: " ")
                if words.count >= 2, words[0] == "listening", let p = words[1].split(separator: ":").last.flatMap({ Int($0) }) {
                    ports.append(p)
                }
            }
        }
        guard ports.count == replicas else {
            process.terminate()
            watchdog.terminate()
            throw BenchError("simulator did not start \(replicas) PLCs")
        }
        self.ports = ports
    }

    /// Asks the simulator to quit; SIGKILL if it has not after 10 s.
    func stop() {
        if process.isRunning {
            input.fileHandleForWriting.write(Data("quit\n".utf8))
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        if watchdog.isRunning { watchdog.terminate() }
        watchdog.waitUntilExit()
    }
}
