import Yams

/// One problem found in a map or config file: `file:line:col: key.path: what (expected)`.
public struct MapIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    /// The key path, e.g. `registers[1].type`.
    public var keyPath: String
    public var message: String

    public init(location: SourceLocation, keyPath: String, message: String) {
        self.location = location
        self.keyPath = keyPath
        self.message = message
    }

    /// One line: control characters from the file (a quoted "a\nb") are escaped, so every issue
    /// stays exactly one line of `maps validate` output.
    public var description: String {
        let text = keyPath.isEmpty ? "\(location): \(message)" : "\(location): \(keyPath): \(message)"
        return text.escapingControlCharacters()
    }
}

/// Every problem found in one or more files; a load reports all of them, not just the first.
public struct MapErrors: Error, Sendable, Hashable, CustomStringConvertible {
    public var issues: [MapIssue]
    public init(_ issues: [MapIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Parses register maps (docs/register-maps.md) from YAML text. Pure: the caller reads the files.
public enum MapLoader {
    /// The keys a map file may have at its top level.
    public static let topLevelKeys = [
        "device", "description", "profile", "plc", "limits", "identity", "status", "registers",
        "clock", "twin_key", "intents", "allow_predicted", "twin",
    ]

    /// Parses one map. `file` is the path used in error messages and `sourceFile`.
    ///
    /// Every problem of the file is reported (not just the first), each as
    /// `file:line:col: key.path: message`; nothing is returned unless the whole map is valid.
    public static func parse(yaml: String, file: String) throws(MapErrors) -> DeviceMap {
        let ctx = YAMLContext(file: file)
        var map: DeviceMap?
        if let root = ctx.compose(yaml, emptyMessage:
            "empty map file (expected a mapping with device, profile, plc, status, registers, intents)")
        {
            map = MapParser(ctx: ctx).parse(root)
        }
        guard ctx.issues.isEmpty, var map else {
            var issues = ctx.sortedIssues
            if issues.isEmpty {
                issues = [MapIssue(location: SourceLocation(file: file, line: 1, column: 1), keyPath: "",
                                   message: "map could not be read")]
            }
            throw MapErrors(issues)
        }
        map.sourceFile = file
        return map
    }

    /// Checks a set of parsed maps against each other: unique device names, no coil claimed twice
    /// (the interlock serves all permit coils in one address space).
    public static func crossCheck(_ maps: [DeviceMap]) throws(MapErrors) {
        var issues: [MapIssue] = []
        var devices: [String: DeviceMap] = [:]
        var coils: [UInt16: (map: DeviceMap, intent: IntentSpec)] = [:]
        func loc(_ map: DeviceMap, _ l: SourceLocation?) -> SourceLocation {
            l ?? SourceLocation(file: map.sourceFile.isEmpty ? map.device : map.sourceFile, line: 1, column: 1)
        }
        for map in maps {
            if let first = devices[map.device] {
                issues.append(MapIssue(
                    location: loc(map, map.keyLocations["device"]), keyPath: "device",
                    message: "device \"\(map.device)\" is also defined at \(loc(first, first.keyLocations["device"])) (device names must be unique)"))
                continue
            }
            devices[map.device] = map
            for intent in map.intents {
                if let (other, otherIntent) = coils[intent.coil] {
                    issues.append(MapIssue(
                        location: loc(map, intent.location), keyPath: "intents.\(intent.name)",
                        message: "coil \(intent.coil) is already claimed by \(other.device).\(otherIntent.name) at \(loc(other, otherIntent.location)) (coils are one address space on the interlock)"))
                } else {
                    coils[intent.coil] = (map, intent)
                }
            }
        }
        issues += linkIssues(maps)
        if issues.isEmpty { issues += LinkBudget(maps: maps).issues }
        if !issues.isEmpty { throw MapErrors(issues) }
    }

    /// Maps that share a link must agree on how to talk on it: the same serial line settings,
    /// the same framing on one TCP endpoint.
    static func linkIssues(_ maps: [DeviceMap]) -> [MapIssue] {
        var issues: [MapIssue] = []
        var first: [String: DeviceMap] = [:]
        for m in maps {
            let k = m.plc.linkKey
            guard let f = first[k] else { first[k] = m; continue }
            let loc = m.keyLocations["plc"] ?? SourceLocation(file: m.sourceFile, line: 1, column: 1)
            let floc = f.keyLocations["plc"] ?? SourceLocation(file: f.sourceFile, line: 1, column: 1)
            if let a = f.plc.serial, let b = m.plc.serial, a.lineSettings != b.lineSettings {
                issues.append(MapIssue(location: loc, keyPath: "plc",
                                       message: "\(b.device) is set to \(b.lineSettings) here but to \(a.lineSettings) by \(f.device) at \(floc) (devices on one serial port share its settings)"))
            } else if m.plc.serial == nil, f.plc.framing != m.plc.framing {
                issues.append(MapIssue(location: loc, keyPath: "plc.framing",
                                       message: "\(m.plc.linkName) is framed \(m.plc.framing.rawValue) here but \(f.plc.framing.rawValue) by \(f.device) at \(floc) (one TCP endpoint is one link with one framing)"))
            }
        }
        return issues
    }
}

/// The parser for one map file; all state lives in its `YAMLContext`.
struct MapParser {
    let ctx: YAMLContext

    enum EntryKind {
        case register, identity, status, clock

        var keys: [String] {
            switch self {
            case .register:
                return ["name", "address", "table", "type", "order", "bit", "byte", "length", "scale", "offset", "unit", "tolerance"]
            case .identity:
                return ["name", "address", "table", "type", "order", "bit", "byte", "length", "expect"]
            case .status:
                return ["address", "table", "type", "order", "bit", "byte", "values"]
            case .clock:
                return ["address", "table", "type", "order", "unit"]
            }
        }

        var what: String {
            switch self {
            case .register: return "a register mapping (name, address, type …)"
            case .identity: return "an identity mapping (name, address, type, expect)"
            case .status: return "a status mapping (address, type, values)"
            case .clock: return "a clock mapping (address, type, unit)"
            }
        }
    }

    /// A register-like entry that made it through parsing, with where it was written.
    struct Placed {
        var spec: RegisterSpec
        var path: String
        var addressNode: Node
        var label: String
    }

    func parse(_ root: Node) -> DeviceMap? {
        guard let m = MappingReader(ctx, root, "", keys: MapLoader.topLevelKeys,
                                    what: "a mapping (a register map: device, profile, plc, …)") else { return nil }
        let device = m.require("device", "the device name").flatMap { ctx.name($0, "device", what: "device name") }
        let description = m.take("description").flatMap { ctx.string($0, "description") }
        let profileID = m.require("profile", "one of: \(ProfileID.allCases.map(\.rawValue).joined(separator: ", "))")
            .flatMap { ctx.choice(ProfileID.self, $0, "profile", what: "profile") }
        let profile = profileID.map(IndustryProfile.named)

        // Limits first: poll defaults derive from max_age_ms, rearm_ms from poll_ms.
        var limitsOK = true
        var maxDrift: Double?, maxAge: Double?, maxSkew: Double?, rearm: Double?
        if let ln = m.take("limits") {
            if let lm = MappingReader(ctx, ln, "limits", keys: ["max_drift_ms", "max_age_ms", "max_skew_ms", "rearm_ms"],
                                      what: "a mapping (max_drift_ms, max_age_ms, max_skew_ms, rearm_ms)") {
                func ms(_ key: String, positive: Bool) -> Double? {
                    guard let n = lm.take(key) else { return nil }
                    let v = ctx.number(n, keyPath("limits", key), min: 0, exclusive: positive, max: 3_600_000,
                                       expected: positive ? "milliseconds > 0 and ≤ 3600000" : "milliseconds 0…3600000")
                    if v == nil { limitsOK = false }
                    return v
                }
                maxDrift = ms("max_drift_ms", positive: true)
                maxAge = ms("max_age_ms", positive: true)
                maxSkew = ms("max_skew_ms", positive: false)
                rearm = ms("rearm_ms", positive: false)
            } else {
                limitsOK = false
            }
        }
        let resolvedDrift = maxDrift ?? profile.map { Double($0.maxDriftMs) }
        let resolvedAge = maxAge ?? resolvedDrift

        let plc = m.require("plc", "how to reach the PLC: {host: …, port: 502, unit: 1}")
            .flatMap { parsePLC($0, maxAgeMs: limitsOK ? resolvedAge : nil) }

        let identity = parseIdentity(m.take("identity"))
        // Without `status:` the status is derived from the poll (operational while every
        // reading is good); a `status:` that fails to parse is an error, not a derived status.
        let statusNode = m.take("status")
        let statusResult = statusNode.flatMap { parseStatus($0) }

        var registers: [Placed] = []
        var declaredRegisterNames: Set<String> = []
        if let rn = m.take("registers"), !isNull(rn), let items = ctx.list(rn, "registers", of: "register mappings") {
            for (i, item) in items.enumerated() {
                let path = keyPath("registers", index: i)
                guard let rm = MappingReader(ctx, item, path, keys: EntryKind.register.keys, what: EntryKind.register.what)
                else { continue }
                if let nn = rm.take("name"), case .scalar(let s) = nn { declaredRegisterNames.insert(s.string) }
                if let placed = parseEntry(rm, kind: .register) { registers.append(placed) }
            }
        }
        let clock = m.take("clock").flatMap { parseClock($0) }

        // Names are unique across registers and identity registers.
        var firstByName: [String: Placed] = [:]
        for p in identity.map(\.placed) + registers {
            if let first = firstByName[p.spec.name] {
                ctx.error(at: p.spec.location ?? ctx.location(p.addressNode), keyPath(p.path, "name"),
                          "duplicate name \"\(p.spec.name)\" (first defined at \(first.spec.location ?? ctx.location(first.addressNode)))")
            } else {
                firstByName[p.spec.name] = p
            }
        }
        var everything = identity.map(\.placed) + registers
        if let s = statusResult { everything.append(s.placed) }
        if let c = clock { everything.append(c.placed) }
        checkOverlaps(everything)

        let twinKey = m.take("twin_key").flatMap { ctx.string($0, "twin_key", expected: "a path to an Ed25519 public key") }
        // Without a status word the only status is the derived `operational`.
        let statusNames: Set<String>? = statusNode == nil ? ["operational"] : statusResult.map { Set($0.spec.values.values) }
        let twinBinding = m.take("twin").flatMap {
            parseTwinSource($0, registers: declaredRegisterNames, statusNames: statusNames)
        }
        var sparkplug: SparkplugBinding?, opcua: OPCUABinding?
        switch twinBinding {
        case .sparkplug(let b)?: sparkplug = b
        case .opcua(let b)?: opcua = b
        case nil: break
        }
        if sparkplug != nil, twinKey != nil, let n = m.take("twin") {
            ctx.error(n, "twin.sparkplug", "a Sparkplug twin cannot sign its states, and this map has twin_key: it could never permit (remove one of them)")
        }
        if opcua != nil, twinKey != nil, let n = m.take("twin") {
            ctx.error(n, "twin.opcua", "an OPC UA twin cannot sign its states, and this map has twin_key: it could never permit (remove one of them)")
        }
        let allowPredicted = m.take("allow_predicted").flatMap { ctx.bool($0, "allow_predicted") } ?? false

        let registerSpecs = Dictionary(registers.map { ($0.spec.name, $0.spec) }, uniquingKeysWith: { a, _ in a })
        let intents = m.require("intents", "what this device's permit coils allow, e.g. {move: {coil: 0}}")
            .flatMap { parseIntents($0, statusNames: statusNames, registers: registerSpecs, declared: declaredRegisterNames) }

        if let plc { checkRequestLimits(everything, plc: plc) }

        guard ctx.issues.isEmpty, let device, let profileID, let resolvedDrift, let resolvedAge,
              let plc, statusNode == nil || statusResult != nil, let intents else { return nil }
        let limits = Limits(maxDriftMs: resolvedDrift, maxAgeMs: resolvedAge, maxSkewMs: maxSkew ?? 1000,
                            rearmMs: rearm ?? Double(2 * plc.pollMs))
        return DeviceMap(
            device: device, profile: profileID, plc: plc, limits: limits,
            identity: identity.map(\.spec), status: statusResult?.spec, registers: registers.map(\.spec),
            twinKey: twinKey, intents: intents, allowPredicted: allowPredicted,
            sourceFile: ctx.file, clock: clock?.clock, description: description,
            keyLocations: Dictionary(m.entries.map { ($0.key, ctx.location($0.value)) },
                                     uniquingKeysWith: { a, _ in a }), sparkplug: sparkplug, opcua: opcua,
            warnings: ctx.sortedWarnings)
    }

    // MARK: plc

    static let plcKeys = ["host", "port", "framing", "serial", "baud", "parity", "data_bits", "stop_bits", "rs485",
                          "rts", "rts_delay_us", "unit", "poll_ms", "timeout_ms", "byte_timeout_ms", "max_gap",
                          "max_registers", "max_bits", "rtt_ms"]

    func parsePLC(_ node: Node, maxAgeMs: Double?) -> PLCEndpoint? {
        guard let pm = MappingReader(ctx, node, "plc", keys: Self.plcKeys,
                                     what: "a mapping (host, port, unit, … for TCP; serial, baud, parity, … for RTU)") else { return nil }
        var ok = true
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = pm.take(key) else { return nil }
            let v = ctx.int(n, keyPath("plc", key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        // TCP (host, port, framing) or serial (serial, baud, parity, …): exactly one of them.
        var host: String?
        var serial: SerialLine?
        let serialKeys = ["baud", "parity", "data_bits", "stop_bits", "rs485", "rts", "rts_delay_us"]
        let tcpKeys = ["port", "framing", "rtt_ms"]
        if let sn = pm.take("serial") {
            if pm.has("host") {
                ctx.error(pm.keyNode("host"), "plc.host", "give either host (Modbus/TCP) or serial (Modbus RTU), not both")
                ok = false
            }
            for k in tcpKeys where pm.has(k) {
                ctx.error(pm.keyNode(k), keyPath("plc", k), "\(k) applies to TCP links (host:), not to a serial port")
                ok = false
            }
            serial = parseSerial(sn, pm, ok: &ok)
        } else {
            host = pm.require("host", "the PLC's IP address or host name, or serial: for a Modbus RTU device").flatMap { parseHost($0, "plc.host") }
            if host == nil { ok = false }
            for k in serialKeys where pm.has(k) {
                ctx.error(pm.keyNode(k), keyPath("plc", k), "\(k) applies to a serial port (serial: /dev/…), not to a TCP link")
                ok = false
            }
        }
        let port = int("port", 1...65535, "a TCP port 1…65535") ?? 502
        var framing = PLCFraming.tcp
        if let fn = pm.take("framing") {
            if let f = ctx.choice(PLCFraming.self, fn, "plc.framing", what: "framing (tcp: Modbus/TCP, rtu: RTU frames over TCP)") {
                framing = f
            } else { ok = false }
        }
        var unit = 1
        if let un = pm.take("unit") {
            if serial != nil {
                if let u = ctx.int(un, "plc.unit", 1...247, expected: "a unit id 1…247 (on a serial line 0 is broadcast, which never answers)") {
                    unit = u
                } else { ok = false }
            } else if let u = ctx.int(un, "plc.unit", 0...255, expected: "a unit id 0…247 or 255") {
                if u > 247 && u != 255 {
                    ctx.error(un, "plc.unit", "\(u) is out of range (expected a unit id 0…247 or 255; 248…254 are reserved)")
                    ok = false
                } else {
                    unit = u
                }
            } else { ok = false }
        }
        let pollExplicit = int("poll_ms", 1...600_000, "milliseconds 1…600000")
        let timeoutExplicit = int("timeout_ms", 1...60_000, "milliseconds 1…60000")
        let byteTimeout = int("byte_timeout_ms", 1...60_000, "milliseconds 1…60000")
        let maxGap = int("max_gap", 0...124, "a number of registers 0…124") ?? 16
        let maxRegisters = int("max_registers", 1...125, "registers per request 1…125") ?? 125
        let maxBits = int("max_bits", 1...2000, "bits per request 1…2000") ?? 2000
        var rtt: Double?
        if let rn = pm.take("rtt_ms") {
            rtt = ctx.number(rn, "plc.rtt_ms", min: 0, exclusive: true, max: 60_000,
                             expected: "a measured round trip per request in milliseconds > 0 (tibet-twin read prints it)")
            if rtt == nil { ok = false }
        }
        // Defaults: poll four times per max_age_ms so one lost answer does not go stale;
        // a timeout of half of max_age_ms.
        let age = maxAgeMs ?? 200
        let pollMs = pollExplicit ?? Int(min(max(age / 4, 10), 1000).rounded())
        let timeoutMs = timeoutExplicit ?? Int(min(max(age / 2, 50), 1000).rounded())
        if let pollExplicit, let maxAgeMs, Double(pollExplicit) >= maxAgeMs, let pn = pm.take("poll_ms") {
            ctx.error(pn, "plc.poll_ms", "\(pollExplicit) is not below limits.max_age_ms (\(formatNumber(maxAgeMs))): the physical state would go stale between polls (expected at most \(formatNumber(maxAgeMs / 2)))")
            ok = false
        }
        guard ok, host != nil || serial != nil else { return nil }
        return PLCEndpoint(host: host ?? "", port: serial == nil ? port : 0, unit: unit, pollMs: pollMs, timeoutMs: timeoutMs,
                           maxGap: maxGap, maxRegisters: maxRegisters, maxBits: maxBits, serial: serial,
                           framing: serial == nil ? framing : .rtu, byteTimeoutMs: byteTimeout, rttMs: rtt)
    }

    /// The serial line of `plc:` (device path in `serial:`, line settings beside it).
    func parseSerial(_ sn: Node, _ pm: MappingReader, ok: inout Bool) -> SerialLine? {
        guard let device = ctx.string(sn, "plc.serial", expected: "a serial device path like /dev/ttyUSB0") else {
            ok = false
            return nil
        }
        guard device.hasPrefix("/"), !device.hasSuffix("/"), !device.contains("\0") else {
            ctx.error(sn, "plc.serial", "\"\(device)\" is not a device path (expected an absolute path like /dev/ttyUSB0 or /dev/serial/by-id/…)")
            ok = false
            return nil
        }
        var line = SerialLine(device: device)
        if let bn = pm.take("baud") {
            if let b = ctx.int(bn, "plc.baud", 300...4_000_000, expected: "a baud rate 300…4000000, e.g. 9600, 19200, 115200") {
                line.baud = b
            } else { ok = false }
        }
        if let pn = pm.take("parity") {
            let text = ctx.scalarText(pn, "plc.parity", expected: "N, E or O")
            switch text?.lowercased() {
            case "n", "none": line.parity = .none
            case "e", "even": line.parity = .even
            case "o", "odd": line.parity = .odd
            case nil: ok = false
            default:
                ctx.error(pn, "plc.parity", "unknown parity \"\(text!)\" (expected N, E or O: none, even, odd)")
                ok = false
            }
        }
        if let dn = pm.take("data_bits") {
            if let d = ctx.int(dn, "plc.data_bits", 7...8, expected: "7 or 8 (Modbus RTU uses 8)") { line.dataBits = d } else { ok = false }
        }
        if let sb = pm.take("stop_bits") {
            if let s = ctx.int(sb, "plc.stop_bits", 1...2, expected: "1 or 2") { line.stopBits = s } else { ok = false }
        }
        if let rn = pm.take("rs485") {
            if let r = ctx.bool(rn, "plc.rs485") { line.rs485 = r } else { ok = false }
        }
        if let rn = pm.take("rts") {
            if let r = ctx.choice(SerialLine.RTS.self, rn, "plc.rts", what: "RTS mode (up: high while sending, down: low while sending)") {
                line.rts = r
            } else { ok = false }
        }
        if let dn = pm.take("rts_delay_us") {
            if line.rts == nil && pm.take("rts") == nil {
                ctx.error(dn, "plc.rts_delay_us", "rts_delay_us needs rts: up or rts: down")
                ok = false
            } else if let d = ctx.int(dn, "plc.rts_delay_us", 0...1_000_000, expected: "microseconds 0…1000000") {
                line.rtsDelayUs = d
            } else { ok = false }
        }
        return line
    }

    /// A value wider than `max_registers` could never be read in one request.
    func checkRequestLimits(_ items: [Placed], plc: PLCEndpoint) {
        for p in items where !p.spec.table.isBitTable && p.spec.width > plc.maxRegisters {
            ctx.error(p.addressNode, keyPath(p.path, "address"),
                      "\(p.label) is \(p.spec.width) registers, more than plc.max_registers (\(plc.maxRegisters)) allows in one request")
        }
    }

    func parseHost(_ node: Node, _ path: String) -> String? {
        guard let h = ctx.string(node, path, expected: "an IP address or host name") else { return nil }
        guard isValidHost(h) else {
            ctx.error(node, path, "invalid host \"\(h)\" (expected an IPv4 address like 10.0.0.21, an IPv6 address or a host name)")
            return nil
        }
        return h
    }
}
