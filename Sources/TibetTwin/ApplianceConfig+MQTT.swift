import Yams

extension ApplianceConfig {
    /// A twin feed from an MQTT broker (docs/mqtt.md): each message on `topics` is one twin
    /// line, judged exactly like a line from a socket or file.
    public struct MQTTFeed: Sendable, Hashable {
        public enum ProtocolVersion: String, Sendable, Hashable, CaseIterable {
            case v311 = "3.1.1"
            case v5 = "5"
        }

        /// TLS to the broker: the CA that signed the broker's certificate; a client
        /// certificate and key where the broker requires one.
        public struct TLS: Sendable, Hashable {
            public var ca: ConfiguredPath
            public var cert: ConfiguredPath?
            public var key: ConfiguredPath?

            public init(ca: ConfiguredPath, cert: ConfiguredPath? = nil, key: ConfiguredPath? = nil) {
                self.ca = ca
                self.cert = cert
                self.key = key
            }
        }

        /// The appliance as a Sparkplug B host application (docs/mqtt.md#sparkplug-b).
        public struct Sparkplug: Sendable, Hashable {
            /// The group whose edge nodes are read (`spBv1.0/<group>/#`).
            public var group: String
            /// The host application id of the STATE topic (`spBv1.0/STATE/<host_id>`).
            public var hostId: String
            public init(group: String, hostId: String) {
                self.group = group
                self.hostId = hostId
            }
        }

        public var broker: HostPort
        /// Topic filters (`+` and `#` wildcards allowed) of JSON twin lines; may be empty with `sparkplug`.
        public var topics: [String]
        public var sparkplug: Sparkplug?
        /// nil: `tibet-twin-<node>`.
        public var clientId: String?
        public var protocolVersion: ProtocolVersion
        public var keepaliveS: Int
        /// 0 or 1.
        public var qos: Int
        public var cleanSession: Bool
        public var username: String?
        /// A file holding the password (one line), readable by the service only.
        public var passwordFile: ConfiguredPath?
        public var tls: TLS?
        /// Messages larger than this are counted (`too_long`) and dropped. Default 65536.
        public var maxMessageBytes: Int
        /// The last level of the message's topic must be the line's `device`
        /// (`plant/twin/crane-01` carries only crane-01's lines).
        public var topicNamesDevice: Bool
        public var reconnectMinMs: Int
        public var reconnectMaxMs: Int

        public init(broker: HostPort, topics: [String], clientId: String? = nil, protocolVersion: ProtocolVersion = .v5,
                    keepaliveS: Int = 10, qos: Int = 1, cleanSession: Bool = true, username: String? = nil,
                    passwordFile: ConfiguredPath? = nil, tls: TLS? = nil, maxMessageBytes: Int = 65_536,
                    topicNamesDevice: Bool = false, reconnectMinMs: Int = 200, reconnectMaxMs: Int = 5000,
                    sparkplug: Sparkplug? = nil) {
            self.sparkplug = sparkplug
            self.broker = broker
            self.topics = topics
            self.clientId = clientId
            self.protocolVersion = protocolVersion
            self.keepaliveS = keepaliveS
            self.qos = qos
            self.cleanSession = cleanSession
            self.username = username
            self.passwordFile = passwordFile
            self.tls = tls
            self.maxMessageBytes = maxMessageBytes
            self.topicNamesDevice = topicNamesDevice
            self.reconnectMinMs = reconnectMinMs
            self.reconnectMaxMs = reconnectMaxMs
        }
    }
}

extension ConfigParser {
    /// The keys of an `mqtt:` feed mapping.
    static let mqttKeys = ["broker", "topics", "client_id", "protocol", "keepalive_s", "qos", "clean_session", "username",
                           "password_file", "tls", "max_message_bytes", "topic_names_device", "reconnect_min_ms", "reconnect_max_ms",
                           "sparkplug"]

    /// The `mqtt:` value of a feed entry at key path `p` (`twin.feeds[0]`); nil after an error.
    func parseMQTTFeed(_ node: Node, _ p: String) -> ApplianceConfig.MQTTFeed? {
        let path = keyPath(p, "mqtt")
        guard let m = MappingReader(ctx, node, path, keys: Self.mqttKeys,
                                    what: "a mapping (broker: HOST:PORT, topics: [FILTER, …], …)") else { return nil }
        var ok = true
        let broker = m.require("broker", "the broker's host:port, e.g. 127.0.0.1:1883").flatMap { hostPort($0, keyPath(path, "broker")) }
        var topics: [String] = []
        var sparkplug: ApplianceConfig.MQTTFeed.Sparkplug?
        if let sn = m.take("sparkplug") {
            let sp = keyPath(path, "sparkplug")
            if let sm = MappingReader(ctx, sn, sp, keys: ["group", "host_id"], what: "a mapping (group, host_id)") {
                func id(_ key: String, _ why: String) -> String? {
                    guard let n = sm.require(key, why), let s = ctx.string(n, keyPath(sp, key), expected: "a Sparkplug id") else { return nil }
                    if s.isEmpty || s.contains(where: { "/+#".contains($0) }) {
                        ctx.error(n, keyPath(sp, key), "\"\(s)\" is not a Sparkplug id (no /, + or #, not empty)")
                        return nil
                    }
                    return s
                }
                let group = id("group", "the Sparkplug group whose edge nodes are the twin")
                let host = id("host_id", "this appliance's host application id, for its STATE topic")
                if let group, let host { sparkplug = .init(group: group, hostId: host) } else { ok = false }
            } else { ok = false }
        }
        if let tn = sparkplug != nil ? m.take("topics") : m.require("topics", "the topic filters the twin publishes on, e.g. [plant/twin/+]") {
            if let items = ctx.list(tn, keyPath(path, "topics"), of: "topic filters") {
                for (i, item) in items.enumerated() {
                    let ip = keyPath(keyPath(path, "topics"), index: i)
                    guard let s = ctx.string(item, ip, expected: "a topic filter") else { ok = false; continue }
                    if let why = Self.topicFilterProblem(s) {
                        ctx.error(item, ip, "invalid topic filter \"\(s)\": \(why)")
                        ok = false
                    } else { topics.append(s) }
                }
                if items.isEmpty {
                    ctx.error(tn, keyPath(path, "topics"), "is empty: nothing would ever arrive")
                    ok = false
                }
            } else { ok = false }
        }
        if broker == nil { ok = false }
        guard let broker else { return nil }
        var r = ApplianceConfig.MQTTFeed(broker: broker, topics: topics, sparkplug: sparkplug)
        if !parseMQTTConnection(m, node, path, &r) { ok = false }
        return ok ? r : nil
    }

    /// The connection keys shared by an `mqtt:` feed and `publish:` (client id, protocol,
    /// keepalive, credentials, TLS, reconnect backoff, and for a feed qos, clean_session and the
    /// message limits), read from `m` into `r`; false after an error.
    func parseMQTTConnection(_ m: MappingReader, _ node: Node, _ path: String, _ r: inout ApplianceConfig.MQTTFeed) -> Bool {
        var ok = true
        // `publish:` declares fewer keys than a feed (no qos, clean_session, message limits).
        func take(_ key: String) -> Node? { m.known.contains(key) ? m.take(key) : nil }
        if let n = take("client_id") {
            if let s = ctx.string(n, keyPath(path, "client_id"), expected: "a client id") {
                if s.isEmpty || s.utf8.count > 65_535 {
                    ctx.error(n, keyPath(path, "client_id"), "must be 1…65535 bytes")
                    ok = false
                } else { r.clientId = s }
            } else { ok = false }
        }
        if let n = take("protocol") {
            if let v = ctx.choice(ApplianceConfig.MQTTFeed.ProtocolVersion.self, n, keyPath(path, "protocol"), what: "MQTT protocol version") {
                r.protocolVersion = v
            } else { ok = false }
        }
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = take(key) else { return nil }
            let v = ctx.int(n, keyPath(path, key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        func bool(_ key: String) -> Bool? {
            guard let n = take(key) else { return nil }
            let v = ctx.bool(n, keyPath(path, key))
            if v == nil { ok = false }
            return v
        }
        func file(_ tm: MappingReader, _ base: String, _ key: String, required: String?) -> ApplianceConfig.ConfiguredPath? {
            guard let v = required.map({ tm.require(key, $0) }) ?? tm.take(key) else { return nil }
            guard let s = ctx.string(v, keyPath(base, key), expected: "a file path") else { ok = false; return nil }
            return ApplianceConfig.ConfiguredPath(path: ApplianceConfig.resolve(s, against: baseDir),
                                                  keyPath: keyPath(base, key), location: ctx.location(v))
        }
        if let v = int("keepalive_s", 5...3600, "seconds 5…3600") { r.keepaliveS = v }
        if let v = int("qos", 0...1, "0 or 1 (QoS 2 is not used: a twin line is a state, not an event)") { r.qos = v }
        if let v = bool("clean_session") { r.cleanSession = v }
        if let v = int("max_message_bytes", 64...16_777_216, "bytes 64…16777216") { r.maxMessageBytes = v }
        if let v = bool("topic_names_device") { r.topicNamesDevice = v }
        if let v = int("reconnect_min_ms", 10...60_000, "milliseconds 10…60000") { r.reconnectMinMs = v }
        if let v = int("reconnect_max_ms", 10...600_000, "milliseconds 10…600000") { r.reconnectMaxMs = v }
        if r.reconnectMaxMs < r.reconnectMinMs {
            ctx.error(take("reconnect_max_ms") ?? node, keyPath(path, "reconnect_max_ms"),
                      "\(r.reconnectMaxMs) is below reconnect_min_ms \(r.reconnectMinMs)")
            ok = false
        }
        if let n = take("username") {
            if let s = ctx.string(n, keyPath(path, "username"), expected: "a user name") { r.username = s } else { ok = false }
        }
        r.passwordFile = file(m, path, "password_file", required: nil)
        if r.passwordFile != nil, r.username == nil {
            ctx.error(m.keyNode("password_file"), keyPath(path, "password_file"), "needs username too")
            ok = false
        }
        if let n = take("tls") {
            let tp = keyPath(path, "tls")
            if let tm = MappingReader(ctx, n, tp, keys: ["ca", "cert", "key"], what: "a mapping (ca, and cert + key where the broker asks for a client certificate)") {
                let ca = file(tm, tp, "ca", required: "the CA that signed the broker's certificate, PEM")
                let cert = file(tm, tp, "cert", required: nil)
                let key = file(tm, tp, "key", required: nil)
                if (cert == nil) != (key == nil) {
                    ctx.error(n, tp, "cert and key go together (a client certificate and its private key)")
                    ok = false
                }
                if let ca { r.tls = .init(ca: ca, cert: cert, key: key) } else { ok = false }
            } else { ok = false }
        }
        return ok
    }

    /// Why `filter` is not a valid MQTT topic filter, or nil.
    static func topicFilterProblem(_ filter: String) -> String? {
        if filter.isEmpty { return "empty" }
        if filter.utf8.count > 65_535 { return "longer than 65535 bytes" }
        if filter.utf8.contains(0) { return "contains a NUL character" }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (i, level) in levels.enumerated() {
            if level.contains("#"), level != "#" || i != levels.count - 1 { return "# must be a whole level and the last one" }
            if level.contains("+"), level != "+" { return "+ must be a whole level" }
        }
        return nil
    }
}
