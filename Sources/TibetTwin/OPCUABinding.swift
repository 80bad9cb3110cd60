import OPCUATypes
import Yams

/// Which OPC UA nodes are a map's twin (docs/opcua.md), read through the appliance's `opcua` feed:
///
/// ```yaml
/// twin:
///   opcua:
///     status: {node: "ns=2;s=Crane01.Mode", values: {1: operational, 2: fault}}
///     values: {position_x: "ns=2;s=Crane01.PosX", load_kg: "ns=2;s=Crane01.Load"}
///     sampling_ms: 50
///     heartbeat: {node: "ns=2;s=Crane01.Cycle", max_stall_ms: 500}
/// ```
///
/// NodeIds are kept as written (`ns=2;s=…`, `nsu=URI;s=…`, `i=…`, `g=…`, `b=…`); the feed
/// resolves a namespace URI on each connect.
public struct OPCUABinding: Sendable, Hashable {
    /// The node whose value is the twin's status: a number through `values` (code → status
    /// name), or, without `values`, text naming the status itself.
    public struct Status: Sendable, Hashable {
        public var node: String
        public var values: [Int64: String]?

        public init(node: String, values: [Int64: String]? = nil) {
            self.node = node
            self.values = values
        }
    }

    /// A node the model advances every cycle (a counter, a cycle time): when its value has not
    /// changed for `maxStallMs`, the twin counts as silent for this device.
    public struct Heartbeat: Sendable, Hashable {
        public var node: String
        public var maxStallMs: Double

        public init(node: String, maxStallMs: Double) {
            self.node = node
            self.maxStallMs = maxStallMs
        }
    }

    public var status: Status
    /// Register name → NodeId text.
    public var values: [String: String]
    /// How often the server samples each node, ms.
    public var samplingMs: Double
    public var heartbeat: Heartbeat?

    public init(status: Status, values: [String: String], samplingMs: Double = 100, heartbeat: Heartbeat? = nil) {
        self.status = status
        self.values = values
        self.samplingMs = samplingMs
        self.heartbeat = heartbeat
    }

    /// Every distinct node of the binding: status, values (by register name), heartbeat.
    public var nodes: [String] {
        var out = [status.node]
        for (_, n) in values.sorted(by: { $0.key < $1.key }) where !out.contains(n) { out.append(n) }
        if let h = heartbeat, !out.contains(h.node) { out.append(h.node) }
        return out
    }

    /// The twin's status name for the status node's value: a number through `status.values`,
    /// text as it is; nil when it cannot be told (an unmapped code, a value of the wrong kind).
    public func statusName(text: String?, number: Double?) -> String? {
        SparkplugBinding.statusName(codes: status.values, text: text, number: number)
    }
}

extension MapParser {
    /// `twin: {opcua: {…}}`; values must name the map's registers, status values its statuses,
    /// every node must be a NodeId.
    func parseOPCUABinding(_ node: Node, registers: Set<String>, statusNames: Set<String>?) -> OPCUABinding? {
        let path = "twin.opcua"
        guard let m = MappingReader(ctx, node, path, keys: ["status", "values", "sampling_ms", "heartbeat"],
                                    what: "a mapping (status, values, sampling_ms, heartbeat)") else { return nil }
        var ok = true
        func nodeId(_ n: Node, _ p: String) -> String? {
            guard let s = ctx.string(n, p, expected: "a NodeId, e.g. \"ns=2;s=Crane01.PosX\"") else { ok = false; return nil }
            do {
                _ = try NodeIdText(parsing: s)
            } catch {
                ctx.error(n, p, "\(error.description) (forms: i=85, ns=2;s=Name, ns=1;g=GUID, ns=1;b=BASE64, nsu=URI;s=Name)")
                ok = false
                return nil
            }
            return s
        }
        var status: OPCUABinding.Status?
        if let sn = m.require("status", "the node that carries the twin's status: {node: NODEID, values: {CODE: STATUS}}") {
            let sp = keyPath(path, "status")
            if let sm = MappingReader(ctx, sn, sp, keys: ["node", "values"], what: "a mapping (node, values)") {
                let id = sm.require("node", "the status node's NodeId").flatMap { nodeId($0, keyPath(sp, "node")) }
                var codes: [Int64: String]?
                if let cn = sm.take("values") {
                    codes = parseStatusCodes(cn, keyPath(sp, "values"), statusNames: statusNames)
                    if codes == nil { ok = false }
                }
                if let id { status = .init(node: id, values: codes) }
            }
        }
        if status == nil { ok = false }
        let values = parseTwinValues(m, path, registers: registers, what: "NodeId") { n, p in nodeId(n, p) }
        if values == nil { ok = false }
        var sampling = 100.0
        if let n = m.take("sampling_ms") {
            if let v = ctx.number(n, keyPath(path, "sampling_ms"), min: 0, max: 60_000, expected: "milliseconds 0…60000 (0: as fast as the server can)") {
                sampling = v
            } else { ok = false }
        }
        var heartbeat: OPCUABinding.Heartbeat?
        if let hn = m.take("heartbeat") {
            let hp = keyPath(path, "heartbeat")
            if let hm = MappingReader(ctx, hn, hp, keys: ["node", "max_stall_ms"], what: "a mapping (node, max_stall_ms)") {
                let id = hm.require("node", "the NodeId the model advances every cycle").flatMap { nodeId($0, keyPath(hp, "node")) }
                let stall = hm.require("max_stall_ms", "how long the heartbeat may stand still before the twin counts as silent")
                    .flatMap { ctx.number($0, keyPath(hp, "max_stall_ms"), min: 0, exclusive: true, max: 3_600_000, expected: "milliseconds > 0 and ≤ 3600000") }
                if let id, let stall { heartbeat = .init(node: id, maxStallMs: stall) } else { ok = false }
            } else { ok = false }
        }
        guard ok, let status, let values else { return nil }
        return OPCUABinding(status: status, values: values, samplingMs: sampling, heartbeat: heartbeat)
    }
}
