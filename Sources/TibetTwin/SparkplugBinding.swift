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
        if let statusCodes {
            guard let number, number.rounded() == number, abs(number) < 9e15 else { return nil }
            return statusCodes[Int64(number)]
        }
        return text
    }
}

extension MapParser {
    /// `twin: {sparkplug: {…}}`; values must name the map's registers, status codes its statuses.
    func parseTwinSource(_ node: Node, registers: Set<String>, statusNames: Set<String>?) -> SparkplugBinding? {
        guard let tm = MappingReader(ctx, node, "twin", keys: ["sparkplug"], what: "a mapping (sparkplug: {group, node, device, status, values})"),
              let sn = tm.require("sparkplug", "the Sparkplug B device that is this map's twin") else { return nil }
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
            var c: [Int64: String] = [:]
            if let entries = MappingReader.freeEntries(ctx, cn, keyPath(path, "status_codes"), what: "a mapping code: status name") {
                for e in entries {
                    let p = keyPath(keyPath(path, "status_codes"), e.key)
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
            } else { ok = false }
            codes = c
        }
        var values: [String: String] = [:]
        if let vn = m.require("values", "register name: metric name, for every register the twin reports") {
            if let entries = MappingReader.freeEntries(ctx, vn, keyPath(path, "values"), what: "a mapping register: metric name") {
                for e in entries {
                    let p = keyPath(keyPath(path, "values"), e.key)
                    if !registers.contains(e.key) {
                        ctx.error(e.keyNode, p, "no register \"\(e.key)\" in this map (registers: \(registers.sorted().joined(separator: ", ")))")
                        ok = false
                    }
                    if let metric = ctx.string(e.value, p, expected: "a metric name") { values[e.key] = metric } else { ok = false }
                }
            } else { ok = false }
        } else { ok = false }
        guard ok, let group, let nodeId, let device, let status else { return nil }
        return SparkplugBinding(group: group, node: nodeId, device: device, status: status, statusCodes: codes, values: values)
    }
}
