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
