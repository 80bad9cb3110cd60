import Appliance
import Commissioning
import Foundation
import Modbus
import MQTT
import SparkplugB
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `MQTTBench`: the twin over a local mosquitto. The appliance runs as its own process
/// (`.build/release/tibet-twin run`) with an `mqtt` feed, the PLCs are the in-process simulator,
/// a twin publisher in this process (libmosquitto, QoS 1) sends every device's line every 50 ms,
/// and an interlock client reads the coils every 0.25 ms.
///
/// - A twin message turning a device to fault → its coil 0, p50/p99, at 1 and 200 devices;
///   beside the baseline: a bare libmosquitto subscriber in this process receiving the same
///   message in the same run (goal: the coil within 2 ms of the bare receipt at p99).
///
/// Environment: `MQTT_BENCH_N` (default `1,200`), `MQTT_BENCH_SAMPLES` (default 100).
struct MQTTBench: BenchSuite {
    let name = "MQTTBench"

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let ns = (env["MQTT_BENCH_N"] ?? "1,200").split(separator: ",").compactMap { Int($0) }
        let samples = Int(env["MQTT_BENCH_SAMPLES"] ?? "100") ?? 100
        try DescriptorLimit.capForSelect()
        print("broker: /usr/sbin/mosquitto on loopback; appliance: \(SystemBench.binary()) (its own process);"
              + " publisher, bare subscriber, PLCs and interlock client in this process")
        print("load average at start: \(SystemBench.loadAverage())")
        for n in ns { try latencies(devices: n, samples: samples) }
        let messages = Int(env["MQTT_BENCH_MESSAGES"] ?? "100000") ?? 100_000
        if messages > 0 { try await throughput(messages: messages) }
        let tables = Int(env["MQTT_BENCH_PUBLISH_TABLES"] ?? "2000") ?? 2000
        if tables > 0 { try publishCost(tables: tables) }
    }

    /// Sustained twin messages applied per second by the feed (parse, validate, order, hand to a
    /// counting sink) beside `mosquitto_sub` on the same topic in the same run, and the CPU the
    /// feed's network thread spent per message (`/proc/self/task/<tid>/stat`, the thread that
    /// appeared when the feed started). JSON lines come from `mosquitto_pub -l`; Sparkplug DDATA
    /// (after an NBIRTH and a DBIRTH) from a libmosquitto publisher in this process, encoded by
    /// our edge node code. Both at QoS 0, as fast as the broker delivers.
    func throughput(messages n: Int) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-mqtt-rate-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let broker = try DemoBroker(dir: dir.path)
        defer { broker.stop() }
        let binding = """
            twin:
              sparkplug: {group: Bench, node: Twin, device: Dev0, status: Mode, status_codes: {0: operational, 1: fault},
                          values: {position_x: X, load_kg: Load}}

            """
        let map = try MapLoader.parse(yaml: SystemBench.mapYAML(device: "dev-000", port: 1502, coil: 0) + binding, file: "dev-000.yaml")

        // JSON lines.
        let start = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        var text = ""
        text.reserveCapacity(n * 150)
        for i in 1...n {
            text += #"{"device":"dev-000","ts":"\#(start)","seq":\#(i),"status":"operational","values":{"position_x":12.5,"load_kg":2500}}"# + "\n"
        }
        let json = try await rate(label: "JSON lines", messages: n, broker: broker, dir: dir.path, map: map,
                                  settings: .init(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-feed",
                                                                       subscriptions: ["plant/twin/+"], qos: 0)),
                                  topic: "plant/twin/dev-000") {
            let pub = Process()
            pub.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_pub")
            pub.arguments = ["-h", "127.0.0.1", "-p", String(broker.port), "-t", "plant/twin/dev-000", "-l", "-q", "0"]
            let pipe = Pipe()
            pub.standardInput = pipe
            try pub.run()
            let input = Data(text.utf8)
            let writer = Thread {
                pipe.fileHandleForWriting.write(input)
                try? pipe.fileHandleForWriting.close()
            }
            writer.start()
            pub.waitUntilExit()
        }

        // Sparkplug B DDATA.
        guard let bound = map.sparkplug else { throw BenchError("the bench map has no Sparkplug binding") }
        let sparkplug = TwinMQTTSource.SparkplugSettings(group: "Bench", hostId: "bench-host", bindings: ["dev-000": bound])
        let sp = try await rate(label: "Sparkplug DDATA", messages: n, broker: broker, dir: dir.path, map: map,
                                settings: .init(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-feed-sp", qos: 0),
                                                sparkplug: sparkplug),
                                topic: "spBv1.0/Bench/DDATA/Twin/Dev0") {
            var edge = SparkplugEdgeNode(group: "Bench", node: "Twin")
            let pub = try MQTTClient(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-edge"),
                                     onEvent: { _ in }, onMessage: { _ in })
            try pub.start()
            defer { pub.stop() }
            for _ in 0..<500 where !pub.isConnected { usleep(10_000) }
            // Timestamps in the past, one ms apart: the feed orders states by them, and refuses future ones.
            let now = UInt64(SystemTimeSource().now().wallNs / 1_000_000) - UInt64(n) - 1000
            let metrics = [SparkplugEdgeMetric(name: "Mode", alias: 1, value: .int32(0)),
                           SparkplugEdgeMetric(name: "X", alias: 2, value: .int64(12)),
                           SparkplugEdgeMetric(name: "Load", alias: 3, value: .int64(2500))]
            try pub.publish(topic: edge.topic(.nbirth), payload: edge.birth(metrics: [], nowMs: now), qos: 0)
            try pub.publish(topic: edge.topic(.dbirth, device: "Dev0"), payload: edge.deviceBirth(metrics: metrics, nowMs: now), qos: 0)
            let topic = edge.topic(.ddata, device: "Dev0")
            for i in 0..<n {
                    let payload = edge.data(metrics: [SparkplugEdgeMetric(name: "X", alias: 2, value: .int64(Int64(i % 20)))], nowMs: now + UInt64(i) + 1)
                while (try? pub.publish(topic: topic, payload: payload, qos: 0)) == nil { usleep(100) }
            }
            // Let libmosquitto's network thread send what is queued.
            usleep(2_000_000)
        }
        print(String(format: "Sparkplug DDATA applied vs JSON lines applied: %.2f; CPU per message: JSON %.1f µs, Sparkplug %.1f µs (feed thread)",
                     json.rate > 0 ? sp.rate / json.rate : 0, json.cpuUs, sp.cpuUs))
    }

    /// One rate run; returns the feed's rate and its thread's CPU per applied message (µs).
    func rate(label: String, messages n: Int, broker: DemoBroker, dir: String, map: DeviceMap, settings: TwinMQTTSource.Settings,
              topic: String, publish: () throws -> Void) async throws -> (rate: Double, cpuUs: Double) {
        let feedCount = RateCounter()
        let pipeline = TwinFeedPipeline(parser: try TwinLineParser(maps: [map], keys: [:])) { _ in feedCount.tick() }
        let before = ThreadCPU.tasks()
        let source = TwinMQTTSource(settings: settings, pipeline: pipeline)
        try await source.start()
        for _ in 0..<500 where !source.isSubscribed { usleep(10_000) }
        let feedThreads = ThreadCPU.tasks().subtracting(before)
        // The baseline: mosquitto_sub on the same topic, one line per message with its arrival time.
        let out = dir + "/sub-\(label.hashValue).txt"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        let sub = Process()
        sub.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_sub")
        sub.arguments = ["-h", "127.0.0.1", "-p", String(broker.port), "-t", topic, "-q", "0", "-F", "%U"]
        sub.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        try sub.run()
        // SIGKILL: a child inherits this process's blocked-signal mask, SIGTERM may never arrive.
        defer {
            if sub.isRunning { kill(sub.processIdentifier, SIGKILL) }
            sub.waitUntilExit()
        }
        usleep(500_000)
        let cpu0 = ThreadCPU.ticks(feedThreads), rusage0 = ThreadCPU.processSeconds()
        let t0Wall = Double(SystemTimeSource().now().wallNs) / 1e9
        let t0 = SystemTimeSource().now().monotonicNs
        try publish()
        func subLines() -> [Substring] {
            (try? String(contentsOfFile: out, encoding: .utf8))?.split(separator: "\n") ?? []
        }
        var last = (feedCount.count, subLines().count)
        while true {
            usleep(500_000)
            let now = (feedCount.count, subLines().count)
            if now == last { break }
            last = now
        }
        let cpu1 = ThreadCPU.ticks(feedThreads), rusage1 = ThreadCPU.processSeconds()
        await source.stop()
        let lines = subLines()
        let subRate = lines.last.flatMap { Double($0) }.map { s in s > t0Wall ? Double(lines.count) / (s - t0Wall) : 0 } ?? 0
        let s = Double(feedCount.lastNs - t0) / 1e9
        let feedRate = s > 0 ? Double(feedCount.count) / s : 0
        let cpuUs = feedCount.count > 0 ? Double(cpu1 - cpu0) / Double(ThreadCPU.ticksPerSecond) * 1e6 / Double(feedCount.count) : 0
        print(String(format: "%d %@: feed applied %d at %.0f/s; mosquitto_sub received %d at %.0f/s; ratio %.2f (goal ≥ 0.8)",
                     n, label, feedCount.count, feedRate, lines.count, subRate, subRate > 0 ? feedRate / subRate : 0))
        print(String(format: "   CPU per message applied: %.1f µs on the feed's thread; the whole bench process %.1f µs (publisher and all)",
                     cpuUs, feedCount.count > 0 ? (rusage1 - rusage0) * 1e6 / Double(feedCount.count) : 0))
        return (feedRate, cpuUs)
    }

    /// `publish:`'s cost: the CPU of the publisher's two threads (its diff-and-encode thread and
    /// its libmosquitto thread) per permit table with one of 200 devices changed (a DDATA and a
    /// JSON message out), to a local mosquitto; tables are offered one at a time.
    func publishCost(tables rounds: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-mqtt-publish-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let broker = try DemoBroker(dir: dir.path)
        defer { broker.stop() }
        let maps = try (0..<200).map { i in
            try MapLoader.parse(yaml: SystemBench.mapYAML(device: String(format: "dev-%03d", i), port: 1502, coil: i), file: "d\(i).yaml")
        }
        let layout = try InterlockLayout(maps: maps)
        var devices = Dictionary(uniqueKeysWithValues: maps.map {
            ($0.device, DeviceDiagnostics(reason: .ok, driftMs: 1, physicalAgeMs: 10, twinAgeMs: 20, permits: ["move"]))
        })
        let up = PermitTable(layout: layout, heartbeat: 1, healthy: true, devices: devices)
        devices["dev-100"] = DeviceDiagnostics(reason: .twinStale, physicalAgeMs: 10, twinAgeMs: 400)
        let down = PermitTable(layout: layout, heartbeat: 2, healthy: true, devices: devices)
        let before = ThreadCPU.tasks()
        let publisher = PermitPublisher(settings: .init(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-publish"),
                                                        sparkplug: .init(group: "Guards", node: "bench"), json: .init(), node: "bench"))
        try publisher.start()
        defer { publisher.stop() }
        let threads = ThreadCPU.tasks().subtracting(before)
        for _ in 0..<500 where !publisher.snapshot.connected { usleep(10_000) }
        publisher.offer(up)
        for _ in 0..<500 where (publisher.snapshot.published["dbirth"] ?? 0) < 200 { usleep(10_000) }
        usleep(300_000)
        let base = publisher.snapshot.published["ddata"] ?? 0
        let c0 = ThreadCPU.ticks(threads)
        let t0 = SystemTimeSource().now().monotonicNs
        for i in 0..<rounds {
            publisher.offer(i % 2 == 0 ? down : up)
            // One table at a time: wait until its DDATA went out.
            for _ in 0..<20_000 where (publisher.snapshot.published["ddata"] ?? 0) < base + UInt64(i + 1) { usleep(50) }
        }
        let wall = Double(SystemTimeSource().now().monotonicNs - t0) / 1e9
        let cpuUs = Double(ThreadCPU.ticks(threads) - c0) / Double(ThreadCPU.ticksPerSecond) * 1e6
        let sent = (publisher.snapshot.published["ddata"] ?? 0) - base
        print(String(format: "publish: 200 devices, one device changing per table: %d tables in %.2f s, %llu DDATA (and as many JSON) sent;"
                        + " %.0f µs CPU per table on the publisher's two threads (diff of 200 devices, encode, queue, send)",
                     rounds, wall, sent, cpuUs / Double(rounds)))
    }

    func latencies(devices n: Int, samples: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-mqtt-bench-\(getpid())-\(n)")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("maps"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let broker = try DemoBroker(dir: dir.path)
        defer { broker.stop() }
        let names = (0..<n).map { String(format: "dev-%03d", $0) }
        let probe = try names.enumerated().map { i, d in try MapLoader.parse(yaml: SystemBench.mapYAML(device: d, port: 1502, coil: i), file: "\(d).yaml") }
        let sim = try PLCSimulator(maps: probe, host: "127.0.0.1", port: 0, initial: ["load_kg": "2500", "position_x": "12.5"])
        defer { sim.stop() }
        for (i, d) in names.enumerated() {
            try SystemBench.mapYAML(device: d, port: sim.endpoints[i].port, coil: i)
                .write(to: dir.appendingPathComponent("maps/\(d).yaml"), atomically: true, encoding: .utf8)
        }
        _ = try KeyFiles.generate(out: dir.appendingPathComponent("guard.key").path)
        try """
            node: bench-guard
            maps: maps/
            interlock: {listen: 127.0.0.1:0, unit: 1, allow: [127.0.0.0/8], stop_grace_ms: 100}
            twin:
              feeds:
                - tcp: 127.0.0.1:0
                - mqtt: {broker: 127.0.0.1:\(broker.port), topics: [plant/twin/+], qos: 1}
            audit: {dir: audit, key: guard.key, checkpoint_s: 60}
            http: {listen: 127.0.0.1:0}

            """.write(to: dir.appendingPathComponent("tibet-twin.yaml"), atomically: true, encoding: .utf8)
        let child = try ApplianceProcess(binary: SystemBench.binary(), config: dir.appendingPathComponent("tibet-twin.yaml").path)
        defer { child.stop() }

        // The baseline: a bare subscriber, remembering when each device's first fault arrived.
        let faults = Mutex<[String: Int64]>([:])
        let bare = try MQTTClient(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-bare",
                                                       subscriptions: ["plant/twin/+"]),
                                  onEvent: { _ in }, onMessage: { m in
                                      let t = SystemTimeSource().now().monotonicNs
                                      guard m.payload.count > 0, let text = String(bytes: m.payload, encoding: .utf8),
                                            text.contains("\"fault\"") else { return }
                                      let device = String(m.topic.split(separator: "/").last ?? "")
                                      faults.withLock { if $0[device] == nil { $0[device] = t } }
                                  })
        try bare.start()
        defer { bare.stop() }
        let publisher = try BenchTwinPublisher(port: broker.port, devices: names)
        defer { publisher.stop() }
        let reader = CoilReader(port: child.interlockPort, count: n, periodUs: 250)
        reader.start()
        defer { reader.stop() }
        guard reader.waitAll(true, count: n, timeoutMs: 60_000) else {
            print("n=\(n): not every permit rose within 60 s; coils \(reader.permitsUp)/\(n)")
            return
        }
        func now() -> Int64 { SystemTimeSource().now().monotonicNs }
        var coil: [Double] = []
        var receipt: [Double] = []
        var gap: [Double] = []
        for k in 0..<samples {
            let d = k % n
            guard reader.waitFor(coil: d, true, sinceNs: 0, timeoutMs: 5000) != nil else { continue }
            usleep(UInt32.random(in: 0...20_000))
            faults.withLock { $0[names[d]] = nil }
            let t0 = now()
            publisher.send(device: names[d], status: "fault")
            let tc = reader.waitFor(coil: d, false, sinceNs: t0, timeoutMs: 5000)
            var tb = faults.withLock { $0[names[d]] }
            for _ in 0..<1000 where tb == nil {
                usleep(1000)
                tb = faults.withLock { $0[names[d]] }
            }
            if let tc { coil.append(Double(tc - t0) / 1e6) }
            if let tb { receipt.append(Double(tb - t0) / 1e6) }
            if let tc, let tb { gap.append(Double(tc - tb) / 1e6) }
            publisher.send(device: names[d], status: "operational")
            if n < 4 { _ = reader.waitFor(coil: d, true, sinceNs: now(), timeoutMs: 5000) }
        }
        print("n=\(n) twin fault over MQTT → coil 0:      \(SystemBench.pq(coil))")
        print("n=\(n) baseline, bare libmosquitto receipt: \(SystemBench.pq(receipt))")
        print("n=\(n) coil after bare receipt:             \(SystemBench.pq(gap))  (goal p99 ≤ 2 ms)")
    }
}

/// The twin: every device's line every 50 ms on `plant/twin/<device>`, and at once on `send`.
final class BenchTwinPublisher: @unchecked Sendable {
    let client: MQTTClient
    let devices: [String]
    private let status = Mutex<[String: String]>([:])
    private let seq = Atomic<Int>(Int(Date().timeIntervalSince1970 * 1000))
    private let stopping = Atomic<Bool>(false)
    private var thread: Thread?

    init(port: Int, devices: [String]) throws {
        self.devices = devices
        client = try MQTTClient(options: MQTTOptions(host: "127.0.0.1", port: port, clientId: "bench-twin"), onEvent: { _ in }, onMessage: { _ in })
        try client.start()
        let t = Thread { [self] in
            while !stopping.load(ordering: .relaxed) {
                for d in devices { publish(d) }
                usleep(50_000)
            }
        }
        thread = t
        t.start()
    }

    func send(device: String, status s: String) {
        status.withLock { $0[device] = s }
        publish(device)
    }

    private func publish(_ device: String) {
        let s = status.withLock { $0[device] } ?? "operational"
        let n = seq.add(1, ordering: .relaxed).newValue
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        let line = #"{"device":"\#(device)","ts":"\#(ts)","seq":\#(n),"status":"\#(s)","values":{"position_x":12.5,"load_kg":2500}}"#
        try? client.publish(topic: "plant/twin/\(device)", payload: Array(line.utf8), qos: 1)
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        usleep(100_000)
        client.stop()
    }
}

/// Counts events and remembers when the last one came (monotonic ns).
final class RateCounter: Sendable {
    private let n = Atomic<Int>(0)
    private let last = Atomic<Int64>(0)
    func tick() {
        n.add(1, ordering: .relaxed)
        last.store(SystemTimeSource().now().monotonicNs, ordering: .relaxed)
    }
    var count: Int { n.load(ordering: .relaxed) }
    var lastNs: Int64 { last.load(ordering: .relaxed) }
}

/// CPU time of threads of this process (`/proc/self/task/<tid>/stat`, utime + stime in clock
/// ticks) and of the whole process (getrusage).
enum ThreadCPU {
    static var ticksPerSecond: Int { sysconf(Int32(_SC_CLK_TCK)) }

    static func tasks() -> Set<Int> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).compactMap { Int($0) })
    }

    static func ticks(_ tids: Set<Int>) -> Int {
        tids.reduce(0) { sum, tid in
            guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return sum }
            // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, let u = Int(fields[11]), let s = Int(fields[12]) else { return sum }
            return sum + u + s
        }
    }

    static func processSeconds() -> Double {
        var r = rusage()
        getrusage(RUSAGE_SELF.rawValue, &r)
        return Double(r.ru_utime.tv_sec) + Double(r.ru_utime.tv_usec) / 1e6 + Double(r.ru_stime.tv_sec) + Double(r.ru_stime.tv_usec) / 1e6
    }
}
