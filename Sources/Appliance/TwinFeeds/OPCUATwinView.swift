import OPCUA
import TibetTwin

/// The twin as the bound OPC UA nodes describe it (docs/opcua.md): the latest DataValue of every
/// node the maps bind, and from them each device's twin state. Pure: fed the subscriber's
/// events and the time, it says what the guard should get; the feed and `opcua watch --map`
/// share it.
///
/// - A value whose StatusCode is not Good (Uncertain included) is left out of the state: it is
///   missing for the rule, and blocks where the map needs it (a tolerance, a `requires`).
/// - The state's `ts` is the **oldest** SourceTimestamp of the device's nodes (a node without
///   one: its ServerTimestamp; the quality says which), so one node the model stopped writing
///   makes the whole state as old as that node.
/// - A heartbeat node whose value has not changed for `max_stall_ms` makes the device silent.
package struct OPCUATwinView: Sendable {
    package struct Device: Sendable, Hashable {
        package var name: String
        package var binding: OPCUABinding
        package var status: Int
        /// Register name → node index.
        package var values: [(name: String, node: Int)]
        package var heartbeat: Int?

        package static func == (a: Device, b: Device) -> Bool { a.name == b.name && a.binding == b.binding }
        package func hash(into h: inout Hasher) { h.combine(name) }
    }

    /// Every bound node, as written in the maps, in subscription order.
    package let nodes: [String]
    /// The sampling interval of each node (the smallest among the maps that bind it), ms.
    package let samplingMs: [Double]
    package let devices: [Device]
    /// The latest DataValue of each node since the last subscribe (nil: none yet).
    package private(set) var latest: [DataValue?]
    /// Each node's monitored-item StatusCode from the last subscribe (nil: not subscribed).
    package private(set) var itemStatus: [StatusCode?]
    /// Heartbeat nodes: the last value and when it last changed (monotonic ns).
    private var beat: [Int: (value: Variant?, changedNs: Int64)] = [:]
    /// Devices whose heartbeat stalled (silent until it moves again).
    package private(set) var stalled: Set<String> = []
    /// Node index → devices that bind it.
    private let users: [[Int]]

    package init(bindings: [String: OPCUABinding]) {
        var nodes: [String] = []
        var sampling: [Double] = []
        var index: [String: Int] = [:]
        func add(_ text: String, _ ms: Double) -> Int {
            if let i = index[text] {
                sampling[i] = min(sampling[i], ms)
                return i
            }
            index[text] = nodes.count
            nodes.append(text)
            sampling.append(ms)
            return nodes.count - 1
        }
        var devices: [Device] = []
        for (name, b) in bindings.sorted(by: { $0.key < $1.key }) {
            let status = add(b.status.node, b.samplingMs)
            let values = b.values.sorted { $0.key < $1.key }.map { (name: $0.key, node: add($0.value, b.samplingMs)) }
            let hb = b.heartbeat.map { add($0.node, b.samplingMs) }
            devices.append(Device(name: name, binding: b, status: status, values: values, heartbeat: hb))
        }
        var users = Array(repeating: [Int](), count: nodes.count)
        for (d, dev) in devices.enumerated() {
            for n in Set([dev.status] + dev.values.map(\.node) + (dev.heartbeat.map { [$0] } ?? [])) { users[n].append(d) }
        }
        self.nodes = nodes
        self.samplingMs = sampling
        self.devices = devices
        self.users = users
        self.latest = Array(repeating: nil, count: nodes.count)
        self.itemStatus = Array(repeating: nil, count: nodes.count)
    }

    /// (Re)subscribed: every value is unknown until its first notification; heartbeats count
    /// from now.
    package mutating func subscribed(_ statuses: [StatusCode], nowNs: Int64) {
        latest = Array(repeating: nil, count: nodes.count)
        itemStatus = nodes.indices.map { statuses.indices.contains($0) ? statuses[$0] : .badUnexpectedError }
        beat = [:]
        for d in devices { if let h = d.heartbeat { beat[h] = (nil, nowNs) } }
        stalled = []
    }

    /// The subscription is gone: nothing is known.
    package mutating func lost() {
        latest = Array(repeating: nil, count: nodes.count)
        itemStatus = Array(repeating: nil, count: nodes.count)
        beat = [:]
        stalled = []
    }

    /// New values; returns the indices of the devices they concern.
    package mutating func update(_ values: [OPCUASubscriber.NodeValue], nowNs: Int64) -> [Int] {
        var touched = Set<Int>()
        for v in values where latest.indices.contains(v.index) {
            latest[v.index] = v.value
            if let b = beat[v.index], b.value != v.value.value || b.value == nil {
                // A heartbeat moves when its value changes (a new timestamp alone is not a beat).
                if v.value.status.isGood { beat[v.index] = (v.value.value, nowNs) }
            }
            touched.formUnion(users[v.index])
        }
        return touched.sorted()
    }

    /// Devices whose heartbeat stalled since the last call (`stalled`) and those whose heartbeat
    /// moves again (`resumed`), each with the words for the log and the audit.
    package mutating func checkHeartbeats(nowNs: Int64) -> (stalled: [(device: String, detail: String)], resumed: [String]) {
        var newlyStalled: [(String, String)] = []
        var resumed: [String] = []
        for d in devices {
            guard let h = d.heartbeat, let hb = d.binding.heartbeat, let b = beat[h] else { continue }
            let stillMs = Double(nowNs - b.changedNs) / 1e6
            if stillMs > hb.maxStallMs {
                if stalled.insert(d.name).inserted {
                    newlyStalled.append((d.name, "\(d.name): heartbeat \(hb.node) has not changed for \(Int(stillMs)) ms (max_stall_ms \(Self.num(hb.maxStallMs)))"))
                }
            } else if stalled.remove(d.name) != nil {
                resumed.append(d.name)
            }
        }
        return (newlyStalled, resumed)
    }

    /// The quality of node `i` as a value for the rule.
    package func quality(node i: Int, numeric: Bool = true) -> TwinQuality.Value {
        if let s = itemStatus[i], !s.isGood { return .init(.bad, reason: "not monitored: \(Self.name(s))") }
        guard let dv = latest[i] else { return .init(.bad, reason: itemStatus[i] == nil ? "not subscribed" : "no value yet") }
        switch dv.status.severity {
        case .good: break
        case .uncertain: return .init(.uncertain, reason: Self.name(dv.status))
        case .bad: return .init(.bad, reason: Self.name(dv.status))
        }
        guard dv.hasValue else { return .init(.bad, reason: "no value") }
        if numeric, dv.value.doubleValue == nil { return .init(.bad, reason: "not a number (\(dv.value.type?.name ?? "null"))") }
        return .init(.good)
    }

    /// Device `d`'s twin state from the latest values; `received` is the time of the newest.
    package func state(device d: Int, received: ClockReading) -> TwinState {
        let dev = devices[d]
        var qualities: [String: TwinQuality.Value] = [:]
        var values: [String: Double] = [:]
        var oldest: Int64?
        var fromServer = false
        func time(_ i: Int) {
            guard let dv = latest[i] else { return }
            var t = dv.sourceTimestamp.flatMap { $0.ticks == 0 ? nil : $0 }
            if t == nil, let s = dv.serverTimestamp, s.ticks != 0 {
                t = s
                fromServer = true
            }
            if let t { oldest = min(oldest ?? .max, t.unixNanoseconds) }
        }
        // The status: a number through status.values, or text.
        var status = ""
        var sq = quality(node: dev.status, numeric: false)
        if sq.level == .good, let dv = latest[dev.status] {
            var text: String?
            switch dv.value {
            case .string(let s): text = s
            case .localizedText(let l): text = l.text
            default: break
            }
            if let name = dev.binding.statusName(text: text, number: dv.value.doubleValue) {
                status = name
            } else {
                sq = .init(.bad, reason: "status value \(dv.value) is not one of status.values")
            }
        }
        qualities["status"] = sq
        time(dev.status)
        for (name, node) in dev.values {
            let q = quality(node: node)
            qualities[name] = q
            if q.level == .good, let v = latest[node]?.value.doubleValue { values[name] = v }
            time(node)
        }
        if let h = dev.heartbeat {
            qualities["heartbeat"] = stalled.contains(dev.name) ? .init(.bad, reason: "stalled") : quality(node: h, numeric: false)
            time(h)
        }
        let source: TwinQuality.TimestampSource = oldest == nil ? .received : (fromServer ? .server : .source)
        var state = TwinState(device: dev.name, tsNs: oldest ?? received.wallNs, status: status, values: values, received: received)
        state.quality = TwinQuality(values: qualities, timestamp: source)
        return state
    }

    static func name(_ s: StatusCode) -> String { s.name ?? s.description }

    static func num(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d) }
}
