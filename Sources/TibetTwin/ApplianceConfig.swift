import Yams

/// The appliance config file (`tibet-twin.yaml`, docs/config.md), parsed and resolved: defaults
/// applied, relative paths made relative to the config file's directory, addresses and CIDRs
/// checked. Errors have the same form as map errors: `file:line:col: key.path: message`.
public struct ApplianceConfig: Sendable, Hashable {
    /// This appliance's name, in every audit token (`jis:<node>`).
    public var node: String
    /// Map files or directories (`maps:` is one path or a list), resolved against the config file.
    public var maps: [String]
    public var interlock: Interlock
    public var twin: Twin
    public var audit: Audit
    public var http: HTTP
    /// `publish:`: the permits published to an MQTT broker for display and records; nil: off.
    public var publish: Publish?
    /// The file the config came from.
    public var sourceFile: String
    /// Where each top-level key's value was written, for errors found after parsing.
    public var keyLocations: [String: SourceLocation]

    /// The Modbus/TCP server the interlock PLCs read their permits from (docs/interlock.md).
    public struct Interlock: Sendable, Hashable {
        /// Listen address, default `0.0.0.0:502`.
        public var listen: HostPort
        /// Unit id answered, default 1 (0 and 255, the Modbus/TCP "this device", are answered too).
        public var unit: Int
        /// Client networks allowed to connect, default `127.0.0.0/8` and `::1/128` only.
        public var allow: [CIDRBlock]
        /// Connections at once, default 16.
        public var maxClients: Int
        /// On shutdown, permits are served as 0 this long before the socket closes; default 2000.
        public var stopGraceMs: Int
        /// A client silent this long is closed; 0 = never. Default 60000.
        public var idleTimeoutMs: Int
        /// A partial frame older than this closes its connection; default 500.
        public var byteTimeoutMs: Int

        public init(listen: HostPort = HostPort(host: "0.0.0.0", port: 502), unit: Int = 1,
                    allow: [CIDRBlock] = ApplianceConfig.Interlock.defaultAllow, maxClients: Int = 16,
                    stopGraceMs: Int = 2000, idleTimeoutMs: Int = 60000, byteTimeoutMs: Int = 500) {
            self.listen = listen
            self.unit = unit
            self.allow = allow
            self.maxClients = maxClients
            self.stopGraceMs = stopGraceMs
            self.idleTimeoutMs = idleTimeoutMs
            self.byteTimeoutMs = byteTimeoutMs
        }

        /// Loopback only: an appliance serves nobody else until its config says so.
        public static let defaultAllow: [CIDRBlock] = [CIDRBlock("127.0.0.0/8")!, CIDRBlock("::1/128")!]

        /// Whether a client address (4 or 16 bytes) is in one of the `allow` networks.
        public func allows(_ address: [UInt8]) -> Bool {
            allow.contains { $0.contains(address) }
        }
    }

    /// One source of twin feed lines (docs/twin-feed.md).
    public enum Feed: Sendable, Hashable, CustomStringConvertible {
        /// A file followed like `tail -F`; from its current end unless `fromStart`.
        case file(path: String, fromStart: Bool)
        /// A TCP listener twin clients connect to.
        case tcp(listen: HostPort, access: SocketFeedAccess = SocketFeedAccess())
        /// A unix stream socket twin clients connect to (`access.allow`, the per-address limit
        /// and `tls` do not apply: the parser refuses them on a unix feed).
        case unix(path: String, access: SocketFeedAccess = SocketFeedAccess())
        /// An MQTT broker the appliance subscribes to (docs/mqtt.md).
        case mqtt(MQTTFeed)
        /// An OPC UA server whose nodes the maps bind (docs/opcua.md).
        case opcua(OPCUAFeed)

        public var description: String {
            switch self {
            case .file(let p, let s): return s ? "file:\(p) (from start)" : "file:\(p)"
            case .tcp(let a, _): return "tcp:\(a)"
            case .unix(let p, _): return "unix:\(p)"
            case .mqtt(let m): return "mqtt:\(m.broker)"
            case .opcua(let o): return "opcua:\(o.endpoint)"
            }
        }
    }

    /// Who may hold a socket feed's connections, and for how long (docs/config.md `twin.feeds`):
    /// the twin's slots must not be taken by anyone else, because a twin that cannot connect
    /// holds every permit at 0.
    public struct SocketFeedAccess: Sendable, Hashable {
        /// TCP: client networks allowed to connect, default `127.0.0.0/8` and `::1/128` only.
        public var allow: [CIDRBlock]
        /// Connections at once, default 32.
        public var maxClients: Int
        /// TCP: connections at once from one address, default 4.
        public var maxClientsPerAddress: Int
        /// A client that sent no accepted line this long is closed; 0 = never. Default 5000.
        public var idleTimeoutMs: Int
        /// A partial line older than this closes its connection; default 2000.
        public var lineTimeoutMs: Int
        /// TCP: TLS with client certificates; nil = plain TCP.
        public var tls: FeedTLS?

        public init(allow: [CIDRBlock] = ApplianceConfig.Interlock.defaultAllow, maxClients: Int = 32,
                    maxClientsPerAddress: Int = 4, idleTimeoutMs: Int = 5000, lineTimeoutMs: Int = 2000,
                    tls: FeedTLS? = nil) {
            self.allow = allow
            self.maxClients = maxClients
            self.maxClientsPerAddress = maxClientsPerAddress
            self.idleTimeoutMs = idleTimeoutMs
            self.lineTimeoutMs = lineTimeoutMs
            self.tls = tls
        }
    }

    /// A TCP feed's TLS files (PEM), read when the appliance starts; each remembers where the
    /// config named it, so a missing or bad file is reported as `file:line:col: key: …`.
    public struct FeedTLS: Sendable, Hashable {
        /// The listener's certificate (chain, leaf first).
        public var cert: ConfiguredPath
        /// The listener's private key.
        public var key: ConfiguredPath
        /// The CA certificate(s) a twin's client certificate must be signed by.
        public var clientCA: ConfiguredPath

        public init(cert: ConfiguredPath, key: ConfiguredPath, clientCA: ConfiguredPath) {
            self.cert = cert
            self.key = key
            self.clientCA = clientCA
        }
    }

    /// A file path from the config (resolved against the config's directory), with its key path
    /// and where it was written.
    public struct ConfiguredPath: Sendable, Hashable, CustomStringConvertible {
        public var path: String
        public var keyPath: String
        public var location: SourceLocation

        public init(path: String, keyPath: String, location: SourceLocation) {
            self.path = path
            self.keyPath = keyPath
            self.location = location
        }

        /// `file:line:col: key.path` — the start of an error about this file.
        public var description: String { "\(location): \(keyPath)" }
    }

    public struct Twin: Sendable, Hashable {
        public var feeds: [Feed]
        public init(feeds: [Feed]) { self.feeds = feeds }
    }

    /// The TIBET audit chain (docs/audit.md).
    public struct Audit: Sendable, Hashable {
        /// Directory of `tibet-<n>.jsonl` segments, default `/var/lib/tibet-twin/audit`.
        public var dir: String
        /// The Ed25519 signing key file, default `/etc/tibet-twin/guard.key`.
        public var key: String
        /// A checkpoint token with the full permit table this often; default 60 s.
        public var checkpointS: Int
        /// A segment is closed and the next begun after this many bytes; default 64 MiB.
        public var segmentBytes: Int
        /// `audit.retain.max_bytes`: old segments are removed at a rotation while the kept
        /// segments exceed this; nil (default): keep everything.
        public var retainMaxBytes: Int?
        /// `audit.retain.max_age_days`: old segments whose last token is older are removed at a
        /// rotation; nil (default): keep everything.
        public var retainMaxAgeDays: Int?

        public init(dir: String = "/var/lib/tibet-twin/audit", key: String = "/etc/tibet-twin/guard.key",
                    checkpointS: Int = 60, segmentBytes: Int = 64 << 20,
                    retainMaxBytes: Int? = nil, retainMaxAgeDays: Int? = nil) {
            self.retainMaxBytes = retainMaxBytes
            self.retainMaxAgeDays = retainMaxAgeDays
            self.dir = dir
            self.key = key
            self.checkpointS = checkpointS
            self.segmentBytes = segmentBytes
        }
    }

    /// The local HTTP API (`/metrics`, `/status`, `/healthz`, reset; docs/operations.md#the-http-api).
    public struct HTTP: Sendable, Hashable {
        /// Default `127.0.0.1:9102`.
        public var listen: HostPort
        /// A request (head and body) must have arrived this long after the connection was
        /// accepted or the previous answer sent, or the connection is closed; default 2000.
        public var requestTimeoutMs: Int
        /// Connections at once from one client address (of the 32 in all); default 8.
        public var maxConnectionsPerClient: Int
        /// The file holding the bearer token `POST /reset` must present; nil: resets are not
        /// authenticated (allowed only while `listen` is a loopback address).
        public var resetTokenFile: String?
        /// Where `reset_token_file` was written, for start-up errors about the file.
        public var resetTokenFileLocation: SourceLocation?
        /// Resets accepted per second from one client address (and as a burst); default 5.
        public var resetsPerSecond: Int

        public init(listen: HostPort = HostPort(host: "127.0.0.1", port: 9102), requestTimeoutMs: Int = 2000,
                    maxConnectionsPerClient: Int = 8, resetTokenFile: String? = nil,
                    resetTokenFileLocation: SourceLocation? = nil, resetsPerSecond: Int = 5) {
            self.listen = listen
            self.requestTimeoutMs = requestTimeoutMs
            self.maxConnectionsPerClient = maxConnectionsPerClient
            self.resetTokenFile = resetTokenFile
            self.resetTokenFileLocation = resetTokenFileLocation
            self.resetsPerSecond = resetsPerSecond
        }

        /// Whether `host` names this machine only: `localhost`, 127.0.0.0/8, `::1` (or
        /// `::ffff:127.x.x.x`). A wildcard (`0.0.0.0`, `::`) or any other name is not.
        public static func isLoopback(host: String) -> Bool {
            if host.lowercased() == "localhost" { return true }
            guard let b = IPAddress.parse(host) else { return false }
            if b.count == 4 { return b[0] == 127 }
            if b == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff && b[12] == 127
        }

        // The location is where the key was written, not part of the setting: moving a line
        // must not make a reload report "http" as changed.
        public static func == (a: HTTP, b: HTTP) -> Bool {
            a.listen == b.listen && a.requestTimeoutMs == b.requestTimeoutMs
                && a.maxConnectionsPerClient == b.maxConnectionsPerClient && a.resetTokenFile == b.resetTokenFile
                && a.resetsPerSecond == b.resetsPerSecond
        }

        public func hash(into h: inout Hasher) {
            h.combine(listen)
            h.combine(requestTimeoutMs)
            h.combine(maxConnectionsPerClient)
            h.combine(resetTokenFile)
            h.combine(resetsPerSecond)
        }
    }

    public init(node: String, maps: [String] = ["maps/"], interlock: Interlock = Interlock(), twin: Twin,
                audit: Audit = Audit(), http: HTTP = HTTP(), sourceFile: String = "",
                keyLocations: [String: SourceLocation] = [:], publish: Publish? = nil) {
        self.publish = publish
        self.node = node
        self.maps = maps
        self.interlock = interlock
        self.twin = twin
        self.audit = audit
        self.http = http
        self.sourceFile = sourceFile
        self.keyLocations = keyLocations
    }

    /// The keys a config file may have at its top level.
    public static let topLevelKeys = ["node", "maps", "interlock", "twin", "audit", "http", "publish"]

    /// Parses a config file's text. `file` is its path: used in errors and to resolve relative
    /// paths (maps, feeds, audit). Every problem is reported, not just the first.
    public static func parse(yaml: String, file: String) throws(MapErrors) -> ApplianceConfig {
        let ctx = YAMLContext(file: file)
        var config: ApplianceConfig?
        if let root = ctx.compose(yaml, emptyMessage: "empty config file (expected a mapping with node, maps, interlock, twin, audit, http)") {
            let parser = ConfigParser(ctx: ctx, baseDir: directory(of: file))
            config = parser.parse(root)
            // Key locations for start-up errors, and feeds or listeners that would collide.
            if var c = config {
                parser.checkAcrossKeys(root, &c)
                config = c
            }
        }
        guard ctx.issues.isEmpty, var config else {
            var issues = ctx.sortedIssues
            if issues.isEmpty {
                issues = [MapIssue(location: SourceLocation(file: file, line: 1, column: 1), keyPath: "", message: "config could not be read")]
            }
            throw MapErrors(issues)
        }
        config.sourceFile = file
        return config
    }

    /// The directory part of a path (`""` for a bare file name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// `path` made relative to `base` unless it is absolute (or `base` is empty).
    static func resolve(_ path: String, against base: String) -> String {
        if path.hasPrefix("/") || base.isEmpty { return path }
        return base.hasSuffix("/") ? base + path : base + "/" + path
    }
}

/// The parser for one config file.
struct ConfigParser {
    let ctx: YAMLContext
    let baseDir: String

    func parse(_ root: Node) -> ApplianceConfig? {
        guard let m = MappingReader(ctx, root, "", keys: ApplianceConfig.topLevelKeys,
                                    what: "a mapping (an appliance config: node, maps, interlock, twin, audit, http)")
        else { return nil }
        let node = m.require("node", "this appliance's name, in every audit token")
            .flatMap { ctx.name($0, "node", what: "node name") }
        var maps = ["maps/"]
        if let mn = m.take("maps") {
            if case .sequence = mn {
                maps = ctx.list(mn, "maps", of: "paths")?.enumerated().compactMap { i, n in
                    ctx.string(n, keyPath("maps", index: i), expected: "a path")
                } ?? []
                if maps.isEmpty { ctx.error(mn, "maps", "needs at least one path") }
            } else if let p = ctx.string(mn, "maps", expected: "a path or a list of paths") {
                maps = [p]
            }
        }
        maps = maps.map { ApplianceConfig.resolve($0, against: baseDir) }
        let interlock = m.take("interlock").map(parseInterlock) ?? ApplianceConfig.Interlock()
        var twin = m.require("twin", "where twin feed lines come from: {feeds: [{tcp: 127.0.0.1:7502}]}").flatMap(parseTwin)
        // An MQTT feed's client id defaults to the appliance's name (unique per broker).
        if let node, var t = twin {
            t.feeds = t.feeds.map { f in
                guard case .mqtt(var m) = f, m.clientId == nil else { return f }
                m.clientId = "tibet-twin-\(node)"
                return .mqtt(m)
            }
            twin = t
        }
        let audit = m.take("audit").map(parseAudit) ?? ApplianceConfig.Audit()
        let http = m.take("http").map(parseHTTP) ?? ApplianceConfig.HTTP()
        // Its own client id: the broker would close the feed's session for a second client with the same one.
        let publish = m.take("publish").map { n in
            parsePublish(n, applianceNode: node).map { p in
                var p = p
                if p.connection.clientId == nil, let node { p.connection.clientId = "tibet-twin-\(node)-publish" }
                return p
            }
        }
        guard ctx.issues.isEmpty, let node, let interlock, let twin, let audit, let http else { return nil }
        if case .some(nil) = publish { return nil }
        return ApplianceConfig(node: node, maps: maps, interlock: interlock, twin: twin, audit: audit, http: http,
                               sourceFile: ctx.file,
                               keyLocations: Dictionary(m.entries.map { ($0.key, ctx.location($0.value)) },
                                                        uniquingKeysWith: { a, _ in a }),
                               publish: publish ?? nil)
    }

    func hostPort(_ node: Node, _ path: String) -> HostPort? {
        guard let text = ctx.scalarText(node, path, expected: "host:port") else { return nil }
        guard let hp = HostPort(text) else {
            ctx.error(node, path, "invalid address \"\(text)\" (expected host:port, e.g. 0.0.0.0:502, 127.0.0.1:9102 or [::1]:502)")
            return nil
        }
        return hp
    }

    func parseInterlock(_ node: Node) -> ApplianceConfig.Interlock? {
        guard let im = MappingReader(ctx, node, "interlock",
                                     keys: ["listen", "unit", "allow", "max_clients", "stop_grace_ms", "idle_timeout_ms", "byte_timeout_ms"],
                                     what: "a mapping (listen, unit, allow, max_clients, stop_grace_ms, idle_timeout_ms, byte_timeout_ms)")
        else { return nil }
        var ok = true
        var r = ApplianceConfig.Interlock()
        if let n = im.take("listen") { if let v = hostPort(n, "interlock.listen") { r.listen = v } else { ok = false } }
        if let n = im.take("unit") {
            if let u = ctx.int(n, "interlock.unit", 0...255, expected: "a unit id 1…247") {
                if u < 1 || u > 247 {
                    ctx.error(n, "interlock.unit", "\(u) is out of range (expected a unit id 1…247; 0 and 255 are always answered)")
                    ok = false
                } else { r.unit = u }
            } else { ok = false }
        }
        if let n = im.take("allow") {
            if let items = ctx.list(n, "interlock.allow", of: "networks in CIDR notation") {
                var blocks: [CIDRBlock] = []
                for (i, item) in items.enumerated() {
                    let p = keyPath("interlock.allow", index: i)
                    guard let text = ctx.scalarText(item, p, expected: "a network like 10.0.0.0/24") else { ok = false; continue }
                    switch CIDRBlock.parse(text) {
                    case .success(let c): blocks.append(c)
                    case .failure(let e): ctx.error(item, p, e.message); ok = false
                    }
                }
                if items.isEmpty {
                    ctx.error(n, "interlock.allow", "is empty: no interlock PLC could connect (list the PLCs' networks, e.g. [10.0.0.0/24])")
                    ok = false
                }
                r.allow = blocks
            } else { ok = false }
        }
        func ms(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = im.take(key) else { return nil }
            let v = ctx.int(n, keyPath("interlock", key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        if let v = ms("max_clients", 1...512, "1…512 connections (descriptors stay below 1024)") { r.maxClients = v }
        if let v = ms("stop_grace_ms", 0...60_000, "milliseconds 0…60000") { r.stopGraceMs = v }
        if let v = ms("idle_timeout_ms", 0...86_400_000, "milliseconds 0…86400000 (0 = never)") { r.idleTimeoutMs = v }
        if let v = ms("byte_timeout_ms", 10...60_000, "milliseconds 10…60000") { r.byteTimeoutMs = v }
        return ok ? r : nil
    }

    func parseTwin(_ node: Node) -> ApplianceConfig.Twin? {
        guard let tm = MappingReader(ctx, node, "twin", keys: ["feeds"], what: "a mapping with feeds") else { return nil }
        guard let fn = tm.require("feeds", "a list of twin feed sources: file, tcp, unix or mqtt"),
              let items = ctx.list(fn, "twin.feeds", of: "feed sources ({file: …}, {tcp: …}, {unix: …} or {mqtt: …})") else { return nil }
        if items.isEmpty {
            ctx.error(fn, "twin.feeds", "needs at least one feed: without a twin, nothing is ever permitted")
            return nil
        }
        var feeds: [ApplianceConfig.Feed] = []
        var ok = true
        for (i, item) in items.enumerated() {
            let p = keyPath("twin.feeds", index: i)
            guard let fm = MappingReader(ctx, item, p, keys: ["file", "tcp", "unix", "mqtt", "opcua", "from_start"] + Self.socketFeedKeys,
                                         what: "a feed source mapping: {file: PATH}, {tcp: HOST:PORT}, {unix: PATH}, {mqtt: {broker: HOST:PORT, topics: […]}} or {opcua: {endpoint: opc.tcp://HOST:4840}}")
            else { ok = false; continue }
            let kinds = ["file", "tcp", "unix", "mqtt", "opcua"].filter { fm.has($0) }
            guard kinds.count == 1 else {
                ctx.error(item, p, kinds.isEmpty ? "needs one of file, tcp, unix, mqtt, opcua"
                                                 : "has \(kinds.joined(separator: " and ")): one source per entry")
                ok = false
                continue
            }
            let fromStart = fm.take("from_start").flatMap { ctx.bool($0, keyPath(p, "from_start")) }
            if fm.has("from_start"), kinds[0] != "file" {
                ctx.error(fm.keyNode("from_start"), keyPath(p, "from_start"), "applies only to file feeds")
                ok = false
            }
            if kinds[0] == "file" || kinds[0] == "mqtt" || kinds[0] == "opcua" {
                for k in Self.socketFeedKeys where fm.has(k) {
                    ctx.error(fm.keyNode(k), keyPath(p, k), "applies only to tcp and unix feeds")
                    ok = false
                }
            }
            switch kinds[0] {
            case "mqtt":
                if let m = parseMQTTFeed(fm.take("mqtt")!, p) { feeds.append(.mqtt(m)) } else { ok = false }
            case "opcua":
                if feeds.contains(where: { if case .opcua = $0 { true } else { false } }) {
                    ctx.error(fm.take("opcua"), keyPath(p, "opcua"), "a second opcua feed: one OPC UA server is the twin of every map bound with twin: {opcua: …}")
                    ok = false
                } else if let o = parseOPCUAFeed(fm.take("opcua")!, p) { feeds.append(.opcua(o)) } else { ok = false }
            case "file":
                if let s = ctx.string(fm.take("file")!, keyPath(p, "file"), expected: "a file path") {
                    feeds.append(.file(path: ApplianceConfig.resolve(s, against: baseDir), fromStart: fromStart ?? false))
                } else { ok = false }
            case "tcp":
                let access = parseSocketFeedAccess(fm, p, tcp: true)
                if let hp = hostPort(fm.take("tcp")!, keyPath(p, "tcp")), let access {
                    feeds.append(.tcp(listen: hp, access: access))
                } else { ok = false }
            default:
                let access = parseSocketFeedAccess(fm, p, tcp: false)
                if let s = ctx.string(fm.take("unix")!, keyPath(p, "unix"), expected: "a socket path") {
                    let resolved = ApplianceConfig.resolve(s, against: baseDir)
                    if resolved.utf8.count > 107 {
                        ctx.error(fm.take("unix"), keyPath(p, "unix"), "socket path is \(resolved.utf8.count) bytes; unix socket paths are limited to 107")
                        ok = false
                    } else if let access {
                        feeds.append(.unix(path: resolved, access: access))
                    } else { ok = false }
                } else { ok = false }
            }
        }
        return ok ? ApplianceConfig.Twin(feeds: feeds) : nil
    }

    /// The keys of a tcp or unix feed entry beside its address (docs/config.md `twin.feeds`).
    static let socketFeedKeys = ["allow", "max_clients", "max_clients_per_address", "idle_timeout_ms", "line_timeout_ms", "tls"]
    /// Of those, the ones that only make sense on TCP.
    static let tcpOnlyFeedKeys: Set<String> = ["allow", "max_clients_per_address", "tls"]

    /// The access settings of a tcp (or unix) feed entry `fm` at key path `p`; nil after an error.
    func parseSocketFeedAccess(_ fm: MappingReader, _ p: String, tcp: Bool) -> ApplianceConfig.SocketFeedAccess? {
        var ok = true
        var r = ApplianceConfig.SocketFeedAccess()
        if !tcp {
            for k in Self.socketFeedKeys where Self.tcpOnlyFeedKeys.contains(k) && fm.has(k) {
                ctx.error(fm.keyNode(k), keyPath(p, k), "applies only to tcp feeds")
                ok = false
            }
            if !ok { return nil }
        }
        if let n = fm.take("allow") {
            let path = keyPath(p, "allow")
            if let items = ctx.list(n, path, of: "networks in CIDR notation") {
                var blocks: [CIDRBlock] = []
                for (i, item) in items.enumerated() {
                    let ip = keyPath(path, index: i)
                    guard let text = ctx.scalarText(item, ip, expected: "a network like 10.0.0.0/24") else { ok = false; continue }
                    switch CIDRBlock.parse(text) {
                    case .success(let c): blocks.append(c)
                    case .failure(let e): ctx.error(item, ip, e.message); ok = false
                    }
                }
                if items.isEmpty {
                    ctx.error(n, path, "is empty: the twin could never connect (list the twin's networks, e.g. [10.0.0.0/24])")
                    ok = false
                }
                r.allow = blocks
            } else { ok = false }
        }
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = fm.take(key) else { return nil }
            let v = ctx.int(n, keyPath(p, key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        if let v = int("max_clients", 1...512, "1…512 connections (descriptors stay below 1024)") { r.maxClients = v }
        if let v = int("max_clients_per_address", 1...512, "1…512 connections") { r.maxClientsPerAddress = v }
        if let v = int("idle_timeout_ms", 0...86_400_000, "milliseconds 0…86400000 (0 = never)") { r.idleTimeoutMs = v }
        if let v = int("line_timeout_ms", 10...60_000, "milliseconds 10…60000") { r.lineTimeoutMs = v }
        if let n = fm.take("tls") {
            let path = keyPath(p, "tls")
            if let tm = MappingReader(ctx, n, path, keys: ["cert", "key", "client_ca"],
                                      what: "a mapping (cert, key, client_ca: PEM files)") {
                func file(_ key: String, _ why: String) -> ApplianceConfig.ConfiguredPath? {
                    guard let v = tm.require(key, why),
                          let s = ctx.string(v, keyPath(path, key), expected: "a PEM file path") else { return nil }
                    return ApplianceConfig.ConfiguredPath(path: ApplianceConfig.resolve(s, against: baseDir),
                                                          keyPath: keyPath(path, key), location: ctx.location(v))
                }
                let cert = file("cert", "the listener's certificate, PEM")
                let key = file("key", "the listener's private key, PEM")
                let ca = file("client_ca", "the CA that signs the twin's client certificate, PEM: without it any client would do")
                if let cert, let key, let ca { r.tls = ApplianceConfig.FeedTLS(cert: cert, key: key, clientCA: ca) } else { ok = false }
            } else { ok = false }
        }
        return ok ? r : nil
    }

    func parseAudit(_ node: Node) -> ApplianceConfig.Audit? {
        guard let am = MappingReader(ctx, node, "audit", keys: ["dir", "key", "checkpoint_s", "segment_bytes", "retain"],
                                     what: "a mapping (dir, key, checkpoint_s, segment_bytes, retain)") else { return nil }
        var ok = true
        var r = ApplianceConfig.Audit()
        if let n = am.take("dir") {
            if let s = ctx.string(n, "audit.dir", expected: "a directory path") { r.dir = ApplianceConfig.resolve(s, against: baseDir) } else { ok = false }
        }
        if let n = am.take("key") {
            if let s = ctx.string(n, "audit.key", expected: "a key file path") { r.key = ApplianceConfig.resolve(s, against: baseDir) } else { ok = false }
        }
        if let n = am.take("checkpoint_s") {
            if let v = ctx.int(n, "audit.checkpoint_s", 1...86_400, expected: "seconds 1…86400") { r.checkpointS = v } else { ok = false }
        }
        if let n = am.take("segment_bytes") {
            if let v = ctx.int(n, "audit.segment_bytes", 65_536...(1 << 40), expected: "bytes 65536…1099511627776") { r.segmentBytes = v } else { ok = false }
        }
        if let n = am.take("retain") {
            if let rm = MappingReader(ctx, n, "audit.retain", keys: ["max_bytes", "max_age_days"],
                                      what: "a mapping (max_bytes, max_age_days)") {
                if let b = rm.take("max_bytes") {
                    if let v = ctx.int(b, "audit.retain.max_bytes", 1_048_576...(1 << 50), expected: "bytes 1048576…1125899906842624") { r.retainMaxBytes = v } else { ok = false }
                }
                if let d = rm.take("max_age_days") {
                    if let v = ctx.int(d, "audit.retain.max_age_days", 1...36_500, expected: "days 1…36500") { r.retainMaxAgeDays = v } else { ok = false }
                }
            } else { ok = false }
        }
        return ok ? r : nil
    }

    func parseHTTP(_ node: Node) -> ApplianceConfig.HTTP? {
        let keys = ["listen", "request_timeout_ms", "max_connections_per_client", "reset_token_file", "resets_per_s"]
        guard let hm = MappingReader(ctx, node, "http", keys: keys, what: "a mapping (\(keys.joined(separator: ", ")))")
        else { return nil }
        var ok = true
        var r = ApplianceConfig.HTTP()
        let listenNode = hm.take("listen")
        if let n = listenNode { if let hp = hostPort(n, "http.listen") { r.listen = hp } else { ok = false } }
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = hm.take(key) else { return nil }
            let v = ctx.int(n, keyPath("http", key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        if let v = int("request_timeout_ms", 100...60_000, "milliseconds 100…60000") { r.requestTimeoutMs = v }
        if let v = int("max_connections_per_client", 1...32, "1…32 connections (32 in all)") { r.maxConnectionsPerClient = v }
        if let v = int("resets_per_s", 1...1000, "resets per second 1…1000") { r.resetsPerSecond = v }
        if let n = hm.take("reset_token_file") {
            if let s = ctx.string(n, "http.reset_token_file", expected: "a token file path") {
                r.resetTokenFile = ApplianceConfig.resolve(s, against: baseDir)
                r.resetTokenFileLocation = ctx.location(n)
            } else { ok = false }
        }
        // Anyone who can reach a non-loopback listener could clear latches: refuse to start
        // rather than serve an unauthenticated reset to the network.
        if ok, r.resetTokenFile == nil, !ApplianceConfig.HTTP.isLoopback(host: r.listen.host) {
            ctx.error(listenNode ?? node, "http.listen",
                      "\(r.listen) is not a loopback address and http.reset_token_file is not set: anyone who can reach it "
                      + "could clear latches; set http.reset_token_file (docs/operations.md#resets) or listen on 127.0.0.1")
            ok = false
        }
        return ok ? r : nil
    }
}
