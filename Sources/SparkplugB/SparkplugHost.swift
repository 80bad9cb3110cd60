import Foundation
import SwiftProtobuf

/// A metric's value as a host reads it.
public enum SparkplugValue: Sendable, Hashable {
    case number(Double)
    case bool(Bool)
    case text(String)
    /// `is_null`, or a type this host does not read (bytes, data sets, templates): missing.
    case null

    /// The value as a number (Boolean 1/0), or nil.
    public var number: Double? {
        switch self {
        case .number(let d): return d
        case .bool(let b): return b ? 1 : 0
        case .text, .null: return nil
        }
    }
}

/// One metric of a decoded payload.
public struct SparkplugMetric: Sendable, Hashable {
    public var name: String?
    public var alias: UInt64?
    /// ms since the epoch; the payload's timestamp where the metric has none.
    public var timestampMs: UInt64?
    public var datatype: UInt32?
    public var value: SparkplugValue
}

/// A decoded Sparkplug B payload.
public struct SparkplugPayload: Sendable, Hashable {
    public var timestampMs: UInt64?
    public var seq: UInt64?
    public var metrics: [SparkplugMetric]

    public init(timestampMs: UInt64?, seq: UInt64?, metrics: [SparkplugMetric]) {
        self.timestampMs = timestampMs
        self.seq = seq
        self.metrics = metrics
    }

    /// A payload that is not valid protobuf of the Sparkplug B schema.
    public struct DecodeError: Error, Sendable, Hashable, CustomStringConvertible {
        public var detail: String
        public var description: String { "not a Sparkplug B payload: \(detail)" }
    }

    /// Decodes the protobuf bytes (swift-protobuf over the generated `SparkplugB_Payload`).
    public init(decoding bytes: UnsafeRawBufferPointer) throws(DecodeError) {
        let p: SparkplugB_Payload
        do {
            p = try SparkplugB_Payload(serializedBytes: Array(bytes))
        } catch {
            throw DecodeError(detail: "\(error)")
        }
        timestampMs = p.hasTimestamp ? p.timestamp : nil
        seq = p.hasSeq ? p.seq : nil
        let payloadTs = timestampMs
        metrics = p.metrics.map { m in
            SparkplugMetric(name: m.hasName ? m.name : nil, alias: m.hasAlias ? m.alias : nil,
                            timestampMs: m.hasTimestamp ? m.timestamp : payloadTs,
                            datatype: m.hasDatatype ? m.datatype : nil,
                            value: m.isNull ? .null : Self.value(m))
        }
    }

    static func value(_ m: SparkplugB_Payload.Metric) -> SparkplugValue {
        guard let v = m.value else { return .null }
        let type = SparkplugB_DataType(rawValue: Int(m.datatype))
        switch v {
        case .intValue(let u):
            switch type {
            case .int8: return .number(Double(Int8(truncatingIfNeeded: Int32(bitPattern: u))))
            case .int16: return .number(Double(Int16(truncatingIfNeeded: Int32(bitPattern: u))))
            case .int32: return .number(Double(Int32(bitPattern: u)))
            default: return .number(Double(u))
            }
        case .longValue(let u):
            return type == .int64 ? .number(Double(Int64(bitPattern: u))) : .number(Double(u))
        case .floatValue(let f): return .number(Double(f))
        case .doubleValue(let d): return .number(d)
        case .booleanValue(let b): return .bool(b)
        case .stringValue(let s): return .text(s)
        case .bytesValue: return .null
        }
    }
}

/// What a host application learns from one message (see `SparkplugHost.handle`).
public enum SparkplugHostEvent: Sendable, Hashable {
    /// A device's current metrics (after a DBIRTH or DDATA): every metric its birth named, by
    /// name, with the latest value and timestamp.
    case device(SparkplugNodeKey, device: String, metrics: [String: SparkplugTimedValue])
    /// The device has no reliable state any more: DDEATH, or its node died or its view broke.
    case deviceLost(SparkplugNodeKey, device: String, why: String)
    /// The host's view of the node is unreliable (a `seq` gap, DATA before BIRTH, an unknown
    /// alias): every device of it is lost until a fresh NBIRTH; the host should request one
    /// (NCMD `Node Control/Rebirth`).
    case rebirthNeeded(SparkplugNodeKey, why: String)
}

public struct SparkplugTimedValue: Sendable, Hashable {
    public var value: SparkplugValue
    public var timestampMs: UInt64?
}

/// A Sparkplug B host application's view of its edge nodes (Sparkplug 3.0, chapter 5): births
/// define metric names and aliases, every message after NBIRTH must carry the next `seq`
/// (0…255, wrapping), deaths end a node's or device's state at once. Pure: the caller feeds it
/// messages in arrival order and acts on the events.
public struct SparkplugHost: Sendable {
    struct Device {
        var aliases: [UInt64: String] = [:]
        var metrics: [String: SparkplugTimedValue] = [:]
    }

    struct Node {
        /// bdSeq of the NBIRTH in force; an NDEATH with another one is stale and ignored.
        var bdSeq: UInt64?
        var lastSeq: UInt64 = 0
        var devices: [String: Device] = [:]
        var aliases: Set<UInt64> = []
    }

    /// Born, reliable nodes. A node not here (never born, dead, or broken) sends nothing we use.
    var nodes: [SparkplugNodeKey: Node] = [:]

    public init() {}

    /// Whether `key` has a live, reliable birth.
    public func isOnline(_ key: SparkplugNodeKey) -> Bool { nodes[key] != nil }

    /// Feeds one message; returns what it means for the node's devices.
    public mutating func handle(_ topic: SparkplugTopic, _ payload: SparkplugPayload) -> [SparkplugHostEvent] {
        let key = SparkplugNodeKey(group: topic.group, node: topic.node)
        switch topic.type {
        case .ncmd, .dcmd:
            return []
        case .nbirth:
            var lost = loseAll(key, why: "a new NBIRTH")
            guard payload.seq == 0 else {
                lost.append(.rebirthNeeded(key, why: "NBIRTH with seq \(payload.seq.map(String.init) ?? "missing"), not 0"))
                return lost
            }
            var node = Node()
            node.bdSeq = payload.metrics.first { $0.name == "bdSeq" }?.value.number.map { UInt64($0) }
            node.aliases = Set(payload.metrics.compactMap(\.alias))
            nodes[key] = node
            // The devices are reported lost (they must be born again after their node).
            return lost.filter { if case .deviceLost = $0 { true } else { false } }
        case .ndeath:
            guard let node = nodes[key] else { return [] }
            let bd = payload.metrics.first { $0.name == "bdSeq" }?.value.number.map { UInt64($0) }
            if let b = node.bdSeq, let bd, b != bd { return [] }  // the death of an earlier session
            return loseAll(key, why: "NDEATH")
        case .ndata, .dbirth, .ddata, .ddeath:
            guard var node = nodes[key] else {
                return [.rebirthNeeded(key, why: "\(topic.type.rawValue) before NBIRTH")]
            }
            let expected = (node.lastSeq + 1) % 256
            guard let seq = payload.seq, seq == expected else {
                var out = loseAll(key, why: "seq gap")
                out.append(.rebirthNeeded(key, why: "\(topic.type.rawValue) seq \(payload.seq.map(String.init) ?? "missing"), expected \(expected)"))
                return out
            }
            node.lastSeq = seq
            nodes[key] = node
            switch topic.type {
            case .ndata:
                for m in payload.metrics where m.name == nil {
                    guard let a = m.alias, node.aliases.contains(a) else {
                        var out = loseAll(key, why: "unknown alias")
                        out.append(.rebirthNeeded(key, why: "NDATA metric with unknown alias \(m.alias.map(String.init) ?? "none")"))
                        return out
                    }
                }
                return []
            case .dbirth:
                let device = topic.device ?? ""
                var d = Device()
                for m in payload.metrics {
                    guard let name = m.name else { continue }
                    if let a = m.alias { d.aliases[a] = name }
                    d.metrics[name] = SparkplugTimedValue(value: m.value, timestampMs: m.timestampMs)
                }
                nodes[key]?.devices[device] = d
                return [.device(key, device: device, metrics: d.metrics)]
            case .ddata:
                let device = topic.device ?? ""
                guard var d = node.devices[device] else {
                    var out = loseAll(key, why: "DDATA before DBIRTH")
                    out.append(.rebirthNeeded(key, why: "DDATA for \(device) before its DBIRTH"))
                    return out
                }
                for m in payload.metrics {
                    let name = m.name ?? m.alias.flatMap { d.aliases[$0] }
                    guard let name, d.metrics[name] != nil else {
                        var out = loseAll(key, why: "unknown alias")
                        out.append(.rebirthNeeded(key, why: "DDATA for \(device): metric \(m.name ?? "alias \(m.alias.map(String.init) ?? "none")") not in its DBIRTH"))
                        return out
                    }
                    d.metrics[name] = SparkplugTimedValue(value: m.value, timestampMs: m.timestampMs)
                }
                nodes[key]?.devices[device] = d
                return [.device(key, device: device, metrics: d.metrics)]
            default:  // ddeath
                let device = topic.device ?? ""
                guard nodes[key]?.devices.removeValue(forKey: device) != nil else { return [] }
                return [.deviceLost(key, device: device, why: "DDEATH")]
            }
        }
    }

    /// Forgets the node; every device it had is lost.
    mutating func loseAll(_ key: SparkplugNodeKey, why: String) -> [SparkplugHostEvent] {
        guard let node = nodes.removeValue(forKey: key) else { return [] }
        return node.devices.keys.sorted().map { .deviceLost(key, device: $0, why: why) }
    }

    /// Forgets every node (the broker connection was lost: the host's view is gone).
    public mutating func reset() -> [SparkplugHostEvent] {
        var out: [SparkplugHostEvent] = []
        for key in nodes.keys.sorted(by: { $0.description < $1.description }) { out += loseAll(key, why: "broker connection lost") }
        return out
    }
}

/// Encoding the few payloads a host sends.
public enum SparkplugEncode {
    /// NCMD `Node Control/Rebirth = true` (Sparkplug 3.0: asks an edge node for a fresh NBIRTH).
    public static func rebirthRequest(nowMs: UInt64) -> [UInt8] {
        var m = SparkplugB_Payload.Metric()
        m.name = "Node Control/Rebirth"
        m.timestamp = nowMs
        m.datatype = UInt32(SparkplugB_DataType.boolean.rawValue)
        m.value = .booleanValue(true)
        var p = SparkplugB_Payload()
        p.timestamp = nowMs
        p.metrics = [m]
        return (try? p.serializedBytes()) ?? []
    }

    /// The host's STATE payload (Sparkplug 3.0: JSON, `{"online":…,"timestamp":…}`).
    public static func state(online: Bool, timestampMs: UInt64) -> [UInt8] {
        Array(#"{"online":\#(online),"timestamp":\#(timestampMs)}"#.utf8)
    }
}
