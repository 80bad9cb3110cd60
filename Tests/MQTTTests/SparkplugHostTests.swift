import Foundation
import SparkplugB
import Testing

/// The host application's view of edge nodes (pure: no broker), over payloads encoded with the
/// generated schema and decoded back.
@Suite("Sparkplug B host view")
struct SparkplugHostTests {
    static func payload(seq: UInt64?, _ metrics: [SparkplugB_Payload.Metric]) -> SparkplugPayload {
        var p = SparkplugB_Payload()
        p.timestamp = 1_700_000_000_000
        if let seq { p.seq = seq }
        p.metrics = metrics
        let bytes = try! p.serializedBytes() as [UInt8]
        return try! bytes.withUnsafeBytes { try SparkplugPayload(decoding: $0) }
    }

    static func metric(_ name: String?, alias: UInt64?, double: Double? = nil, int32: Int32? = nil,
                       isNull: Bool = false, ts: UInt64? = nil) -> SparkplugB_Payload.Metric {
        var m = SparkplugB_Payload.Metric()
        if let name { m.name = name }
        if let alias { m.alias = alias }
        if let ts { m.timestamp = ts }
        if let double {
            m.datatype = UInt32(SparkplugB_DataType.double.rawValue)
            m.value = .doubleValue(double)
        }
        if let int32 {
            m.datatype = UInt32(SparkplugB_DataType.int32.rawValue)
            m.value = .intValue(UInt32(bitPattern: int32))
        }
        if isNull { m.isNull = true }
        return m
    }

    static let n = SparkplugNodeKey(group: "G", node: "N")
    static func t(_ type: SparkplugTopic.MessageType, _ device: String? = nil) -> SparkplugTopic {
        SparkplugTopic(group: "G", type: type, node: "N", device: device)
    }

    /// A host with node N born (bdSeq 3) and device D born with metrics a (alias 1) and b (alias 2).
    static func born() -> SparkplugHost {
        var h = SparkplugHost()
        _ = h.handle(t(.nbirth), payload(seq: 0, [metric("bdSeq", alias: nil, double: 3)]))
        _ = h.handle(t(.dbirth, "D"), payload(seq: 1, [metric("a", alias: 1, double: 1), metric("b", alias: 2, int32: -5)]))
        return h
    }

    @Test func topicsParse() {
        #expect(SparkplugTopic("spBv1.0/G/DDATA/N/D") == SparkplugTopic(group: "G", type: .ddata, node: "N", device: "D"))
        #expect(SparkplugTopic("spBv1.0/G/NBIRTH/N") == SparkplugTopic(group: "G", type: .nbirth, node: "N"))
        #expect(SparkplugTopic("spBv1.0/G/NBIRTH/N/D") == nil, "a node message has no device")
        #expect(SparkplugTopic("spBv1.0/G/DDATA/N") == nil, "a device message has one")
        #expect(SparkplugTopic("spBv1.0/STATE/host") == nil)
        #expect(SparkplugTopic("spAv1.0/G/NDATA/N") == nil)
    }

    @Test func garbageIsNotAPayload() {
        let bytes: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01]
        #expect(throws: SparkplugPayload.DecodeError.self) { try bytes.withUnsafeBytes { try SparkplugPayload(decoding: $0) } }
    }

    @Test func dataByAliasUpdatesTheBornMetricsWithSignedValuesAndNulls() {
        var h = Self.born()
        let e = h.handle(Self.t(.ddata, "D"), Self.payload(seq: 2, [Self.metric(nil, alias: 1, double: 7.5, ts: 1_700_000_000_500),
                                                                    Self.metric(nil, alias: 2, isNull: true)]))
        guard case .device(_, "D", let metrics)? = e.first else {
            Issue.record("expected device metrics, got \(e)")
            return
        }
        #expect(metrics["a"]?.value == .number(7.5))
        #expect(metrics["a"]?.timestampMs == 1_700_000_000_500)
        #expect(metrics["b"]?.value == .null, "is_null: the value is missing")
        var h2 = Self.born()
        let e2 = h2.handle(Self.t(.ddata, "D"), Self.payload(seq: 2, [Self.metric(nil, alias: 2, int32: -5)]))
        if case .device(_, _, let m)? = e2.first { #expect(m["b"]?.value == .number(-5), "Int32 is two's complement") }
    }

    @Test func aSeqGapLosesEveryDeviceAndAsksForARebirth() {
        var h = Self.born()
        let e = h.handle(Self.t(.ddata, "D"), Self.payload(seq: 3, [Self.metric(nil, alias: 1, double: 1)]))
        #expect(e.contains(.deviceLost(Self.n, device: "D", why: "seq gap")))
        #expect(e.contains { if case .rebirthNeeded = $0 { true } else { false } })
        #expect(!h.isOnline(Self.n))
        // Until a fresh NBIRTH nothing is used.
        let later = h.handle(Self.t(.ddata, "D"), Self.payload(seq: 4, [Self.metric(nil, alias: 1, double: 1)]))
        #expect(later.allSatisfy { if case .rebirthNeeded = $0 { true } else { false } })
    }

    @Test func dataBeforeBirthAndUnknownAliasesAskForARebirth() {
        var h = SparkplugHost()
        let before = h.handle(Self.t(.ddata, "D"), Self.payload(seq: 5, [Self.metric(nil, alias: 1, double: 1)]))
        #expect(before.count == 1)
        if case .rebirthNeeded(_, let why)? = before.first { #expect(why.contains("before NBIRTH")) } else { Issue.record("\(before)") }
        var h2 = Self.born()
        let unknown = h2.handle(Self.t(.ddata, "D"), Self.payload(seq: 2, [Self.metric(nil, alias: 99, double: 1)]))
        #expect(unknown.contains(.deviceLost(Self.n, device: "D", why: "unknown alias")))
        #expect(!h2.isOnline(Self.n))
    }

    @Test func deathsEndTheStateAndAStaleNDEATHIsIgnored() {
        var h = Self.born()
        #expect(h.handle(Self.t(.ddeath, "D"), Self.payload(seq: 2, [])) == [.deviceLost(Self.n, device: "D", why: "DDEATH")])
        var h2 = Self.born()
        #expect(h2.handle(Self.t(.ndeath), Self.payload(seq: nil, [Self.metric("bdSeq", alias: nil, double: 2)])).isEmpty,
                "the death certificate of an earlier session (bdSeq 2, born with 3)")
        #expect(h2.isOnline(Self.n))
        #expect(h2.handle(Self.t(.ndeath), Self.payload(seq: nil, [Self.metric("bdSeq", alias: nil, double: 3)]))
                == [.deviceLost(Self.n, device: "D", why: "NDEATH")])
        #expect(!h2.isOnline(Self.n))
    }

    @Test func seqWrapsAfter255() {
        var h = Self.born()
        var seq: UInt64 = 2
        for _ in 0..<300 {
            let e = h.handle(Self.t(.ddata, "D"), Self.payload(seq: seq, [Self.metric(nil, alias: 1, double: 1)]))
            #expect(e.count == 1)
            seq = (seq + 1) % 256
        }
        #expect(h.isOnline(Self.n))
    }

    @Test func rebirthRequestDecodesAsTheNodeControlMetric() throws {
        let bytes = SparkplugEncode.rebirthRequest(nowMs: 42)
        let p = try bytes.withUnsafeBytes { try SparkplugPayload(decoding: $0) }
        #expect(p.metrics.first?.name == "Node Control/Rebirth")
        #expect(p.metrics.first?.value == .bool(true))
    }
}
