import Appliance
import Foundation
import Logging
import Modbus
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `FieldbusBench`: the poller on shared links beside bare libmodbus loops on the same link in
/// the same run.
///
/// - One serial link (a socat pty pair, 19200 8N1) with 8 units served by `tibet-twin simulate
///   --serial`: requests/s of the poller at saturation beside a bare `modbus_read_input_registers`
///   loop round-robin over the 8 units (raw, and keeping the standard's t3.5 silence as the
///   poller does), and per-unit schedule jitter at a 250 ms period (what 8 units fit on a real
///   19200 baud line: 73 % busy by the link budget).
/// - One TCP gateway (pymodbus 3.8.6 behind a one-connection front, scripts/pymodbus_units.py)
///   with 32 units: the same figures beside a bare loop over the 32 units on one connection.
///
/// A pty moves bytes instantly, so on it the t3.5 wait dominates; on a real 19200 baud line a
/// 10-register read takes ~17 ms of wire time and the gap is a tenth of it.
/// Environment: `FIELDBUS_BENCH_SECONDS` (per run, default 4).
struct FieldbusBench: BenchSuite {
    let name = "FieldbusBench"

    static func unitMap(_ unit: Int, plc: String, pollMs: Int) -> String {
        """
        device: unit-\(unit)
        profile: building
        plc: {\(plc), unit: \(unit), poll_ms: \(pollMs), timeout_ms: 500}
        registers:
          - {name: v\(unit), address: 0, table: input, type: uint16}
          - {name: w\(unit), address: 9, table: input, type: uint16}
        intents:
          run: {coil: \(unit)}

        """
    }

    func run() async throws {
        let seconds = Double(ProcessInfo.processInfo.environment["FIELDBUS_BENCH_SECONDS"] ?? "4") ?? 4
        print(String(format: "load average at start: %@", PollerBench.loadAverage()))
        try serial(seconds: seconds)
        try gateway(seconds: seconds)
        print(String(format: "load average at end: %@", PollerBench.loadAverage()))
    }

    // MARK: serial

    func serial(seconds: Double) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tt-fieldbus-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = dir.path + "/a", b = dir.path + "/b"
        let socat = try Child.start("/usr/bin/socat", ["pty,raw,echo=0,link=\(a)", "pty,raw,echo=0,link=\(b)"])
        defer { socat.stop() }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: b) { usleep(20_000) }
        var files: [String] = []
        for u in 1...8 {
            let f = dir.path + "/unit-\(u).yaml"
            try Self.unitMap(u, plc: "serial: \(a), baud: 19200, parity: N", pollMs: 250).write(toFile: f, atomically: true, encoding: .utf8)
            files.append(f)
        }
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tibet-twin").path
        let sim = try Child.start(bin, ["simulate", "--serial", b] + files.flatMap { ["--map", $0] }, waitFor: "listening \(b) unit 8")
        defer { sim.stop() }
        print("serial: 8 units on one pty pair at 19200 8N1, `tibet-twin simulate --serial` as the slaves")

        let silenceUs = SerialPortSettings(device: a, baud: 19200, parity: .none).frameSilenceUs
        let raw = try PollerBench.onThread { try Self.bareSerial(a, units: 8, seconds: seconds, gapUs: 0) }
        let paced = try PollerBench.onThread { try Self.bareSerial(a, units: 8, seconds: seconds, gapUs: silenceUs) }
        let maps = try files.map { try MapLoader.parse(yaml: String(contentsOfFile: $0, encoding: .utf8), file: $0) }
        let saturated = try PollerBench.pollRun(maps: maps.map { var m = $0; m.plc.pollMs = 1; return m }, seconds: seconds)
        let scheduled = try PollerBench.pollRun(maps: maps, seconds: seconds)
        Self.report(link: "serial, 8 units", raw: raw, paced: paced, pacedLabel: "bare loop keeping t3.5 (\(silenceUs) µs)",
                    saturated: saturated, scheduled: scheduled, seconds: seconds, periodMs: 250)
    }

    static func bareSerial(_ device: String, units: Int32, seconds: Double, gapUs: Int) throws -> Double {
        let c: LibmodbusBaselineClient
        do { c = try LibmodbusBaselineClient(serial: device, baud: 19200) } catch { throw BenchError("\(error)") }
        return try bareLoop(c, units: units, seconds: seconds, gapUs: gapUs)
    }

    /// Reads 10 input registers of unit 1, 2, … `units`, 1, … for `seconds`; reads per second.
    static func bareLoop(_ c: LibmodbusBaselineClient, units: Int32, seconds: Double, gapUs: Int) throws -> Double {
        guard c.connect() == 0 else { throw BenchError("modbus_connect: errno \(c.lastErrno)") }
        defer { c.close() }
        var regs = [UInt16](repeating: 0, count: 10)
        let end = PollerBench.monoNs() + Int64(seconds * 1e9)
        var n = 0
        var unit: Int32 = 0
        let t0 = PollerBench.monoNs()
        while PollerBench.monoNs() < end {
            unit = unit % units + 1
            _ = c.setUnit(unit)
            if gapUs > 0 { usleep(UInt32(gapUs)) }
            if c.readRegisters(0, 10, into: &regs, input: true) == 10 { n += 1 }
        }
        return Double(n) / (Double(PollerBench.monoNs() - t0) / 1e9)
    }

    // MARK: gateway

    func gateway(seconds: Double) throws {
        let python = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"] ?? FileManager.default.currentDirectoryPath + "/.venv/bin/python"
        let script = FileManager.default.currentDirectoryPath + "/scripts/pymodbus_units.py"
        guard FileManager.default.isExecutableFile(atPath: python), FileManager.default.fileExists(atPath: script) else {
            print("gateway: skipped (no pymodbus: run scripts/setup.sh, or set TIBET_TWIN_PYTHON)")
            return
        }
        let units = Array(1...32)
        let peer = try Child.start(python, [script, #"{"mode": "gateway", "units": \#(units), "registers": 20}"#], waitFor: "listening ")
        defer { peer.stop() }
        guard let line = peer.lines.first(where: { $0.hasPrefix("listening ") }), let port = Int(line.dropFirst(10)) else {
            throw BenchError("pymodbus gateway did not say where it listens")
        }
        print("gateway: 32 units behind one TCP port that takes one connection (pymodbus 3.8.6)")
        let raw = try PollerBench.onThread { try Self.bareTCP(port: port, units: 32, seconds: seconds) }
        let maps = try units.map { try MapLoader.parse(yaml: Self.unitMap($0, plc: "host: 127.0.0.1, port: \(port)", pollMs: 100), file: "unit-\($0).yaml") }
        let saturated = try PollerBench.pollRun(maps: maps.map { var m = $0; m.plc.pollMs = 1; return m }, seconds: seconds)
        let scheduled = try PollerBench.pollRun(maps: maps, seconds: seconds)
        Self.report(link: "gateway, 32 units", raw: raw, paced: nil, pacedLabel: "", saturated: saturated,
                    scheduled: scheduled, seconds: seconds, periodMs: 100)
    }

    static func bareTCP(port: Int, units: Int32, seconds: Double) throws -> Double {
        let c: LibmodbusBaselineClient
        do { c = try LibmodbusBaselineClient(host: "127.0.0.1", port: port) } catch { throw BenchError("\(error)") }
        return try bareLoop(c, units: units, seconds: seconds, gapUs: 0)
    }

    // MARK: report

    static func report(link: String, raw: Double, paced: Double?, pacedLabel: String, saturated: PollerBench.PollRun,
                       scheduled: PollerBench.PollRun, seconds: Double, periodMs: Int) {
        let pollerRate = Double(saturated.stats.requests) / seconds
        print(String(format: "  baseline  bare libmodbus loop round-robin over the units: %.0f reads/s", raw))
        if let paced { print(String(format: "  baseline  %@: %.0f reads/s", pacedLabel, paced)) }
        let errs = saturated.stats.errors.map { "\($0.key.rawValue)=\($0.value)" }.sorted().joined(separator: ",")
        print(String(format: "  poller    one shared link, every unit as fast as it can: %.0f reads/s (%.2f× the bare loop%@)%@",
                     pollerRate, pollerRate / raw,
                     paced.map { String(format: ", %.2f× the t3.5 loop", pollerRate / $0) } ?? "",
                     errs.isEmpty ? "" : ", errors " + errs))
        let polls = scheduled.stats.devices.map(\.polls)
        let expected = Int(seconds * 1000) / periodMs
        print(String(format: "  poller    every unit every %d ms: polls per unit min %d / max %d (expected %d), missed slots %d, schedule jitter p50 ≤ %.2f ms, p99 ≤ %.2f ms",
                     periodMs, polls.min() ?? 0, polls.max() ?? 0, expected, scheduled.stats.missedSlots,
                     scheduled.stats.jitter.quantileUpperBoundMs(0.5) ?? 0, scheduled.stats.jitter.quantileUpperBoundMs(0.99) ?? 0))
    }
}

/// A child process for the bench (socat, the simulator, pymodbus), killed at `stop()`.
final class Child: @unchecked Sendable {
    let process = Process()
    private let input = Pipe()
    private let out = Pipe()
    private(set) var lines: [String] = []

    static func start(_ path: String, _ args: [String], waitFor prefix: String? = nil) throws -> Child {
        let c = Child()
        c.process.executableURL = URL(fileURLWithPath: path)
        c.process.arguments = args
        c.process.standardInput = c.input
        c.process.standardOutput = c.out
        c.process.standardError = FileHandle.standardError
        try c.process.run()
        if let prefix {
            var text = ""
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline, !text.split(separator: "\n").contains(where: { $0.hasPrefix(prefix) }) {
                let d = c.out.fileHandleForReading.availableData
                if d.isEmpty { break }
                text += String(decoding: d, as: UTF8.self)
            }
            c.lines = text.split(separator: "\n").map(String.init)
            guard c.lines.contains(where: { $0.hasPrefix(prefix) }) else {
                c.stop()
                throw BenchError("\(path) did not start")
            }
        }
        return c
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
