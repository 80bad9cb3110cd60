import OPCUATypes
import Yams

extension ApplianceConfig {
    /// A twin feed from an OPC UA server (docs/opcua.md): the appliance subscribes to the nodes
    /// the maps bind (`twin: {opcua: …}`) and turns them into twin states per device.
    public struct OPCUAFeed: Sendable, Hashable {
        /// How the channel to the server is secured: everything the feed needs for a secured
        /// channel, in one place (the Appliance hands it to the OPC UA client).
        public struct Security: Sendable, Hashable {
            public enum Policy: String, Sendable, Hashable, CaseIterable {
                case none = "None"
                case basic256Sha256 = "Basic256Sha256"
            }

            public enum Mode: String, Sendable, Hashable, CaseIterable {
                case none = "None"
                case sign = "Sign"
                case signAndEncrypt = "SignAndEncrypt"
            }

            public var policy: Policy
            public var mode: Mode
            /// The appliance's application instance certificate (DER or PEM).
            public var certificate: ConfiguredPath?
            public var privateKey: ConfiguredPath?
            /// Certificates of the servers the appliance trusts.
            public var trustDir: ConfiguredPath?
            /// Where `policy` was written and its key path, for start-up errors.
            public var policyLocation: SourceLocation?
            public var policyKeyPath = ""

            public init(policy: Policy = .none, mode: Mode = .none, certificate: ConfiguredPath? = nil,
                        privateKey: ConfiguredPath? = nil, trustDir: ConfiguredPath? = nil) {
                self.policy = policy
                self.mode = mode
                self.certificate = certificate
                self.privateKey = privateKey
                self.trustDir = trustDir
            }

            /// Policy None, mode None.
            public static let none = Security()
        }

        /// `opc.tcp://HOST[:PORT][/PATH]` as written.
        public var endpoint: String
        public var user: String?
        /// A file holding the password (first line), readable by the service only.
        public var passwordFile: ConfiguredPath?
        public var security: Security
        /// How often the server sends notifications, ms (default 50).
        public var publishingMs: Double
        /// Each request's deadline, ms.
        public var timeoutMs: Int
        public var reconnectMinMs: Int
        public var reconnectMaxMs: Int

        public init(endpoint: String, user: String? = nil, passwordFile: ConfiguredPath? = nil, security: Security = .none,
                    publishingMs: Double = 50, timeoutMs: Int = 5000, reconnectMinMs: Int = 200, reconnectMaxMs: Int = 5000) {
            self.endpoint = endpoint
            self.user = user
            self.passwordFile = passwordFile
            self.security = security
            self.publishingMs = publishingMs
            self.timeoutMs = timeoutMs
            self.reconnectMinMs = reconnectMinMs
            self.reconnectMaxMs = reconnectMaxMs
        }
    }
}

extension ConfigParser {
    static let opcuaKeys = ["endpoint", "user", "password_file", "security", "publishing_ms", "timeout_ms",
                            "reconnect_min_ms", "reconnect_max_ms"]

    /// The `opcua:` value of a feed entry at key path `p`; nil after an error.
    func parseOPCUAFeed(_ node: Node, _ p: String) -> ApplianceConfig.OPCUAFeed? {
        let path = keyPath(p, "opcua")
        guard let m = MappingReader(ctx, node, path, keys: Self.opcuaKeys,
                                    what: "a mapping (endpoint: opc.tcp://HOST:4840, user, password_file, security)") else { return nil }
        var ok = true
        var endpoint: String?
        if let n = m.require("endpoint", "the server's endpoint URL, e.g. opc.tcp://model-pc:4840") {
            if let s = ctx.string(n, keyPath(path, "endpoint"), expected: "an endpoint URL opc.tcp://HOST[:PORT][/PATH]") {
                do {
                    _ = try OPCUAEndpointText(parsing: s)
                    endpoint = s
                } catch {
                    ctx.error(n, keyPath(path, "endpoint"), "\"\(s)\" is not an OPC UA endpoint: \(error.reason)")
                }
            }
        }
        guard let endpoint else { return nil }
        var r = ApplianceConfig.OPCUAFeed(endpoint: endpoint)
        func file(_ tm: MappingReader, _ base: String, _ key: String) -> ApplianceConfig.ConfiguredPath? {
            guard let v = tm.take(key) else { return nil }
            guard let s = ctx.string(v, keyPath(base, key), expected: "a file path") else { ok = false; return nil }
            return ApplianceConfig.ConfiguredPath(path: ApplianceConfig.resolve(s, against: baseDir),
                                                  keyPath: keyPath(base, key), location: ctx.location(v))
        }
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = m.take(key) else { return nil }
            let v = ctx.int(n, keyPath(path, key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        if let n = m.take("user") {
            if let s = ctx.string(n, keyPath(path, "user"), expected: "a user name") { r.user = s } else { ok = false }
        }
        r.passwordFile = file(m, path, "password_file")
        if r.passwordFile != nil, r.user == nil {
            ctx.error(m.keyNode("password_file"), keyPath(path, "password_file"), "needs user too")
            ok = false
        }
        if r.user != nil, r.passwordFile == nil {
            ctx.error(m.keyNode("user"), keyPath(path, "user"), "needs password_file too (the password is never written in the config)")
            ok = false
        }
        if let v = int("publishing_ms", 10...60_000, "milliseconds 10…60000") { r.publishingMs = Double(v) }
        if let v = int("timeout_ms", 100...60_000, "milliseconds 100…60000") { r.timeoutMs = v }
        if let v = int("reconnect_min_ms", 10...60_000, "milliseconds 10…60000") { r.reconnectMinMs = v }
        if let v = int("reconnect_max_ms", 10...600_000, "milliseconds 10…600000") { r.reconnectMaxMs = v }
        if r.reconnectMaxMs < r.reconnectMinMs {
            ctx.error(m.take("reconnect_max_ms") ?? node, keyPath(path, "reconnect_max_ms"),
                      "\(r.reconnectMaxMs) is below reconnect_min_ms \(r.reconnectMinMs)")
            ok = false
        }
        if let sn = m.take("security") {
            let sp = keyPath(path, "security")
            if case .scalar = sn {
                // `security: none`
                if let s = ctx.string(sn, sp, expected: "none, or a mapping (policy, mode, certificate, private_key, trust_dir)") {
                    if s.lowercased() != "none" {
                        ctx.error(sn, sp, "\"\(s)\": expected none, or a mapping {policy: Basic256Sha256, mode: Sign|SignAndEncrypt, certificate, private_key, trust_dir}")
                        ok = false
                    }
                } else { ok = false }
            } else if let sm = MappingReader(ctx, sn, sp, keys: ["policy", "mode", "certificate", "private_key", "trust_dir"],
                                             what: "none, or a mapping (policy, mode, certificate, private_key, trust_dir)") {
                var s = ApplianceConfig.OPCUAFeed.Security()
                if let n = sm.require("policy", "the security policy: None or Basic256Sha256") {
                    s.policyLocation = ctx.location(n)
                    s.policyKeyPath = keyPath(sp, "policy")
                    if let v = ctx.choice(ApplianceConfig.OPCUAFeed.Security.Policy.self, n, keyPath(sp, "policy"), what: "security policy") {
                        s.policy = v
                    } else { ok = false }
                }
                if let n = sm.take("mode") {
                    if let v = ctx.choice(ApplianceConfig.OPCUAFeed.Security.Mode.self, n, keyPath(sp, "mode"), what: "security mode") {
                        s.mode = v
                    } else { ok = false }
                } else if s.policy != .none {
                    ctx.error(sn, keyPath(sp, "mode"), "missing required key \"mode\" (Sign or SignAndEncrypt)")
                    ok = false
                }
                s.certificate = file(sm, sp, "certificate")
                s.privateKey = file(sm, sp, "private_key")
                s.trustDir = file(sm, sp, "trust_dir")
                if s.policy == .none, s.mode != .none {
                    ctx.error(sm.keyNode("mode"), keyPath(sp, "mode"), "policy None has mode None only")
                    ok = false
                }
                if s.policy != .none {
                    if s.mode == .none {
                        ctx.error(sm.keyNode("mode"), keyPath(sp, "mode"), "policy \(s.policy.rawValue) needs mode Sign or SignAndEncrypt")
                        ok = false
                    }
                    for (key, v) in [("certificate", s.certificate), ("private_key", s.privateKey), ("trust_dir", s.trustDir)] where v == nil {
                        ctx.error(sn, keyPath(sp, key), "missing required key \"\(key)\" (policy \(s.policy.rawValue) needs the appliance's certificate, its private key and a trust directory)")
                        ok = false
                    }
                }
                r.security = s
            } else { ok = false }
        }
        return ok ? r : nil
    }
}
