import Testing
@testable import OPCUA

@Suite("NodeId text form and endpoint URLs")
struct NodeIdTextTests {
    @Test("valid NodeId texts", arguments: [
        ("i=85", NodeId.numeric(85), nil as String?, "i=85"),
        ("ns=2;s=Crane01.PosX", .string("Crane01.PosX", namespace: 2), nil, "ns=2;s=Crane01.PosX"),
        ("ns=2;s=a;b=c", .string("a;b=c", namespace: 2), nil, "ns=2;s=a;b=c"),
        ("ns=1;g=09087E75-8E5E-499B-954F-F2A9603DB28A", NodeId(namespace: 1, .guid(UAGuid(parsing: "09087e75-8e5e-499b-954f-f2a9603db28a")!)), nil,
         "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"),
        ("ns=3;b=AQID", NodeId(namespace: 3, .opaque([1, 2, 3])), nil, "ns=3;b=AQID"),
        ("nsu=urn:tibet-twin:test;s=Crane01.PosX", .string("Crane01.PosX", namespace: 0), "urn:tibet-twin:test", "nsu=urn:tibet-twin:test;s=Crane01.PosX"),
        ("nsu=http://x.org/UA/;i=7", .numeric(7), "http://x.org/UA/", "nsu=http://x.org/UA/;i=7"),
    ])
    func valid(text: String, id: NodeId, uri: String?, canonical: String) throws {
        let t = try NodeIdText(parsing: text)
        #expect(t.nodeId == id)
        #expect(t.namespaceUri == uri)
        #expect(t.description == canonical)
    }

    @Test("invalid NodeId texts say why", arguments: [
        "", "85", "x=1", "ns=70000;i=1", "ns=2", "i=-1", "i=4294967296", "s=", "g=not-a-guid", "b=@@@@", "nsu=;i=1", "ns=2;q=1",
    ])
    func invalid(text: String) {
        #expect(throws: NodeIdText.ParseError.self) { try NodeIdText(parsing: text) }
    }

    @Test("endpoint URLs")
    func endpoints() throws {
        let a = try UAEndpointURL(parsing: "opc.tcp://127.0.0.1:4841/freeopcua/server/")
        #expect(a.host == "127.0.0.1" && a.port == 4841)
        let b = try UAEndpointURL(parsing: "opc.tcp://plc-7")
        #expect(b.host == "plc-7" && b.port == 4840)
        let c = try UAEndpointURL(parsing: "opc.tcp://[fd00::5]:4850")
        #expect(c.host == "fd00::5" && c.port == 4850)
        for bad in ["http://x:1", "opc.tcp://", "opc.tcp://x:0", "opc.tcp://x:99999", "opc.tcp://[fd00::5"] {
            #expect(throws: OPCUAError.self) { try UAEndpointURL(parsing: bad) }
        }
    }
}

@Suite("UA-TCP framing")
struct UATCPFramingTests {
    @Test("the header parser refuses unknown types, chunk types and sizes")
    func headers() throws {
        let ok = try UATCPHeader.parse(Array("MSGF".utf8) + [16, 0, 0, 0], maxSize: 65535)
        #expect(ok.type == .message && ok.messageSize == 16)
        func kind(_ b: [UInt8]) -> OPCUAError.Kind? {
            do { _ = try UATCPHeader.parse(b, maxSize: 65535); return nil } catch { return error }
        }
        #expect(kind(Array("XYZF".utf8) + [16, 0, 0, 0]).map { if case .protocolViolation = $0 { true } else { false } } == true)
        #expect(kind(Array("MSGX".utf8) + [16, 0, 0, 0]).map { if case .protocolViolation = $0 { true } else { false } } == true)
        #expect(kind(Array("MSGF".utf8) + [4, 0, 0, 0]).map { if case .protocolViolation = $0 { true } else { false } } == true)
        #expect(kind(Array("MSGF".utf8) + [0xF0, 0xFF, 0xFF, 0xFF]).map { if case .limitExceeded = $0 { true } else { false } } == true)
    }

    @Test("the Acknowledge is checked against Part 6 and our offer")
    func acknowledge() throws {
        func ack(_ recv: UInt32, _ send: UInt32) throws -> UAAcknowledge {
            var w = UABinaryWriter()
            for v in [0, recv, send, 1 << 20, 16] as [UInt32] { w.writeUInt32(v) }
            var r = UABinaryReader(w.bytes)
            return try UAAcknowledge(decoding: &r)
        }
        let offer = UATCPLimits()
        #expect(try ack(65535, 65535).sendLimits(offered: offer).chunkSize == 65535)
        #expect(try ack(8192, 65535).sendLimits(offered: offer).chunkSize == 8192)
        #expect(throws: OPCUAError.Kind.self) { try ack(100, 65535).sendLimits(offered: offer) }
        #expect(throws: OPCUAError.Kind.self) { try ack(65535, 1 << 20).sendLimits(offered: offer) }
    }
}
