import Appliance
import Commissioning
import Foundation
import Modbus
import MQTT
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
    }

    /// Sustained JSON lines applied per second by the feed (parse, validate, order, hand to a
    /// counting sink) beside a bare libmosquitto subscriber on the same topic, both in this
    /// process, fed by `mosquitto_pub -l` (QoS 0) as fast as the broker delivers.
    func throughput(messages n: Int) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-mqtt-rate-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let broker = try DemoBroker(dir: dir.path)
        defer { broker.stop() }
        let map = try MapLoader.parse(yaml: SystemBench.mapYAML(device: "dev-000", port: 1502, coil: 0), file: "dev-000.yaml")
        let feedCount = RateCounter()
        let pipeline = TwinFeedPipeline(parser: try TwinLineParser(maps: [map], keys: [:])) { _ in feedCount.tick() }
        let source = TwinMQTTSource(settings: .init(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-feed",
                                                                         subscriptions: ["plant/twin/+"], qos: 0)),
                                    pipeline: pipeline)
        try await source.start()
        let bareCount = RateCounter()
        let bare = try MQTTClient(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "bench-bare-rate",
                                                       subscriptions: ["plant/twin/+"], qos: 0),
                                  onEvent: { _ in }, onMessage: { _ in bareCount.tick() })
        try bare.start()
        defer { bare.stop() }
        for _ in 0..<500 where !(source.isSubscribed && bare.isConnected) { usleep(10_000) }
        usleep(200_000)
        let start = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        var text = ""
        text.reserveCapacity(n * 150)
        for i in 1...n {
            text += #"{"device":"dev-000","ts":"\#(start)","seq":\#(i),"status":"operational","values":{"position_x":12.5,"load_kg":2500}}"# + "\n"
        }
        let input = Data(text.utf8)
        let t0 = SystemTimeSource().now().monotonicNs
        let pub = Process()
        pub.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_pub")
        pub.arguments = ["-h", "127.0.0.1", "-p", String(broker.port), "-t", "plant/twin/dev-000", "-l", "-q", "0"]
        let pipe = Pipe()
        pub.standardInput = pipe
        try pub.run()
        let writer = Thread {
            pipe.fileHandleForWriting.write(input)
            try? pipe.fileHandleForWriting.close()
        }
        writer.start()
        pub.waitUntilExit()
        // Done when neither count moved for half a second.
        var last = (feedCount.count, bareCount.count)
        while true {
            usleep(500_000)
            let now = (feedCount.count, bareCount.count)
            if now == last { break }
            last = now
        }
        await source.stop()
        func rate(_ c: RateCounter) -> Double {
            let s = Double(c.lastNs - t0) / 1e9
            return s > 0 ? Double(c.count) / s : 0
        }
        let f = rate(feedCount), b = rate(bareCount)
        print(String(format: "%d JSON lines: feed applied %d at %.0f/s; bare libmosquitto subscriber received %d at %.0f/s; ratio %.2f (goal ≥ 0.8)",
                     n, feedCount.count, f, bareCount.count, b, b > 0 ? f / b : 0))
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
