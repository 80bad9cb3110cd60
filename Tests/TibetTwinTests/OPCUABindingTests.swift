import Testing
@testable import TibetTwin

/// A map's `twin: {opcua: …}` binding and the `opcua` feed's keys (docs/opcua.md).
@Suite("Register maps and config: OPC UA twin")
struct OPCUABindingTests {
    static func map(_ binding: String, extra: String = "") -> String {
        minimalMap() + extra + "twin:\n  opcua: " + binding + "\n"
    }

    @Test func aBindingIsReadInEveryNodeIdForm() throws {
        let m = try MapLoader.parse(yaml: Self.map("""
            {status: {node: "ns=2;s=Crane01.Mode", values: {1: operational, 2: fault}}, \
            values: {position_x: "nsu=urn:example:model;s=Crane01.PosX", load_kg: "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"}, \
            sampling_ms: 50, heartbeat: {node: "ns=1;b=AQID", max_stall_ms: 500}}
            """), file: "maps/t.yaml")
        let b = try #require(m.opcua)
        #expect(m.sparkplug == nil)
        #expect(b.status == .init(node: "ns=2;s=Crane01.Mode", values: [1: "operational", 2: "fault"]))
        #expect(b.values == ["position_x": "nsu=urn:example:model;s=Crane01.PosX", "load_kg": "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"])
        #expect(b.samplingMs == 50)
        #expect(b.heartbeat == .init(node: "ns=1;b=AQID", maxStallMs: 500))
        #expect(b.nodes.count == 4)
        #expect(b.statusName(text: nil, number: 2) == "fault")
        #expect(b.statusName(text: nil, number: 3) == nil)
        let numeric = try MapLoader.parse(yaml: Self.map(#"{status: {node: "i=2259"}, values: {position_x: "ns=3;i=1001"}}"#), file: "t.yaml")
        #expect(numeric.opcua?.status.values == nil, "without values the status node carries the status name as text")
        #expect(numeric.opcua?.samplingMs == 100)
    }

    @Test func badNodeIdsRegistersAndStatusesAreErrorsWithTheirPlace() {
        let issues = mapIssues(Self.map("""
            {status: {node: "ns=2;x=Mode", values: {1: running}}, values: {position_y: "ns=2;s=Y", load_kg: 5}, heartbeat: {node: "i=1"}}
            """))
        #expect(issues.contains { $0.contains("twin.opcua.status.node: not a NodeId: ns=2;x=Mode") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.opcua.status.values.1: unknown status \"running\"") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.opcua.values.position_y: no register \"position_y\" in this map") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.opcua.values.load_kg: not a NodeId: 5") }, "\(issues)")
        #expect(issues.contains { $0.contains("twin.opcua.heartbeat.max_stall_ms: missing required key") }, "\(issues)")
        #expect(issues.allSatisfy { $0.hasPrefix("m.yaml:") })
    }

    @Test func oneTwinPerMapAndNeverASignedOne() {
        let both = mapIssues(minimalMap() + """
            twin:
              sparkplug: {group: G, node: N, device: D, status: S, values: {position_x: X}}
              opcua: {status: {node: "i=1"}, values: {position_x: "i=2"}}

            """)
        #expect(both.contains { $0.contains("twin.opcua: a map has one twin: sparkplug or opcua, not both") }, "\(both)")
        let signed = mapIssues(Self.map(#"{status: {node: "i=1"}, values: {position_x: "i=2"}}"#, extra: "twin_key: k.pub\n"))
        #expect(signed.first?.contains("twin.opcua: an OPC UA twin cannot sign its states") == true, "\(signed)")
    }

    @Test func feedDefaultsAndSecurityNone() throws {
        let c = try ApplianceConfig.parse(yaml: "node: g\ntwin: {feeds: [{opcua: {endpoint: \"opc.tcp://model-pc:4840\", security: none}}]}\n",
                                          file: "/etc/t.yaml")
        guard case .opcua(let o) = c.twin.feeds[0] else {
            Issue.record("expected an opcua feed, got \(c.twin.feeds)")
            return
        }
        #expect(o.endpoint == "opc.tcp://model-pc:4840" && o.user == nil && o.security == .none)
        #expect(o.publishingMs == 50 && o.timeoutMs == 5000 && o.reconnectMinMs == 200 && o.reconnectMaxMs == 5000)
        #expect(c.twin.feeds[0].description == "opcua:opc.tcp://model-pc:4840")
    }

    @Test func aSecurityBlockIsParsedIntoOneStruct() throws {
        let yaml = """
            node: g
            twin:
              feeds:
                - opcua:
                    endpoint: opc.tcp://10.0.0.5:4840/model
                    user: guard
                    password_file: secrets/opcua.pw
                    security: {policy: Basic256Sha256, mode: SignAndEncrypt, certificate: pki/own.der, private_key: pki/own.pem, trust_dir: pki/trusted}
            """
        let c = try ApplianceConfig.parse(yaml: yaml, file: "/etc/tibet-twin/tibet-twin.yaml")
        guard case .opcua(let o) = c.twin.feeds[0] else {
            Issue.record("expected an opcua feed")
            return
        }
        #expect(o.user == "guard" && o.passwordFile?.path == "/etc/tibet-twin/secrets/opcua.pw")
        #expect(o.security.policy == .basic256Sha256 && o.security.mode == .signAndEncrypt)
        #expect(o.security.certificate?.path == "/etc/tibet-twin/pki/own.der" && o.security.privateKey?.path == "/etc/tibet-twin/pki/own.pem")
        #expect(o.security.trustDir?.path == "/etc/tibet-twin/pki/trusted")
        #expect(o.security.policyKeyPath == "twin.feeds[0].opcua.security.policy")
        #expect(o.security.policyLocation?.line == 8)
    }

    @Test(arguments: [
        ("node: g\ntwin: {feeds: [{opcua: {endpoint: \"http://x\"}}]}\n",
         [#"etc/t.yaml:2:35: twin.feeds[0].opcua.endpoint: "http://x" is not an OPC UA endpoint: expected opc.tcp://HOST[:PORT][/PATH]"#]),
        ("node: g\ntwin: {feeds: [{opcua: {endpoint: \"opc.tcp://a\", user: u}}]}\n",
         [#"etc/t.yaml:2:50: twin.feeds[0].opcua.user: needs password_file too (the password is never written in the config)"#]),
        ("node: g\ntwin: {feeds: [{opcua: {endpoint: \"opc.tcp://a\", security: {policy: Basic256Sha256, mode: Sign}}}]}\n",
         [#"etc/t.yaml:2:60: twin.feeds[0].opcua.security.certificate: missing required key "certificate" (policy Basic256Sha256 needs the appliance's certificate, its private key and a trust directory)"#,
          #"etc/t.yaml:2:60: twin.feeds[0].opcua.security.private_key: missing required key "private_key" (policy Basic256Sha256 needs the appliance's certificate, its private key and a trust directory)"#,
          #"etc/t.yaml:2:60: twin.feeds[0].opcua.security.trust_dir: missing required key "trust_dir" (policy Basic256Sha256 needs the appliance's certificate, its private key and a trust directory)"#]),
        ("node: g\ntwin: {feeds: [{opcua: {endpoint: \"opc.tcp://a\"}}, {opcua: {endpoint: \"opc.tcp://b\"}}]}\n",
         [#"etc/t.yaml:2:60: twin.feeds[1].opcua: a second opcua feed: one OPC UA server is the twin of every map bound with twin: {opcua: …}"#]),
    ] as [(String, [String])])
    func feedErrorsNameFileLineColumnAndKey(yaml: String, expected: [String]) {
        #expect(configIssues(yaml, file: "etc/t.yaml") == expected)
    }
}
