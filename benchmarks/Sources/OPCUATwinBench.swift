import Appliance
import Commissioning
import Foundation
import Modbus
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `OPCUATwinBench`: the twin from an OPC UA server (docs/opcua.md), beside the asyncua 2.1.0
/// client subscribed to the same nodes in the same run (benchmarks/opcua_baseline.py).
///
/// - A node value change on the server (a device's Mode turned to fault) → its coil 0, p50/p99,
///   at 1 and 200 devices, sampling 50 ms: the appliance runs as its own process with an
///   `opcua` feed; asyncua_server.py serves Dev000…DevNNN.{Mode,PosX,Load} and rewrites them
///   every 50 ms (the model); the baseline is an asyncua client receiving the same change.
/// - 1,000 monitored items at 100 ms, every item changing every 100 ms: CPU per notification
///   of the feed (TwinOPCUASource in this process, CPU of its subscriber thread) beside the
///   asyncua client's CPU per notification.
///
/// Environment: `OPCUA_TWIN_BENCH_N` (default `1,200`), `OPCUA_TWIN_BENCH_SAMPLES` (default 50),
/// `OPCUA_TWIN_BENCH_PUBLISHING_MS` (default 50: the publishing interval of both subscriptions),
/// `OPCUA_TWIN_BENCH_ITEMS` (default 1000), `OPCUA_TWIN_BENCH_SECONDS` (default 10).
struct OPCUATwinBench: BenchSuite {
    let name = "OPCUATwinBench"

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let root = GuardBench().packageRoot()
        let python = env["TIBET_TWIN_PYTHON"] ?? root + "/.venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            print("  skipped: no python with asyncua at \(python) (run scripts/setup.sh)")
            return
        }
        let ns = (env["OPCUA_TWIN_BENCH_N"] ?? "1,200").split(separator: ",").compactMap { Int($0) }
        let samples = Int(env["OPCUA_TWIN_BENCH_SAMPLES"] ?? "50") ?? 50
        try DescriptorLimit.capForSelect()
        print("server: scripts/asyncua_server.py (asyncua 2.1.0); appliance: \(SystemBench.binary()) (its own process);"
              + " baseline: an asyncua client (benchmarks/opcua_baseline.py); PLCs and interlock client in this process")
        print("load average at start: \(SystemBench.loadAverage())")
        let publishing = Int(env["OPCUA_TWIN_BENCH_PUBLISHING_MS"] ?? "50") ?? 50
        print("sampling 50 ms; publishing interval \(publishing) ms for the feed and the asyncua client")
        for n in ns { try latencies(devices: n, samples: samples, publishingMs: publishing, python: python, root: root) }
        let items = Int(env["OPCUA_TWIN_BENCH_ITEMS"] ?? "1000") ?? 1000
        let seconds = Double(env["OPCUA_TWIN_BENCH_SECONDS"] ?? "10") ?? 10
        if items > 0 { try await cpu(items: items, seconds: seconds, python: python, root: root) }
        print("load average at end: \(SystemBench.loadAverage())")
    }

    static func mapYAML(device d: Int, port: Int) -> String {
        let node = String(format: "Dev%03d", d)
        return SystemBench.mapYAML(device: String(format: "dev-%03d", d), port: port, coil: d)
            .replacingOccurrences(of: "max_drift_ms: 200, max_age_ms: 200", with: "max_drift_ms: 2000, max_age_ms: 2000") + """
            twin:
              opcua:
                status: {node: "ns=2;s=\(node).Mode", values: {1: operational, 2: fault}}
                values: {position_x: "ns=2;s=\(node).PosX", load_kg: "ns=2;s=\(node).Load"}
                sampling_ms: 50

            """
    }

    func latencies(devices n: Int, samples: Int, publishingMs: Int, python: String, root: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-opcua-bench-\(getpid())-\(n)")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("maps"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try DemoOPCUAServer(arguments: ["--devices", String(n), "--items", "0"])
        defer { server.stop() }
        server.command("plant 50")
        let probe = try (0..<n).map { try MapLoader.parse(yaml: Self.mapYAML(device: $0, port: 1502), file: "d.yaml") }
        let sim = try PLCSimulator(maps: probe, host: "127.0.0.1", port: 0, initial: ["load_kg": "2500", "position_x": "12.5"])
        defer { sim.stop() }
        for d in 0..<n {
            try Self.mapYAML(device: d, port: sim.endpoints[d].port)
                .write(to: dir.appendingPathComponent(String(format: "maps/dev-%03d.yaml", d)), atomically: true, encoding: .utf8)
        }
        _ = try KeyFiles.generate(out: dir.appendingPathComponent("guard.key").path)
        try """
            node: bench-guard
            maps: maps/
            interlock: {listen: 127.0.0.1:0, unit: 1, allow: [127.0.0.0/8], stop_grace_ms: 100}
            twin:
              feeds:
                - tcp: 127.0.0.1:0
                - opcua: {endpoint: "\(server.endpoint)", publishing_ms: \(publishingMs)}
            audit: {dir: audit, key: guard.key, checkpoint_s: 60}
            http: {listen: 127.0.0.1:0}

            """.write(to: dir.appendingPathComponent("tibet-twin.yaml"), atomically: true, encoding: .utf8)
        let child = try ApplianceProcess(binary: SystemBench.binary(), config: dir.appendingPathComponent("tibet-twin.yaml").path)
        defer { child.stop() }

        // The baseline: an asyncua client subscribed to every Mode node, remembering when each
        // device's Mode became 2.
        let faults = Mutex<[Int: Int64]>([:])
        let ready = Atomic<Bool>(false)
        let baseline = Process()
        baseline.executableURL = URL(fileURLWithPath: python)
        baseline.arguments = [root + "/benchmarks/opcua_baseline.py", "watch", server.endpoint, String(n), "50", String(publishingMs)]
        let bin = Pipe(), bout = Pipe()
        baseline.standardInput = bin
        baseline.standardOutput = bout
        baseline.standardError = FileHandle.nullDevice
        try baseline.run()
        defer {
            try? bin.fileHandleForWriting.close()
            kill(baseline.processIdentifier, SIGTERM)
            baseline.waitUntilExit()
        }
        let reading = Thread {
            var buffer: [UInt8] = []
            while let line = DemoOPCUAServer.readLine(bout.fileHandleForReading, &buffer, timeoutMs: 600_000) {
                if line == "READY" { ready.store(true, ordering: .relaxed) }
                let f = line.split(separator: " ")
                if f.count == 4, f[0] == "chg", let d = Int(f[1]), f[2] == "2", let t = Int64(f[3]) {
                    faults.withLock { if $0[d] == nil { $0[d] = t } }
                }
            }
        }
        reading.start()
        let reader = CoilReader(port: child.interlockPort, count: n, periodUs: 250)
        reader.start()
        defer { reader.stop() }
        guard reader.waitAll(true, count: n, timeoutMs: 120_000) else {
            print("n=\(n): not every permit rose within 120 s; coils \(reader.permitsUp)/\(n)")
            return
        }
        for _ in 0..<3000 where !ready.load(ordering: .relaxed) { usleep(10_000) }
        func now() -> Int64 { SystemTimeSource().now().monotonicNs }
        var coil: [Double] = []
        var receipt: [Double] = []
        var gap: [Double] = []
        for k in 0..<samples {
            let d = k % n
            guard reader.waitFor(coil: d, true, sinceNs: 0, timeoutMs: 10_000) != nil else { continue }
            usleep(UInt32.random(in: 0...20_000))
            faults.withLock { $0[d] = nil }
            guard let answer = server.request("dev \(d) 2"), answer.hasPrefix("ok "), let t0 = Int64(answer.dropFirst(3)) else { continue }
            let tc = reader.waitFor(coil: d, false, sinceNs: t0, timeoutMs: 10_000)
            var tb = faults.withLock { $0[d] }
            for _ in 0..<2000 where tb == nil {
                usleep(1000)
                tb = faults.withLock { $0[d] }
            }
            if let tc { coil.append(Double(tc - t0) / 1e6) }
            if let tb { receipt.append(Double(tb - t0) / 1e6) }
            if let tc, let tb { gap.append(Double(tc - tb) / 1e6) }
            server.command("dev \(d) 1")
            if n < 4 { _ = reader.waitFor(coil: d, true, sinceNs: now(), timeoutMs: 10_000) }
        }
        print("n=\(n) Mode change on the server → coil 0: \(SystemBench.pq(coil))")
        print("n=\(n) baseline, asyncua client receipt:  \(SystemBench.pq(receipt))")
        print("n=\(n) coil after the asyncua receipt:    \(SystemBench.pq(gap))")
    }

    /// CPU per notification with `items` monitored items changing every 100 ms: the feed's
    /// subscriber thread (in this process) beside an asyncua client, both subscribed at once.
    func cpu(items: Int, seconds: Double, python: String, root: String) async throws {
        let server = try DemoOPCUAServer(arguments: ["--items", String(items)])
        defer { server.stop() }
        // One map binds every item (its `values` the items; the registers need not exist for
        // the count: the feed builds the state as it would for the guard).
        var bindings: [String: OPCUABinding] = [:]
        let perDevice = 10
        for d in 0..<(items + perDevice - 1) / perDevice {
            var values: [String: String] = [:]
            for j in 0..<perDevice where d * perDevice + j < items {
                values["v\(j)"] = String(format: "ns=2;s=Many.Item%02d", d * perDevice + j)
            }
            bindings[String(format: "dev-%03d", d)] = OPCUABinding(status: .init(node: "ns=2;s=Crane01.Mode", values: [1: "operational"]),
                                                                   values: values, samplingMs: 100)
        }
        let states = Atomic<Int>(0)
        let maps = try bindings.keys.sorted().enumerated().map { i, d in
            try MapLoader.parse(yaml: SystemBench.mapYAML(device: d, port: 1502, coil: i % 16), file: "\(d).yaml")
        }
        let pipeline = TwinFeedPipeline(parser: try TwinLineParser(maps: maps, keys: [:])) { _ in states.add(1, ordering: .relaxed) }
        let source = TwinOPCUASource(settings: .init(endpoint: server.endpoint, publishingMs: 100, bindings: bindings), pipeline: pipeline)
        try await source.start()
        for _ in 0..<3000 where !source.isSubscribed { usleep(10_000) }
        server.command("churn 100")
        let baseline = Process()
        let out = Pipe()
        baseline.executableURL = URL(fileURLWithPath: python)
        baseline.arguments = [root + "/benchmarks/opcua_baseline.py", "count", server.endpoint, String(items), "100", String(seconds)]
        baseline.standardOutput = out
        baseline.standardError = FileHandle.nullDevice
        try baseline.run()
        usleep(1_000_000)  // both subscribed and receiving (the baseline waits 1 s before counting)
        let tid = Self.threadId(named: "twin-opcua")
        let n0 = source.notifications, c0 = tid.flatMap(Self.threadCPUNs)
        usleep(UInt32(seconds * 1_000_000))
        let n1 = source.notifications, c1 = tid.flatMap(Self.threadCPUNs)
        baseline.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let f = text.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let ours = (c0 != nil && c1 != nil && n1 > n0) ? Double(c1! - c0!) / Double(n1 - n0) : nil
        let theirs = f.count == 2 && f[0] > 0 ? f[1] / f[0] : nil
        func us(_ v: Double?) -> String { v.map { String(format: "%.1f", $0 / 1000) } ?? "?" }
        print("\(items) monitored items at 100 ms: feed \(n1 - n0) notifications in \(Int(seconds)) s (\(states.load(ordering: .relaxed)) twin states),"
              + " \(us(ours)) µs CPU each (its subscriber thread); asyncua client \(f.first.map { String(Int($0)) } ?? "?") notifications,"
              + " \(us(theirs)) µs CPU each (its process)")
        await source.stop()
    }

    /// The id of this process's thread named `name` (/proc/self/task/*/comm).
    static func threadId(named name: String) -> Int? {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return nil }
        for t in tasks {
            if let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8),
               comm.trimmingCharacters(in: .whitespacesAndNewlines) == name { return Int(t) }
        }
        return nil
    }

    /// CPU time (user + system) of thread `tid` of this process, ns.
    static func threadCPUNs(_ tid: Int) -> Int64? {
        guard let s = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8), let close = s.lastIndex(of: ")") else { return nil }
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 13, let u = Int64(f[11]), let k = Int64(f[12]) else { return nil }
        return (u + k) * 1_000_000_000 / Int64(sysconf(Int32(_SC_CLK_TCK)))
    }
}
