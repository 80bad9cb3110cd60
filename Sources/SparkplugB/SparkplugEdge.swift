import SwiftProtobuf

/// A metric an edge node publishes: its name (in births), its alias (unique within the node,
/// used alone in DATA messages) and its value.
public struct SparkplugEdgeMetric: Sendable, Hashable {
    public enum Value: Sendable, Hashable {
        case bool(Bool)
        case int32(Int32)
        case int64(Int64)
        case string(String)
    }

    public var name: String
    public var alias: UInt64
    public var value: Value

    public init(name: String, alias: UInt64, value: Value) {
        self.name = name
        self.alias = alias
        self.value = value
    }
}

/// What an edge node makes of a command (NCMD / DCMD) sent to it.
public enum SparkplugEdgeCommand: Sendable, Hashable {
    /// NCMD `Node Control/Rebirth = true` and nothing else: answer with NBIRTH and every DBIRTH.
    case rebirth
    /// Anything else is a write: refused. `metrics` names what it tried to set.
    case refused(why: String, metrics: [String])
}

/// A Sparkplug B edge node's session bookkeeping (Sparkplug 3.0, chapter 5): the birth/death
/// sequence number `bdSeq` (the NBIRTH and the NDEATH of one MQTT session carry the same one;
/// it counts up, 0…255 wrapping, with each CONNECT) and the message `seq` (0 in NBIRTH, then
/// +1 per DBIRTH/DDATA/NDATA, 0…255 wrapping). Pure: it encodes payloads; sending is the caller's.
public struct SparkplugEdgeNode: Sendable {
    public let group: String
    public let node: String
    /// The bdSeq of this MQTT session (its will and its NBIRTH).
    public private(set) var bdSeq: UInt64
    private var seq: UInt64 = 0

    public static let rebirthMetric = "Node Control/Rebirth"

    public init(group: String, node: String, bdSeq: UInt64 = 0) {
        self.group = group
        self.node = node
        self.bdSeq = bdSeq % 256
    }

    /// The next CONNECT is a new session: the next bdSeq.
    public mutating func nextSession() { bdSeq = (bdSeq + 1) % 256 }

    public func topic(_ type: SparkplugTopic.MessageType, device: String? = nil) -> String {
        SparkplugTopic(group: group, type: type, node: node, device: device).description
    }

    /// The NDEATH payload of this session (the MQTT will, and the last message of a clean stop).
    public func death(nowMs: UInt64? = nil) -> [UInt8] {
        Self.encode(timestampMs: nowMs, seq: nil, metrics: [
            SparkplugEdgeMetric(name: "bdSeq", alias: 0, value: .int64(Int64(bdSeq))),
        ], names: true, aliases: false)
    }

    /// NBIRTH (seq 0): `bdSeq`, `Node Control/Rebirth` (false) and the node's own `metrics`
    /// (whose aliases must not be 0 or 1: those are bdSeq's and Rebirth's).
    public mutating func birth(metrics: [SparkplugEdgeMetric], nowMs: UInt64) -> [UInt8] {
        seq = 0
        let fixed = [
            SparkplugEdgeMetric(name: "bdSeq", alias: 0, value: .int64(Int64(bdSeq))),
            SparkplugEdgeMetric(name: Self.rebirthMetric, alias: 1, value: .bool(false)),
        ]
        return Self.encode(timestampMs: nowMs, seq: 0, metrics: fixed + metrics, names: true, aliases: true)
    }

    /// DBIRTH: every metric of a device, by name and alias.
    public mutating func deviceBirth(metrics: [SparkplugEdgeMetric], nowMs: UInt64) -> [UInt8] {
        Self.encode(timestampMs: nowMs, seq: nextSeq(), metrics: metrics, names: true, aliases: true)
    }

    /// DDATA / NDATA: the changed metrics, by alias only.
    public mutating func data(metrics: [SparkplugEdgeMetric], nowMs: UInt64) -> [UInt8] {
        Self.encode(timestampMs: nowMs, seq: nextSeq(), metrics: metrics, names: false, aliases: true)
    }

    private mutating func nextSeq() -> UInt64 {
        seq = (seq + 1) % 256
        return seq
    }

    /// Classifies a command sent to this node. Only a rebirth request is answered; every other
    /// command (a write to any metric, a payload that does not decode) is refused.
    public static func command(type: SparkplugTopic.MessageType, payload: UnsafeRawBufferPointer) -> SparkplugEdgeCommand {
        let decoded: SparkplugPayload
        do {
            decoded = try SparkplugPayload(decoding: payload)
        } catch {
            return .refused(why: "not_sparkplug", metrics: [])
        }
        let names = decoded.metrics.map { $0.name ?? "alias \($0.alias.map(String.init) ?? "none")" }
        if type == .ncmd, !decoded.metrics.isEmpty,
           decoded.metrics.allSatisfy({ $0.name == rebirthMetric && $0.value == .bool(true) }) {
            return .rebirth
        }
        return .refused(why: type == .ncmd ? "ncmd_write" : "dcmd_write", metrics: names)
    }

    /// Encodes a payload (swift-protobuf over the generated `SparkplugB_Payload`).
    static func encode(timestampMs: UInt64?, seq: UInt64?, metrics: [SparkplugEdgeMetric], names: Bool, aliases: Bool) -> [UInt8] {
        var p = SparkplugB_Payload()
        if let timestampMs { p.timestamp = timestampMs }
        if let seq { p.seq = seq }
        p.metrics = metrics.map { e in
            var m = SparkplugB_Payload.Metric()
            if names { m.name = e.name }
            if aliases { m.alias = e.alias }
            if let timestampMs { m.timestamp = timestampMs }
            switch e.value {
            case .bool(let b):
                m.datatype = UInt32(SparkplugB_DataType.boolean.rawValue)
                m.value = .booleanValue(b)
            case .int32(let i):
                m.datatype = UInt32(SparkplugB_DataType.int32.rawValue)
                m.value = .intValue(UInt32(bitPattern: i))
            case .int64(let i):
                m.datatype = UInt32(SparkplugB_DataType.int64.rawValue)
                m.value = .longValue(UInt64(bitPattern: i))
            case .string(let s):
                m.datatype = UInt32(SparkplugB_DataType.string.rawValue)
                m.value = .stringValue(s)
            }
            return m
        }
        // Serializing a message built from set fields cannot fail.
        return (try? p.serializedBytes()) ?? []
    }
}
