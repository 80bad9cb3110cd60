import Foundation
import SparkplugB
import Testing

/// The edge node's payloads (pure: no broker), read back by our own host application.
@Suite("Sparkplug B edge node")
struct SparkplugEdgeTests {
    static func decode(_ bytes: [UInt8]) throws -> SparkplugPayload {
        try bytes.withUnsafeBytes { b throws(SparkplugPayload.DecodeError) in try SparkplugPayload(decoding: b) }
    }

    static let permit = SparkplugEdgeMetric(name: "Intents/move_left/Permit", alias: 0x1_0010, value: .bool(true))
    static let reason = SparkplugEdgeMetric(name: "Reason Code", alias: 0x1_0001, value: .int32(0))

    @Test func birthAndDeathCarryTheSameBdSeqAndTheNextSessionTheNextOne() throws {
        var edge = SparkplugEdgeNode(group: "G", node: "N", bdSeq: 255)
        let birth = try Self.decode(edge.birth(metrics: [], nowMs: 1))
        let death = try Self.decode(edge.death())
        #expect(birth.seq == 0)
        #expect(birth.metrics.first { $0.name == "bdSeq" }?.value == .number(255))
        #expect(death.metrics.first { $0.name == "bdSeq" }?.value == .number(255))
        #expect(death.seq == nil, "NDEATH has no seq")
        #expect(birth.metrics.first { $0.name == "Node Control/Rebirth" }?.value == .bool(false))
        edge.nextSession()
        #expect(edge.bdSeq == 0, "bdSeq wraps at 256")
    }

    @Test func ourHostReadsTheEdgeStreamAndSeqWrapsAfter255() throws {
        var edge = SparkplugEdgeNode(group: "G", node: "N")
        var host = SparkplugHost()
        let t = { (type: SparkplugTopic.MessageType, d: String?) in SparkplugTopic(group: "G", type: type, node: "N", device: d) }
        _ = host.handle(t(.nbirth, nil), try Self.decode(edge.birth(metrics: [], nowMs: 1)))
        let born = host.handle(t(.dbirth, "crane"), try Self.decode(edge.deviceBirth(metrics: [Self.permit, Self.reason], nowMs: 2)))
        guard case .device(_, "crane", let m)? = born.first else { Issue.record("no device state: \(born)"); return }
        #expect(m["Intents/move_left/Permit"]?.value == .bool(true))
        var seqs: [UInt64] = []
        for i in 0..<300 {
            var drop = Self.permit
            drop.value = .bool(i % 2 == 0)
            let bytes = edge.data(metrics: [drop], nowMs: 3)
            let p = try Self.decode(bytes)
            #expect(p.metrics.allSatisfy { $0.name == nil && $0.alias == 0x1_0010 }, "DATA by alias only")
            seqs.append(p.seq ?? 999)
            let events = host.handle(t(.ddata, "crane"), p)
            guard case .device(_, _, let now)? = events.first, events.count == 1 else {
                Issue.record("message \(i): \(events)")
                return
            }
            #expect(now["Intents/move_left/Permit"]?.value == .bool(i % 2 == 0))
        }
        #expect(seqs.first == 2 && seqs.contains(255) && seqs.contains(0), "seq wraps 255 → 0")
    }

    @Test func onlyARebirthRequestIsAnsweredEveryWriteIsRefused() throws {
        func payload(_ name: String, _ value: Bool) -> [UInt8] {
            var m = SparkplugB_Payload.Metric()
            m.name = name
            m.datatype = UInt32(SparkplugB_DataType.boolean.rawValue)
            m.value = .booleanValue(value)
            var p = SparkplugB_Payload()
            p.metrics = [m]
            return try! p.serializedBytes()
        }
        func classify(_ type: SparkplugTopic.MessageType, _ bytes: [UInt8]) -> SparkplugEdgeCommand {
            bytes.withUnsafeBytes { SparkplugEdgeNode.command(type: type, payload: $0) }
        }
        #expect(classify(.ncmd, SparkplugEncode.rebirthRequest(nowMs: 1)) == .rebirth)
        #expect(classify(.ncmd, payload("Node Control/Rebirth", false)) == .refused(why: "ncmd_write", metrics: ["Node Control/Rebirth"]))
        #expect(classify(.ncmd, payload("Guard/Healthy", true)) == .refused(why: "ncmd_write", metrics: ["Guard/Healthy"]))
        #expect(classify(.dcmd, payload("Node Control/Rebirth", true)) == .refused(why: "dcmd_write", metrics: ["Node Control/Rebirth"]),
                "a rebirth is a node command; on a device it is a write")
        #expect(classify(.dcmd, payload("Intents/move_left/Permit", true)) == .refused(why: "dcmd_write", metrics: ["Intents/move_left/Permit"]))
        #expect(classify(.ncmd, [0xFF, 0xFF, 0xFF]) == .refused(why: "not_sparkplug", metrics: []))
    }
}
