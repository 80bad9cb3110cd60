import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// The appliance with its twin over MQTT: a real mosquitto, a paho-mqtt twin, the PLC simulator
/// and pymodbus reading the coils.
struct MQTTSystem {
    let broker: MosquittoBroker
    let sim: SimulatorChild
    let rig: ApplianceRig
    let coils: CoilWatcher
    var twin: PythonTwin?

    static func start(broker: MosquittoBroker, feedExtra: String = "", startTwin: Bool = true) async throws -> MQTTSystem {
        let scratch = try TempDir("tibet-plc")
        let sim = try startCranePLC(dir: scratch)
        let feed = "    - mqtt: {broker: 127.0.0.1:\(broker.port), topics: [plant/twin/+], topic_names_device: true, "
            + "reconnect_min_ms: 50, reconnect_max_ms: 500\(feedExtra)}"
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: sim.port)], twinFeeds: feed)
        try await rig.start()
        let twin = startTwin ? try PythonTwin(port: broker.port, mqttTopic: "plant/twin/crane-01", dir: rig.dir) : nil
        let coils = try CoilWatcher(port: rig.interlockPort, count: 2, dir: rig.dir)
        return MQTTSystem(broker: broker, sim: sim, rig: rig, coils: coils, twin: twin)
    }

    func stopAndVerify(sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
        let code = await rig.terminate()
        #expect(code == 0, "exit after SIGTERM\n\(rig.transcript)", sourceLocation: sourceLocation)
        let (vcode, vout) = try rig.verifyAudit()
        #expect(vcode == 0, "audit verify: \(vout)", sourceLocation: sourceLocation)
        _ = sim.quit()
    }

    func reasonCode() throws -> Int64? { try intentReasonCode(url: rig.url) }
}

@Suite("Twin over MQTT, end to end", .serialized)
struct MQTTEndToEndTests {
    @Test func twinOverMQTTPermitsThenAFaultMessageDropsTheCoil() async throws {
        let broker = try MosquittoBroker()
        let s = try await MQTTSystem.start(broker: broker)
        #expect(await s.coils.becomes(0, true), "in sync over MQTT → permit\n\(s.rig.transcript)\n\(broker.log)")
        await s.twin?.command("status fault")
        #expect(await s.coils.becomes(0, false), "the twin says fault → coil 0")
        #expect(try s.reasonCode() == Int64(ReasonCode.statusMismatch.rawValue))
        await s.twin?.command("status operational")
        #expect(await s.coils.becomes(0, true), "agrees again → re-armed")
        let metrics = String(decoding: try await httpGet(s.rig.url + "/metrics"), as: UTF8.self)
        #expect(metrics.contains("tibet_twin_twin_lines_accepted_total{source=\"mqtt:127.0.0.1:\(broker.port)\"}"), "\(metrics.prefix(400))")
        try await s.stopAndVerify()
    }

    @Test func brokerRestartMidRunGoesSilentBlocksAndRecoversAfterReconnect() async throws {
        let broker = try MosquittoBroker()
        let s = try await MQTTSystem.start(broker: broker)
        #expect(await s.coils.becomes(0, true), "\(s.rig.transcript)")
        broker.stop()
        #expect(await s.coils.becomes(0, false), "the broker is gone: the twin is silent and goes stale")
        #expect(try s.reasonCode() == Int64(ReasonCode.twinStale.rawValue))
        try broker.start()
        #expect(await s.coils.becomes(0, true, within: 30), "reconnected and re-armed\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("twin_feed_lost"), "the outage is on the record")
        #expect(show.contains("connection_lost"))
        #expect(show.contains("twin_feed_restored"))
    }

    @Test func persistentSessionLostInABrokerRestartIsAuditedAsSessionExpired() async throws {
        let broker = try MosquittoBroker()
        let s = try await MQTTSystem.start(broker: broker, feedExtra: ", clean_session: false")
        #expect(await s.coils.becomes(0, true), "\(s.rig.transcript)")
        // The broker keeps no persistence: restarted, it has no session for the appliance.
        broker.stop()
        #expect(await s.coils.becomes(0, false), "the broker is gone: the twin goes stale")
        try broker.start()
        #expect(await s.coils.becomes(0, true, within: 30), "reconnected and re-armed\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        let tokens = try s.rig.auditShow(json: true).split(separator: "\n").filter { $0.contains("twin_feed_lost") }
        #expect(tokens.contains { $0.contains("connection_lost") }, "the outage: \(tokens)")
        #expect(tokens.contains { $0.contains("session_expired") }, "the lost session is named: \(tokens)")
    }

    @Test func brokerRefusingCredentialsIsAClearErrorAndThePermitStaysZero() async throws {
        let broker = try MosquittoBroker(users: ["tibet": "the-right-one"])
        let s0 = try TempDir("tibet-pw")
        defer { s0.cleanup() }
        try s0.write("password", "not-the-right-one\n")
        chmod(s0.file("password"), 0o600)
        let s = try await MQTTSystem.start(broker: broker, feedExtra: ", username: tibet, password_file: \(s0.file("password"))",
                                           startTwin: false)
        #expect(await eventually(within: 20) { s.rig.transcript.contains("CONNACK refused") }, "\(s.rig.transcript)")
        // Someone publishes a perfect twin line through the broker with valid credentials: it never reaches us.
        let ts = RFC3339.format(wallNs: SystemTimeSource().now().wallNs)
        try PahoPublish.run(broker, [.init(topic: "plant/twin/crane-01", payload:
            #"{"device":"crane-01","ts":"\#(ts)","seq":1,"status":"operational","values":{"position_x":12.5,"load_kg":2500}}"#)])
        try await Task.sleep(for: .milliseconds(500))
        #expect(s.coils.history.allSatisfy { $0.first == "0" }, "the permit never rose: \(s.coils.history)")
        #expect(try s.reasonCode() == Int64(ReasonCode.noTwin.rawValue))
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("twin_feed_lost"))
        #expect(show.contains("\"refused\""), "the cause is named")
    }

    @Test func demoRunsItsTwinOverMQTT() async throws {
        let dir = try TempDir("tibet-demo-mqtt")
        defer { dir.cleanup() }
        let child = try Child(binaryURL().path, ["demo", "--twin", "mqtt", "--audit", dir.file("audit")], name: "demo")
        #expect(await eventually(within: 120) { !child.isRunning })
        #expect(child.waitForExit(timeout: 5) == 0, "\(child.transcript)")
        let out = child.stdoutLines.joined(separator: "\n")
        #expect(out.contains("twin feed       mqtt 127.0.0.1:"), "\(out)")
        #expect(out.contains("Every scenario came out as it must."), "\(out)")
        #expect(try runTibetTwin(["audit", "verify", dir.file("audit")]).0 == 0)
    }

    @Test func oldRetainedMessageNeverPermits() async throws {
        let broker = try MosquittoBroker()
        // The twin's last words an hour ago, retained at the broker: in sync with the PLC's values.
        let old = RFC3339.format(wallNs: SystemTimeSource().now().wallNs - 3_600_000_000_000)
        let line = #"{"device":"crane-01","ts":"\#(old)","seq":5,"status":"operational","values":{"position_x":12.5,"load_kg":2500}}"#
        #expect(try broker.publish(["-t", "plant/twin/crane-01", "-m", line, "-r", "-q", "1"]) == 0)
        let s = try await MQTTSystem.start(broker: broker, startTwin: false)
        #expect(await eventually(within: 20) { (try? s.reasonCode()) == Int64(ReasonCode.drift.rawValue) || (try? s.reasonCode()) == Int64(ReasonCode.twinStale.rawValue) },
                "the retained line is judged by its ts\n\(s.rig.transcript)")
        let metrics = String(decoding: try await httpGet(s.rig.url + "/metrics"), as: UTF8.self)
        #expect(metrics.contains("tibet_twin_twin_lines_accepted_total{source=\"mqtt:127.0.0.1:\(broker.port)\"} 1"),
                "the retained line was received and accepted (then judged by its ts)")
        try await Task.sleep(for: .milliseconds(500))
        #expect(s.coils.history.allSatisfy { $0.first == "0" }, "never a 1: \(s.coils.history)")
        try await s.stopAndVerify()
    }
}
