import Yams

/// Which Sparkplug B device and metrics are a map's twin (docs/mqtt.md#sparkplug-b):
///
/// ```yaml
/// twin:
///   sparkplug:
///     group: Plant1
///     node: TwinServer
///     device: Crane01
///     status: State/Mode
///     status_codes: {0: operational, 1: fault}
///     values: {position_x: Axis/X/Position, load_kg: Hoist/Load}
/// ```
public struct SparkplugBinding: Sendable, Hashable {
    public var group: String
    public var node: String
    public var device: String
    /// The metric whose value is the twin's status.
    public var status: String
    /// When the status metric is a number: code → status name. Nil: the metric is text, the
    /// status name itself.
    public var statusCodes: [Int64: String]?
    /// Register name → metric name.
    public var values: [String: String]

    public init(group: String, node: String, device: String, status: String, statusCodes: [Int64: String]? = nil,
                values: [String: String]) {
        self.group = group
        self.node = node
        self.device = device
        self.status = status
        self.statusCodes = statusCodes
        self.values = values
    }

    /// The twin's status name for the status metric's value: text as it is, a number through
    /// `statusCodes`; nil when it cannot be told (missing, null, an unmapped code).
    public func statusName(text: String?, number: Double?) -> String? {
        Self.statusName(codes: statusCodes, text: text, number: number)
    }

    /// A twin status name from a status value: a number through `codes`, text as it is when
    /// there are no codes; nil when it cannot be told (shared by the Sparkplug and OPC UA bindings).
    public static func statusName(codes: [Int64: String]?, text: String?, number: Double?) -> String? {
        if let codes {
            guard let number, number.rounded() == number, abs(number) < 9e15 else { return nil }
            return codes[Int64(number)]
        }
        return text
    }
}

extension MapParser {
    /// `twin: {sparkplug: {…}}` or `twin: {opcua: {…}}` (exactly one).
    func parseTwinSource(_ node: Node, registers: Set<String>, statusNames: Set<String>?) -> TwinBinding? {
        guard let tm = MappingReader(ctx, node, "twin", keys: ["sparkplug", "opcua"],
                                     what: "a mapping (sparkplug: {group, node, device, status, values} or opcua: {status, values})") else { return nil }
        if tm.has("sparkplug"), tm.has("opcua") {
            ctx.error(tm.keyNode("opcua"), "twin.opcua", "a map has one twin: sparkplug or opcua, not both")
            return nil
        }
        if let on = tm.take("opcua") {
            return parseOPCUABinding(on, registers: registers, statusNames: statusNames).map(TwinBinding.opcua)
        }
        guard let sn = tm.require("sparkplug", "the Sparkplug B device (or opcua: the OPC UA nodes) that is this map's twin") else { return nil }
        return parseSparkplugBinding(sn, registers: registers, statusNames: statusNames).map(TwinBinding.sparkplug)
    }

    /// `values`: register name → where the twin's value comes from (`source` reads one; nil
    /// after reporting an error). Every key must be a register of the map. Nil after an error.
    func parseTwinValues(_ m: MappingReader, _ path: String, registers: Set<String>, what: String,
                         _ source: (Node, String) -> String?) -> [String: String]? {
        guard let vn = m.require("values", "register name: \(what), for every register the twin reports"),
              let entries = MappingReader.freeEntries(ctx, vn, keyPath(path, "values"), what: "a mapping register: \(what)") else { return nil }
        var ok = true
        var values: [String: String] = [:]
        for e in entries {
            let p = keyPath(keyPath(path, "values"), e.key)
            if !registers.contains(e.key) {
                ctx.error(e.keyNode, p, "no register \"\(e.key)\" in this map (registers: \(registers.sorted().joined(separator: ", ")))")
                ok = false
            }
            if let v = source(e.value, p) { values[e.key] = v } else { ok = false }
        }
        return ok ? values : nil
    }

    /// Integer code → status name (`status_codes` of Sparkplug, `status.values` of OPC UA); every
    /// name must be one of the map's statuses. Nil after an error.
    func parseStatusCodes(_ cn: Node, _ path: String, statusNames: Set<String>?) -> [Int64: String]? {
        guard let entries = MappingReader.freeEntries(ctx, cn, path, what: "a mapping code: status name") else { return nil }
        var ok = true
        var c: [Int64: String] = [:]
        for e in entries {
            let p = keyPath(path, e.key)
            guard let code = Int64(e.key) else {
                ctx.error(e.keyNode, p, "\"\(e.key)\" is not an integer code")
                ok = false
                continue
            }
            guard let name = ctx.string(e.value, p, expected: "a status name") else { ok = false; continue }
            if let statusNames, !statusNames.contains(name) {
                ctx.error(e.value, p, "unknown status \"\(name)\" (the map's statuses: \(statusNames.sorted().joined(separator: ", ")))")
                ok = false
            }
            c[code] = name
        }
        return ok ? c : nil
    }

    /// `twin.sparkplug`: values must name the map's registers, status codes its statuses.
    func parseSparkplugBinding(_ sn: Node, registers: Set<String>, statusNames: Set<String>?) -> SparkplugBinding? {
        let path = "twin.sparkplug"
        guard let m = MappingReader(ctx, sn, path, keys: ["group", "node", "device", "status", "status_codes", "values"],
                                    what: "a mapping (group, node, device, status, status_codes, values)") else { return nil }
        var ok = true
        func id(_ key: String, _ why: String) -> String? {
            guard let n = m.require(key, why), let s = ctx.string(n, keyPath(path, key), expected: "a Sparkplug id") else { ok = false; return nil }
            if s.isEmpty || s.contains(where: { "/+#".contains($0) }) {
                ctx.error(n, keyPath(path, key), "\"\(s)\" is not a Sparkplug id (no /, + or #, not empty)")
                ok = false
                return nil
            }
            return s
        }
        let group = id("group", "the Sparkplug group id")
        let nodeId = id("node", "the edge node id")
        let device = id("device", "the Sparkplug device id")
        let status = m.require("status", "the metric that carries the twin's status").flatMap { ctx.string($0, keyPath(path, "status"), expected: "a metric name") }
        if status == nil { ok = false }
        var codes: [Int64: String]?
        if let cn = m.take("status_codes") {
            codes = parseStatusCodes(cn, keyPath(path, "status_codes"), statusNames: statusNames)
            if codes == nil { ok = false }
        }
        let values = parseTwinValues(m, path, registers: registers, what: "metric name") { n, p in
            ctx.string(n, p, expected: "a metric name")
        }
        if values == nil { ok = false }
        guard ok, let group, let nodeId, let device, let status, let values else { return nil }
        return SparkplugBinding(group: group, node: nodeId, device: device, status: status, statusCodes: codes, values: values)
    }
}

/// Where a map's twin state comes from, when it is not JSON lines naming the device.
public enum TwinBinding: Sendable, Hashable {
    case sparkplug(SparkplugBinding)
    case opcua(OPCUABinding)
}
