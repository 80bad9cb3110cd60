import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// The rig's crane map with its twin bound to the asyncua test server's Crane01 nodes (Load by
/// namespace URI), optionally with the Beat heartbeat.
func opcuaMapYAML(port: Int, heartbeatStallMs: Int? = nil) -> String {
    rigMapYAML(port: port) + """
        twin:
          opcua:
            status: {node: "ns=2;s=Crane01.Mode", values: {1: operational, 2: fault}}
            values: {position_x: "ns=2;s=Crane01.PosX", load_kg: "nsu=urn:tibet-twin:test;s=Crane01.Load"}
            sampling_ms: 50

        """ + (heartbeatStallMs.map { "    heartbeat: {node: \"ns=2;s=Crane01.Beat\", max_stall_ms: \($0)}\n" } ?? "")
}

/// The appliance with its twin served by a real asyncua server running the crane model, the PLC
/// simulator, and pymodbus reading the coils.
struct OPCUASystem {
    var server: OPCUAPeer
    let sim: SimulatorChild
    let rig: ApplianceRig
    let coils: CoilWatcher

    /// `secured`: the server offers Basic256Sha256 SignAndEncrypt with its own certificate
    /// (openssl), the appliance's certificate is made by `tibet-twin opcua cert`, the server's is
    /// in the appliance's trust directory, and the feed asks for SignAndEncrypt.
    static func start(heartbeatStallMs: Int? = nil, secured: Bool = false) async throws -> OPCUASystem {
        var security = ""
        let server: OPCUAPeer
        if secured {
            let serverCert = try makeServerCertificate()
            let keys = try TempDir("tibet-opcua-keys")
            let (code, _, err) = try runTibetTwin(["opcua", "cert", "--out", keys.file("client"), "--uri", "urn:tibet-twin:e2e", "--host", "localhost"])
            guard code == 0 else { throw SimpleError("opcua cert: \(err)") }
            try FileManager.default.createDirectory(atPath: keys.file("trust"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: serverCert + "/cert.der", toPath: keys.file("trust/server.der"))
            server = try OPCUAPeer.asyncua(certificateDirectory: serverCert)
            security = ", security: {policy: Basic256Sha256, mode: SignAndEncrypt, certificate: \"\(keys.file("client/cert.der"))\", "
                + "private_key: \"\(keys.file("client/key.pem"))\", trust_dir: \"\(keys.file("trust"))\"}"
        } else {
            server = try OPCUAPeer.asyncua()
        }
        try server.command("set Load float 2500")
        try server.command("run 50")
        let scratch = try TempDir("tibet-plc")
        let sim = try startPLC({ rigMapYAML(port: $0) }, dir: scratch)
        _ = sim.command("set position_x 12.5")
        _ = sim.command("set load_kg 2500")
        let feed = "    - opcua: {endpoint: \"\(server.endpoint)\", publishing_ms: 50, reconnect_min_ms: 50, reconnect_max_ms: 500, timeout_ms: 1000\(security)}"
        let rig = try ApplianceRig(maps: ["crane-01": opcuaMapYAML(port: sim.port, heartbeatStallMs: heartbeatStallMs)], twinFeeds: feed)
        try await rig.start()
        let coils = try CoilWatcher(port: rig.interlockPort, count: 2, dir: rig.dir)
        return OPCUASystem(server: server, sim: sim, rig: rig, coils: coils)
    }

    func stopAndVerify(sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
        let code = await rig.terminate()
        #expect(code == 0, "exit after SIGTERM\n\(rig.transcript)", sourceLocation: sourceLocation)
        let (vcode, vout) = try rig.verifyAudit()
        #expect(vcode == 0, "audit verify: \(vout)", sourceLocation: sourceLocation)
        _ = sim.quit()
        server.stop()
    }

    func status() throws -> JSONValue {
        try JSONParser.parse(try runTibetTwin(["status", "--url", rig.url, "--json"]).1)
    }

    func reasonCode() throws -> Int64? {
        try status()["devices"]?["crane-01"]?["intents"]?["move_left"]?["reason_code"]?.intValue
    }

    func twinQuality(_ value: String) throws -> String? {
        try status()["devices"]?["crane-01"]?["values"]?[value]?["twin_quality"]?.stringValue
    }
}

@Suite("Twin over OPC UA (asyncua), end to end", .serialized)
struct OPCUATwinEndToEndTests {
    @Test func craneModelServedOverOPCUAPermitsAndTheModelsFaultDropsTheCoil() async throws {
        let s = try await OPCUASystem.start()
        #expect(await s.coils.becomes(0, true, within: 30), "in sync over OPC UA → permit\n\(s.rig.transcript)")
        #expect(try s.twinQuality("load_kg") == "good")
        #expect(try s.status()["devices"]?["crane-01"]?["twin_quality"]?["timestamp"]?.stringValue == "source")
        try s.server.command("set Mode int32 2")
        #expect(await s.coils.becomes(0, false), "the model says fault → coil 0")
        #expect(try s.reasonCode() == Int64(ReasonCode.statusMismatch.rawValue))
        try s.server.command("set Mode int32 1")
        #expect(await s.coils.becomes(0, true), "the model agrees again → re-armed")
        let metrics = String(decoding: try await httpGet(s.rig.url + "/metrics"), as: UTF8.self)
        #expect(metrics.contains("tibet_twin_twin_lines_accepted_total{source=\"opcua:\(s.server.endpoint)\"}"), "\(metrics.prefix(400))")
        try await s.stopAndVerify()
    }

    @Test func uncertainAndBadValuesAreMissingAndBlockUntilGoodAgain() async throws {
        let s = try await OPCUASystem.start()
        #expect(await s.coils.becomes(0, true, within: 30), "\(s.rig.transcript)")
        try s.server.command("set Load float 2500 UncertainLastUsableValue")
        #expect(await s.coils.becomes(0, false), "Uncertain is not Good: load_kg is missing and has a tolerance")
        #expect(try s.reasonCode() == Int64(ReasonCode.valueDeviation.rawValue))
        #expect(await eventually(within: 10) { (try? s.twinQuality("load_kg")) == "uncertain: UncertainLastUsableValue" },
                "\((try? s.twinQuality("load_kg")) ?? "nil")")
        try s.server.command("set Load float 2500")
        #expect(await s.coils.becomes(0, true), "Good again → re-armed")
        try s.server.command("set Load float 2500 BadSensorFailure")
        #expect(await s.coils.becomes(0, false), "Bad → missing → blocked")
        #expect(await eventually(within: 10) { (try? s.twinQuality("load_kg")) == "bad: BadSensorFailure" })
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("twin_quality"), "the decision tokens carry the twin's per-value quality")
        #expect(show.contains("BadSensorFailure"))
    }

    @Test func serverRestartMidRunDropsThePermitAndItReturnsAfterReconnect() async throws {
        var s = try await OPCUASystem.start()
        #expect(await s.coils.becomes(0, true, within: 30), "\(s.rig.transcript)")
        let port = s.server.port
        s.server.stop()
        #expect(await s.coils.becomes(0, false), "the server is gone: the twin is withdrawn")
        #expect(await eventually(within: 10) { (try? s.reasonCode()) == Int64(ReasonCode.noTwin.rawValue) })
        s.server = try OPCUAPeer.asyncua(port: port)
        try s.server.command("set Load float 2500")
        try s.server.command("run 50")
        #expect(await s.coils.becomes(0, true, within: 30), "reconnected, subscribed again, re-armed\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("twin_feed_lost"), "the outage is on the record")
        #expect(show.contains("twin_feed_restored"))
    }

    @Test func modelThatStopsWritingGoesStaleAndBlocks() async throws {
        let s = try await OPCUASystem.start()
        #expect(await s.coils.becomes(0, true, within: 30), "\(s.rig.transcript)")
        try s.server.command("freeze")
        #expect(await s.coils.becomes(0, false), "no new SourceTimestamp: the twin is stale though the subscription lives")
        #expect(await eventually(within: 10) {
            let c = try? s.reasonCode()
            return c == Int64(ReasonCode.twinStale.rawValue) || c == Int64(ReasonCode.drift.rawValue)
        })
        try s.server.command("run 50")
        #expect(await s.coils.becomes(0, true, within: 30), "the model writes again → re-armed")
        try await s.stopAndVerify()
    }

    @Test func heartbeatThatStallsMakesTheTwinSilentWithANamedCause() async throws {
        let s = try await OPCUASystem.start(heartbeatStallMs: 400)
        #expect(await s.coils.becomes(0, true, within: 30), "\(s.rig.transcript)")
        try s.server.command("beat off")
        #expect(await s.coils.becomes(0, false), "the values are still rewritten, but the heartbeat stands still")
        #expect(await eventually(within: 10) { (try? s.reasonCode()) == Int64(ReasonCode.noTwin.rawValue) })
        try s.server.command("beat on")
        #expect(await s.coils.becomes(0, true, within: 30), "the heartbeat moves again → re-armed")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("heartbeat_stalled"), "the cause is named on the record")
        #expect(show.contains("heartbeat_moving"))
    }

    @Test func demoRunsItsTwinOverOPCUA() async throws {
        let dir = try TempDir("tibet-demo-opcua")
        defer { dir.cleanup() }
        let child = try Child(binaryURL().path, ["demo", "--twin", "opcua", "--audit", dir.file("audit")], name: "demo")
        #expect(await eventually(within: 180) { !child.isRunning })
        #expect(child.waitForExit(timeout: 5) == 0, "\(child.transcript)")
        let out = child.stdoutLines.joined(separator: "\n")
        #expect(out.contains("twin feed       opcua opc.tcp://127.0.0.1:"), "\(out)")
        #expect(out.contains("Every scenario came out as it must."), "\(out)")
        #expect(try runTibetTwin(["audit", "verify", dir.file("audit")]).0 == 0)
    }

    @Test func watchWithAMapPrintsTheTwinStateTheGuardWouldSee() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        try server.command("set Load float 2500 UncertainLastUsableValue")
        let dir = try TempDir("tibet-opcua-watch")
        defer { dir.cleanup() }
        try dir.write("crane.yaml", opcuaMapYAML(port: 1502))
        let (code, out, err) = try runTibetTwin(["opcua", "watch", server.endpoint, "--map", dir.file("crane.yaml"), "--count", "1"])
        #expect(code == 0, "\(err)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("subscribed ns=2;s=Crane01.Mode=Good") == true, "\(out)")
        #expect(lines.contains { $0.hasPrefix("crane-01.load_kg  nsu=urn:tibet-twin:test;s=Crane01.Load  2500") }, "\(out)")
        let twin = try #require(lines.last)
        #expect(twin.hasPrefix("twin crane-01 status=operational ts="), "\(out)")
        #expect(twin.contains("(source) position_x=12.5 not good: load_kg (uncertain: UncertainLastUsableValue)"), "\(twin)")
    }

    @Test func craneModelOverSignAndEncryptPermitsAndTheModelsFaultDropsTheCoil() async throws {
        let s = try await OPCUASystem.start(secured: true)
        #expect(await s.coils.becomes(0, true, within: 30), "in sync over Basic256Sha256 SignAndEncrypt → permit\n\(s.rig.transcript)")
        try s.server.command("set Mode int32 2")
        #expect(await s.coils.becomes(0, false), "the model says fault → coil 0")
        #expect(try s.reasonCode() == Int64(ReasonCode.statusMismatch.rawValue))
        try await s.stopAndVerify()
    }

    @Test func anIncompleteSecurityBlockStopsTheStartNamingTheLine() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": opcuaMapYAML(port: 1502)], twinFeeds: """
                - opcua:
                    endpoint: opc.tcp://127.0.0.1:4840
                    security: {policy: Basic256Sha256, mode: SignAndEncrypt, certificate: c.der, private_key: k.pem}
            """)
        let (code, out, err) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")], cwd: URL(fileURLWithPath: rig.dir.path))
        #expect(code != 0)
        #expect((out + err).contains("tibet-twin.yaml:8:19: twin.feeds[0].opcua.security.trust_dir: missing required key \"trust_dir\""), "\(out)\(err)")
    }

    @Test func mapBoundToOPCUAWithoutAnOPCUAFeedStopsTheStartAtTheMapsLine() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": opcuaMapYAML(port: 1502)])
        let (code, out, err) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")], cwd: URL(fileURLWithPath: rig.dir.path))
        #expect(code != 0)
        #expect((out + err).contains("crane-01.yaml:16:3: twin.opcua: crane-01 is bound to OPC UA nodes, but the config has no opcua feed"), "\(out)\(err)")
    }

    @Test func mapsValidateNamesBindingErrorsWithFileLineAndKey() throws {
        let dir = try TempDir("tibet-opcua-map")
        defer { dir.cleanup() }
        try dir.write("crane.yaml", rigMapYAML(port: 1502) + """
            twin:
              opcua:
                status: {node: "ns=2;s=Crane01.Mode", values: {1: operational, 2: broken}}
                values: {position_x: "ns=x;s=PosX", load: "ns=2;s=Crane01.Load"}
                sampling_ms: fast

            """)
        let (code, out, err) = try runTibetTwin(["maps", "validate", dir.file("crane.yaml")])
        #expect(code == 1)
        #expect(out.isEmpty)
        let f = dir.file("crane.yaml")
        #expect(err.contains("\(f):17:71: twin.opcua.status.values.2: unknown status \"broken\""), "\(err)")
        #expect(err.contains("\(f):18:26: twin.opcua.values.position_x: not a NodeId: ns=x;s=PosX: namespace index must be 0…65535"), "\(err)")
        #expect(err.contains("\(f):18:41: twin.opcua.values.load: no register \"load\" in this map"), "\(err)")
        #expect(err.contains("\(f):19:18: twin.opcua.sampling_ms: expected milliseconds"), "\(err)")
    }
}
