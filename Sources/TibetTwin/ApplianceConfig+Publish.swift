import Yams

extension ApplianceConfig {
    /// `publish:` (docs/mqtt.md#publishing-the-permits): the permits as the interlock serves them,
    /// published to an MQTT broker for SCADA and historians, as a Sparkplug B edge node and/or as
    /// plain JSON. For display and records only: the permit coil is the only control path.
    public struct Publish: Sendable, Hashable {
        /// The appliance as a Sparkplug B edge node (`spBv1.0/<group>/…/<node>`).
        public struct Sparkplug: Sendable, Hashable {
            public var group: String
            /// The edge node id; default: the appliance's `node`.
            public var node: String
            public init(group: String, node: String) {
                self.group = group
                self.node = node
            }
        }

        /// Plain JSON, one retained message per device at `<prefix>/<node>/<device>`.
        public struct JSONOutput: Sendable, Hashable {
            public var prefix: String
            /// Retained (default): a reader that subscribes later sees the last state, with its `ts`.
            public var retain: Bool
            public init(prefix: String = "tibet-twin", retain: Bool = true) {
                self.prefix = prefix
                self.retain = retain
            }
        }

        /// The broker and how to connect (the same keys as an `mqtt:` feed; `topics`, `qos`,
        /// `clean_session` and the message limits do not apply).
        public var connection: MQTTFeed
        public var sparkplug: Sparkplug?
        public var json: JSONOutput?

        public init(connection: MQTTFeed, sparkplug: Sparkplug? = nil, json: JSONOutput? = nil) {
            self.connection = connection
            self.sparkplug = sparkplug
            self.json = json
        }
    }
}

extension ConfigParser {
    static let publishKeys = ["broker", "client_id", "protocol", "keepalive_s", "username", "password_file", "tls",
                              "reconnect_min_ms", "reconnect_max_ms", "sparkplug", "json"]

    /// `publish:`; nil after an error. `node` is the appliance's name (the default edge node id).
    func parsePublish(_ node: Node, applianceNode: String?) -> ApplianceConfig.Publish? {
        let path = "publish"
        guard let m = MappingReader(ctx, node, path, keys: Self.publishKeys,
                                    what: "a mapping (broker: HOST:PORT, sparkplug: {group: G}, json: {prefix: P}, …)") else { return nil }
        var ok = true
        let broker = m.require("broker", "the broker's host:port, e.g. 127.0.0.1:1883").flatMap { hostPort($0, keyPath(path, "broker")) }
        func id(_ sm: MappingReader, _ sp: String, _ key: String, _ why: String?) -> String? {
            guard let n = why.map({ sm.require(key, $0) }) ?? sm.take(key) else { return nil }
            guard let s = ctx.string(n, keyPath(sp, key), expected: "a Sparkplug id") else { ok = false; return nil }
            if s.isEmpty || s.contains(where: { "/+#".contains($0) }) {
                ctx.error(n, keyPath(sp, key), "\"\(s)\" is not a Sparkplug id (no /, + or #, not empty)")
                ok = false
                return nil
            }
            return s
        }
        var sparkplug: ApplianceConfig.Publish.Sparkplug?
        if let sn = m.take("sparkplug") {
            let sp = keyPath(path, "sparkplug")
            if let sm = MappingReader(ctx, sn, sp, keys: ["group", "node"], what: "a mapping (group, node)") {
                let group = id(sm, sp, "group", "the Sparkplug group the appliance's edge node belongs to")
                let edge = id(sm, sp, "node", nil) ?? applianceNode
                if let group, let edge { sparkplug = .init(group: group, node: edge) } else { ok = false }
            } else { ok = false }
        }
        var json: ApplianceConfig.Publish.JSONOutput?
        if let jn = m.take("json") {
            let jp = keyPath(path, "json")
            if let jm = MappingReader(ctx, jn, jp, keys: ["prefix", "retain"], what: "a mapping (prefix, retain)") {
                var j = ApplianceConfig.Publish.JSONOutput()
                if let n = jm.take("prefix") {
                    if let s = ctx.string(n, keyPath(jp, "prefix"), expected: "a topic prefix") {
                        if s.isEmpty || s.contains(where: { "+#".contains($0) }) || s.hasPrefix("/") || s.hasSuffix("/")
                            || s.hasPrefix("$") || s.utf8.contains(0) {
                            ctx.error(n, keyPath(jp, "prefix"), "\"\(s)\" is not a topic prefix (no + or #, no leading $, no / at either end)")
                            ok = false
                        } else { j.prefix = s }
                    } else { ok = false }
                }
                if let n = jm.take("retain") {
                    if let b = ctx.bool(n, keyPath(jp, "retain")) { j.retain = b } else { ok = false }
                }
                json = j
            } else { ok = false }
        }
        if !m.has("sparkplug") && !m.has("json") {
            ctx.error(node, path, "publishes nothing: add sparkplug: {group: G} and/or json: {}")
            ok = false
        }
        guard let broker else { return nil }
        var connection = ApplianceConfig.MQTTFeed(broker: broker, topics: [])
        if !parseMQTTConnection(m, node, path, &connection) { ok = false }
        return ok ? ApplianceConfig.Publish(connection: connection, sparkplug: sparkplug, json: json) : nil
    }
}
