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
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        var out = ""
        for u in text.unicodeScalars {
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.properties.generalCategory == .control {
                    out += "\\u{" + String(u.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out
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
        "clock", "twin_key", "intents", "allow_predicted",
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
        if !issues.isEmpty { throw MapErrors(issues) }
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
                return ["name", "address", "table", "type", "order", "bit", "length", "scale", "offset", "unit", "tolerance"]
            case .identity:
                return ["name", "address", "table", "type", "order", "bit", "length", "expect"]
            case .status:
                return ["address", "table", "type", "order", "bit", "values"]
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
        let statusResult = m.require("status", "the device status register: {address: …, values: {0: operational, …}}")
            .flatMap { parseStatus($0) }

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
        let allowPredicted = m.take("allow_predicted").flatMap { ctx.bool($0, "allow_predicted") } ?? false

        let statusNames = statusResult.map { Set($0.spec.values.values) }
        let registerSpecs = Dictionary(registers.map { ($0.spec.name, $0.spec) }, uniquingKeysWith: { a, _ in a })
        let intents = m.require("intents", "what this device's permit coils allow, e.g. {move: {coil: 0}}")
            .flatMap { parseIntents($0, statusNames: statusNames, registers: registerSpecs, declared: declaredRegisterNames) }

        guard ctx.issues.isEmpty, let device, let profileID, let resolvedDrift, let resolvedAge,
              let plc, let statusResult, let intents else { return nil }
        let limits = Limits(maxDriftMs: resolvedDrift, maxAgeMs: resolvedAge, maxSkewMs: maxSkew ?? 1000,
                            rearmMs: rearm ?? Double(2 * plc.pollMs))
        return DeviceMap(
            device: device, profile: profileID, plc: plc, limits: limits,
            identity: identity.map(\.spec), status: statusResult.spec, registers: registers.map(\.spec),
            twinKey: twinKey, intents: intents, allowPredicted: allowPredicted,
            sourceFile: ctx.file, clock: clock?.clock, description: description,
            keyLocations: Dictionary(m.entries.map { ($0.key, ctx.location($0.value)) },
                                     uniquingKeysWith: { a, _ in a }))
    }

    // MARK: plc

    func parsePLC(_ node: Node, maxAgeMs: Double?) -> PLCEndpoint? {
        guard let pm = MappingReader(ctx, node, "plc", keys: ["host", "port", "unit", "poll_ms", "timeout_ms", "max_gap"],
                                     what: "a mapping (host, port, unit, poll_ms, timeout_ms, max_gap)") else { return nil }
        var ok = true
        let host = pm.require("host", "the PLC's IP address or host name").flatMap { parseHost($0, "plc.host") }
        if host == nil { ok = false }
        func int(_ key: String, _ range: ClosedRange<Int>, _ expected: String) -> Int? {
            guard let n = pm.take(key) else { return nil }
            let v = ctx.int(n, keyPath("plc", key), range, expected: expected)
            if v == nil { ok = false }
            return v
        }
        let port = int("port", 1...65535, "a TCP port 1…65535") ?? 502
        var unit = 1
        if let un = pm.take("unit") {
            if let u = ctx.int(un, "plc.unit", 0...255, expected: "a unit id 0…247 or 255") {
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
        let maxGap = int("max_gap", 0...124, "a number of registers 0…124") ?? 16
        // Defaults: poll four times per max_age_ms so one lost answer does not go stale;
        // a timeout of half of max_age_ms.
        let age = maxAgeMs ?? 200
        let pollMs = pollExplicit ?? Int(min(max(age / 4, 10), 1000).rounded())
        let timeoutMs = timeoutExplicit ?? Int(min(max(age / 2, 50), 1000).rounded())
        if let pollExplicit, let maxAgeMs, Double(pollExplicit) >= maxAgeMs, let pn = pm.take("poll_ms") {
            ctx.error(pn, "plc.poll_ms", "\(pollExplicit) is not below limits.max_age_ms (\(formatNumber(maxAgeMs))): the physical state would go stale between polls (expected at most \(formatNumber(maxAgeMs / 2)))")
            ok = false
        }
        guard ok, let host else { return nil }
        return PLCEndpoint(host: host, port: port, unit: unit, pollMs: pollMs, timeoutMs: timeoutMs, maxGap: maxGap)
    }

    func parseHost(_ node: Node, _ path: String) -> String? {
        guard let h = ctx.string(node, path, expected: "an IP address or host name") else { return nil }
        guard isValidHost(h) else {
            ctx.error(node, path, "invalid host \"\(h)\" (expected an IPv4 address like 10.0.0.21, an IPv6 address or a host name)")
            return nil
        }
        return h
    }

    // MARK: register entries

    /// Parses the fields shared by registers, identity, status and clock entries.
    func parseEntry(_ m: MappingReader, kind: EntryKind) -> Placed? {
        let p = m.path
        var ok = true
        var name: String
        switch kind {
        case .status: name = "status"
        case .clock: name = "clock"
        case .register, .identity:
            name = ""
            if let n = m.require("name", "the value's name").flatMap({ ctx.name($0, keyPath(p, "name"), what: "name") }) {
                name = n
            } else { ok = false }
        }
        // Without an address the entry is still checked, so every problem shows in one run.
        let addressNode = m.require("address", "a 0-based address, or a quoted Modicon address like \"40101\"")
        let parsedAddress = addressNode.flatMap { parseAddress($0, keyPath(p, "address")) }
        if parsedAddress == nil { ok = false }
        var explicitTable: RegisterTable?
        if let tn = m.take("table") {
            explicitTable = ctx.choice(RegisterTable.self, tn, keyPath(p, "table"), what: "table")
            if explicitTable == nil { ok = false }
        }
        if let mt = parsedAddress?.modicon, let et = explicitTable, mt != et, let addressNode {
            ctx.error(addressNode, keyPath(p, "address"),
                      "Modicon address \(describe(addressNode)) is in the \(mt.rawValue) table, but table is \(et.rawValue) (drop table or fix the address)")
            ok = false
        }
        let table = explicitTable ?? parsedAddress?.modicon ?? .holding

        var declaredType: ValueType?
        let typeNode = m.take("type")
        if let typeNode {
            declaredType = ctx.choice(ValueType.self, typeNode, keyPath(p, "type"), what: "type")
            if declaredType == nil { ok = false }
        }
        let bitNode = m.known.contains("bit") ? m.take("bit") : nil
        var bit: Int?
        if let bitNode {
            bit = ctx.int(bitNode, keyPath(p, "bit"), 0...15, expected: "a bit number 0…15, 0 = least significant")
            if bit == nil { ok = false }
        }
        if table.isBitTable {
            if let t = declaredType, t != .bool, let typeNode {
                ctx.error(typeNode, keyPath(p, "type"),
                          "type \(t.rawValue) does not fit the \(table.rawValue) table: coils and discrete inputs hold single bits (use bool or leave type out)")
                ok = false
            }
            if let bitNode {
                ctx.error(bitNode, keyPath(p, "bit"),
                          "bit applies to 16-bit registers (holding or input), not to the \(table.rawValue) table")
                ok = false
            }
        } else if let bitNode, let t = declaredType, ![.bool, .int16, .uint16].contains(t) {
            ctx.error(bitNode, keyPath(p, "bit"),
                      "bit needs a 16-bit register, but type is \(t.rawValue) (use uint16, int16, bool or leave type out)")
            ok = false
        }
        let type: ValueType = table.isBitTable || bitNode != nil ? .bool : (declaredType ?? .uint16)

        // Which types each kind accepts.
        switch kind {
        case .status where type == .string || type == .float32 || type == .float64:
            ctx.error(typeNode, keyPath(p, "type"), "the status register needs an integer type or bool, not \(type.rawValue)")
            ok = false
        case .clock where table.isBitTable:
            ctx.error(addressNode ?? m.node, keyPath(p, "address"), "the clock needs a holding or input register, not the \(table.rawValue) table")
            ok = false
        case .clock where !([.int32, .uint32, .int64, .uint64, .float64] as [ValueType]).contains(type):
            ctx.error(typeNode ?? m.node, keyPath(p, "type"),
                      typeNode == nil ? "missing required key \"type\" (the clock needs one of: int32, uint32, int64, uint64, float64)"
                                      : "the clock needs one of: int32, uint32, int64, uint64, float64 (not \(type.rawValue))")
            ok = false
        default: break
        }

        var length = 0
        if m.known.contains("length"), let ln = m.take("length") {
            if type != .string {
                ctx.error(ln, keyPath(p, "length"), "length applies only to type string (type is \(type.rawValue))")
                ok = false
            } else if let l = ctx.int(ln, keyPath(p, "length"), 1...125, expected: "a number of registers 1…125") {
                length = l
            } else { ok = false }
        } else if type == .string {
            ctx.error(typeNode ?? m.node, p, "type string needs a length (number of registers to read, 1…125)")
            ok = false
        }

        var order = WordOrder.ABCD
        if let on = m.take("order") {
            if let o = ctx.choice(WordOrder.self, on, keyPath(p, "order"), what: "word order") {
                if type == .bool {
                    ctx.error(on, keyPath(p, "order"), "order does not apply to single bits and bool values")
                    ok = false
                } else {
                    order = o
                }
            } else { ok = false }
        }

        var scale = 1.0, offset = 0.0, unit: String?, tolerance: Double?
        if kind == .register {
            let numeric = type != .bool && type != .string
            if let sn = m.take("scale") {
                if !numeric {
                    ctx.error(sn, keyPath(p, "scale"), "scale applies only to numeric types (type is \(type.rawValue))")
                    ok = false
                } else if let s = ctx.number(sn, keyPath(p, "scale")) {
                    if s == 0 {
                        ctx.error(sn, keyPath(p, "scale"), "scale must not be 0 (every reading would be the offset)")
                        ok = false
                    } else { scale = s }
                } else { ok = false }
            }
            if let on = m.take("offset") {
                if !numeric {
                    ctx.error(on, keyPath(p, "offset"), "offset applies only to numeric types (type is \(type.rawValue))")
                    ok = false
                } else if let o = ctx.number(on, keyPath(p, "offset")) {
                    offset = o
                } else { ok = false }
            }
            if let un = m.take("unit") {
                unit = ctx.string(un, keyPath(p, "unit"), expected: "a unit text, e.g. m, kg, °C")
                if unit == nil { ok = false }
            }
            if let tn = m.take("tolerance") {
                if type == .string {
                    ctx.error(tn, keyPath(p, "tolerance"), "tolerance needs a numeric value; type string cannot be compared with a tolerance")
                    ok = false
                } else if let t = ctx.number(tn, keyPath(p, "tolerance"), min: 0, max: .greatestFiniteMagnitude,
                                             expected: "a number ≥ 0") {
                    tolerance = t
                } else { ok = false }
            }
        }

        guard let addressNode, let (address, _) = parsedAddress else { return nil }
        let spec = RegisterSpec(name: name, table: table, address: UInt16(address), type: type, order: order,
                                bit: bit, length: length, scale: scale, offset: offset, unit: unit,
                                tolerance: tolerance, location: ctx.location(m.node))
        if spec.lastAddress > 65535 {
            ctx.error(addressNode, keyPath(p, "address"),
                      "\(spec.width) registers from \(address) reach \(spec.lastAddress), beyond the last address 65535")
            ok = false
        }
        guard ok else { return nil }
        let label: String
        switch kind {
        case .status: label = "the status register"
        case .clock: label = "the clock register"
        case .register, .identity: label = "\"\(name)\""
        }
        return Placed(spec: spec, path: p, addressNode: addressNode, label: label)
    }

    /// A 0-based address (plain integer) or a quoted 5/6-digit Modicon address, which also names the table.
    func parseAddress(_ node: Node, _ path: String) -> (address: Int, modicon: RegisterTable?)? {
        let expected = "a 0-based address 0…65535, or a quoted 5- or 6-digit Modicon address like \"40101\""
        guard case .scalar(let s) = node, !isNull(node) else {
            ctx.error(node, path, "expected \(expected), got \(describe(node))")
            return nil
        }
        let text = s.string
        if !isQuoted(s) {
            if text.count > 1, text.first == "0", text.allSatisfy(\.isNumber) {
                ctx.error(node, path, "\(text) has a leading zero: quote a Modicon address (\"\(text)\") or write the 0-based address without leading zeros")
                return nil
            }
            guard let v = ctx.int(node, path, 0...65535, expected: expected) else { return nil }
            return (v, nil)
        }
        guard (text.count == 5 || text.count == 6), text.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            ctx.error(node, path, "\(describe(node)) is not an address (expected \(expected); write 0-based addresses unquoted)")
            return nil
        }
        let table: RegisterTable
        switch text.first! {
        case "0": table = .coil
        case "1": table = .discrete
        case "3": table = .input
        case "4": table = .holding
        default:
            ctx.error(node, path, "Modicon address \(describe(node)) must start with 0 (coil), 1 (discrete input), 3 (input register) or 4 (holding register)")
            return nil
        }
        let n = Int(text.dropFirst())!
        let maxN = text.count == 5 ? 9999 : 65536
        guard n >= 1, n <= maxN else {
            ctx.error(node, path, "Modicon address \(describe(node)) is out of range (\(text.first!)\(String(repeating: "0", count: text.count - 2))1…\(text.first!)\(maxN), 1-based)")
            return nil
        }
        return (n - 1, table)
    }

    /// Entries of one table that share an address are errors, except bit entries of different bits.
    func checkOverlaps(_ items: [Placed]) {
        for (j, b) in items.enumerated() {
            for a in items[..<j] where a.spec.table == b.spec.table && a.label != b.label {
                guard Int(a.spec.address) <= b.spec.lastAddress, Int(b.spec.address) <= a.spec.lastAddress else { continue }
                if let ba = a.spec.bit, let bb = b.spec.bit, ba != bb { continue }
                // Report at whichever is written later in the file.
                let (first, second) = ctx.location(a.addressNode).line <= ctx.location(b.addressNode).line ? (a, b) : (b, a)
                ctx.error(second.addressNode, keyPath(second.path, "address"),
                          "\(span(second.spec)) overlaps \(first.label) (\(span(first.spec))) at \(ctx.location(first.addressNode))")
                break
            }
        }
    }

    func span(_ s: RegisterSpec) -> String {
        var t = "\(s.table.rawValue) \(s.address)"
        if s.width > 1 { t += "…\(s.lastAddress)" }
        if let b = s.bit { t += " bit \(b)" }
        return t
    }

    // MARK: identity, status, clock

    func parseIdentity(_ node: Node?) -> [(spec: IdentitySpec, placed: Placed)] {
        guard let node, !isNull(node), let items = ctx.list(node, "identity", of: "identity register mappings") else { return [] }
        var out: [(IdentitySpec, Placed)] = []
        for (i, item) in items.enumerated() {
            let path = keyPath("identity", index: i)
            guard let im = MappingReader(ctx, item, path, keys: EntryKind.identity.keys, what: EntryKind.identity.what)
            else { continue }
            let placed = parseEntry(im, kind: .identity)
            let expectNode = im.require("expect", "the value this register must read back")
            guard let placed, let expectNode,
                  let expect = parseExpect(expectNode, keyPath(path, "expect"), spec: placed.spec) else { continue }
            out.append((IdentitySpec(register: placed.spec, expect: expect), placed))
        }
        return out
    }

    /// The expected value in the `Value` case the decoder produces for this register.
    func parseExpect(_ node: Node, _ path: String, spec: RegisterSpec) -> Value? {
        switch spec.type {
        case .bool:
            if case .scalar(let s) = node, !isQuoted(s), s.string == "0" || s.string == "1" { return .bool(s.string == "1") }
            return ctx.bool(node, path).map(Value.bool)
        case .string:
            guard let s = ctx.scalarText(node, path, expected: "a string") else { return nil }
            if s.utf8.count > spec.length * 2 {
                ctx.error(node, path, "\"\(s)\" is \(s.utf8.count) bytes, longer than length \(spec.length) registers (\(spec.length * 2) bytes)")
                return nil
            }
            return .string(s)
        case .float32, .float64:
            guard let d = ctx.number(node, path, expected: "a number") else { return nil }
            return .double(spec.type == .float32 ? Double(Float(d)) : d)
        case .int16, .int32, .int64, .uint16, .uint32, .uint64:
            let ranges: [ValueType: (Int64, UInt64)] = [
                .int16: (-32768, 32767), .int32: (-2_147_483_648, 2_147_483_647), .int64: (Int64.min, UInt64(Int64.max)),
                .uint16: (0, 65535), .uint32: (0, 4_294_967_295), .uint64: (0, UInt64.max),
            ]
            let (lo, hi) = ranges[spec.type]!
            let expected = "an integer \(lo)…\(hi) (type \(spec.type.rawValue))"
            guard case .scalar(let s) = node, !isQuoted(s), let i = YAMLInteger(s.string) else {
                ctx.error(node, path, "expected \(expected), got \(describe(node))")
                return nil
            }
            let inRange = i.negative ? (i.int64.map { $0 >= lo } ?? false) : i.magnitude <= hi
            guard inRange else {
                ctx.error(node, path, "\(s.string) is out of range (expected \(expected))")
                return nil
            }
            switch spec.type {
            case .int16, .int32, .int64: return .int(i.int64!)
            default: return .uint(i.magnitude)
            }
        }
    }

    func parseStatus(_ node: Node) -> (spec: StatusSpec, placed: Placed)? {
        guard let sm = MappingReader(ctx, node, "status", keys: EntryKind.status.keys, what: EntryKind.status.what)
        else { return nil }
        let placed = parseEntry(sm, kind: .status)
        guard let vn = sm.require("values", "the status codes and their names: {0: operational, 1: fault}"),
              let entries = MappingReader.freeEntries(ctx, vn, "status.values", what: "a mapping of code → status name, e.g. {0: operational, 1: fault}")
        else { return nil }
        if entries.isEmpty {
            ctx.error(vn, "status.values", "needs at least one code → name, e.g. {0: operational, 1: fault}")
        }
        var values: [Int64: String] = [:]
        var where_: [Int64: Node] = [:]
        for e in entries {
            let path = "status.values.\(e.key)"
            guard case .scalar(let ks) = e.keyNode, !isQuoted(ks), let code = YAMLInteger(ks.string)?.int64 else {
                ctx.error(e.keyNode, path, "a status code must be an integer, got \(describe(e.keyNode))")
                continue
            }
            if let spec = placed?.spec, !fits(code, spec.type) {
                ctx.error(e.keyNode, path, "code \(code) cannot be read from a \(spec.type.rawValue) status register")
                continue
            }
            if let first = where_[code] {
                ctx.error(e.keyNode, path, "duplicate status code \(code) (first at \(ctx.location(first)))")
                continue
            }
            guard let name = ctx.name(e.value, path, what: "status name") else { continue }
            values[code] = name
            where_[code] = e.keyNode
        }
        guard let placed else { return nil }
        return (StatusSpec(register: placed.spec, values: values), placed)
    }

    func fits(_ code: Int64, _ type: ValueType) -> Bool {
        switch type {
        case .bool: return code == 0 || code == 1
        case .int16: return code >= -32768 && code <= 32767
        case .uint16: return code >= 0 && code <= 65535
        case .int32: return code >= -2_147_483_648 && code <= 2_147_483_647
        case .uint32: return code >= 0 && code <= 4_294_967_295
        case .int64: return true
        case .uint64: return code >= 0
        case .float32, .float64, .string: return false
        }
    }

    func parseClock(_ node: Node) -> (clock: PLCClock, placed: Placed)? {
        guard let cm = MappingReader(ctx, node, "clock", keys: EntryKind.clock.keys, what: EntryKind.clock.what)
        else { return nil }
        let placed = parseEntry(cm, kind: .clock)
        let unit = cm.require("unit", "the clock's unit since the Unix epoch: s, ms, us or ns")
            .flatMap { ctx.choice(PLCClockUnit.self, $0, "clock.unit", what: "clock unit") }
        guard let placed, let unit else { return nil }
        return (PLCClock(register: placed.spec, unit: unit), placed)
    }

    // MARK: intents

    func parseIntents(_ node: Node, statusNames: Set<String>?, registers: [String: RegisterSpec],
                      declared: Set<String>) -> [IntentSpec]? {
        guard let entries = MappingReader.freeEntries(ctx, node, "intents", what: "a mapping of intent name → {coil: …}")
        else { return nil }
        if entries.isEmpty {
            ctx.error(node, "intents", "a device needs at least one intent (its permit coil is what the guard serves)")
            return nil
        }
        var out: [IntentSpec] = []
        var coilOwner: [UInt16: (String, Node)] = [:]
        for (i, e) in entries.enumerated() {
            let path = "intents.\(e.key)"
            let name = ctx.name(e.keyNode, path, what: "intent name")
            if i == 16 {
                ctx.error(e.keyNode, path, "too many intents: a device has at most 16 (its permit bits fill one 16-bit register of the interlock layout, see docs/interlock.md)")
            }
            guard let im = MappingReader(ctx, e.value, path, keys: ["coil", "requires", "latch", "statuses"],
                                         what: "a mapping with coil (and optionally requires, latch, statuses)")
            else { continue }
            var coil: UInt16?
            if let cn = im.require("coil", "the interlock coil address 0…65535 that permits this intent"),
               let c = ctx.int(cn, keyPath(path, "coil"), 0...65535, expected: "a coil address 0…65535") {
                if let (other, otherNode) = coilOwner[UInt16(c)] {
                    ctx.error(cn, keyPath(path, "coil"), "coil \(c) is already claimed by intent \(other) at \(ctx.location(otherNode))")
                } else {
                    coil = UInt16(c)
                    coilOwner[UInt16(c)] = (e.key, cn)
                }
            }
            let latch = im.take("latch").flatMap { ctx.bool($0, keyPath(path, "latch")) } ?? false
            var statuses = ["operational"]
            if let sn = im.take("statuses") {
                statuses = []
                if let items = ctx.list(sn, keyPath(path, "statuses"), of: "status names") {
                    if items.isEmpty { ctx.error(sn, keyPath(path, "statuses"), "needs at least one status name") }
                    for (k, item) in items.enumerated() {
                        let ip = keyPath(keyPath(path, "statuses"), index: k)
                        guard let s = ctx.name(item, ip, what: "status name") else { continue }
                        if let statusNames, !statusNames.contains(s) {
                            ctx.error(item, ip, "status \"\(s)\" is not one of status.values (\(statusNames.sorted().joined(separator: ", ")))")
                        }
                        statuses.append(s)
                    }
                }
            } else if let statusNames, !statusNames.contains("operational") {
                ctx.error(e.keyNode, path, "allows status \"operational\" (the default), which status.values does not define (\(statusNames.sorted().joined(separator: ", "))): say which statuses it allows with statuses: [...]")
            }
            var requires: [Requirement] = []
            if let rn = im.take("requires"),
               let reqs = MappingReader.freeEntries(ctx, rn, keyPath(path, "requires"), what: "a mapping of register name → {min, max, eq, in}") {
                for r in reqs {
                    if let req = parseRequirement(r.key, r.keyNode, r.value, path: keyPath(keyPath(path, "requires"), r.key),
                                                  registers: registers, declared: declared) {
                        requires.append(req)
                    }
                }
            }
            if let name, let coil {
                out.append(IntentSpec(name: name, coil: coil, requires: requires, allowedStatuses: statuses,
                                      latch: latch, location: ctx.location(e.keyNode)))
            }
        }
        return out
    }

    func parseRequirement(_ register: String, _ keyNode: Node, _ value: Node, path: String,
                          registers: [String: RegisterSpec], declared: Set<String>) -> Requirement? {
        var ok = true
        if let spec = registers[register] {
            if spec.type == .string {
                ctx.error(keyNode, path, "\"\(register)\" is a string register; requires needs a numeric or bool register")
                ok = false
            }
        } else if !declared.contains(register) {
            var msg = "requires names unknown register \"\(register)\""
            if let near = closest(register, in: Array(declared)) { msg += " (did you mean \"\(near)\"?)" }
            else if !declared.isEmpty { msg += " (registers: \(declared.sorted().joined(separator: ", ")))" }
            else { msg += " (the map has no registers)" }
            ctx.error(keyNode, path, msg)
            ok = false
        } else {
            ok = false  // The register itself is invalid and already reported.
        }
        guard let rm = MappingReader(ctx, value, path, keys: ["min", "max", "eq", "in"], what: "a mapping of bounds {min, max, eq, in}")
        else { return nil }
        func num(_ key: String) -> Double? {
            guard let n = rm.take(key) else { return nil }
            if key == "eq", case .scalar(let s) = n, !isQuoted(s), s.string == "true" || s.string == "false" {
                return s.string == "true" ? 1 : 0
            }
            let v = ctx.number(n, keyPath(path, key))
            if v == nil { ok = false }
            return v
        }
        let min = num("min"), max = num("max"), eq = num("eq")
        var oneOf: [Double]?
        if let inNode = rm.take("in") {
            if let items = ctx.list(inNode, keyPath(path, "in"), of: "numbers") {
                if items.isEmpty {
                    ctx.error(inNode, keyPath(path, "in"), "needs at least one value")
                    ok = false
                }
                var vals: [Double] = []
                for (k, item) in items.enumerated() {
                    if let d = ctx.number(item, keyPath(keyPath(path, "in"), index: k)) { vals.append(d) } else { ok = false }
                }
                oneOf = vals
            } else { ok = false }
        }
        if case .mapping(let raw) = value, raw.isEmpty {
            ctx.error(value, path, "needs at least one of min, max, eq, in")
            ok = false
        }
        if let min, let max, min > max {
            ctx.error(keyNode, path, "min \(formatNumber(min)) is greater than max \(formatNumber(max)): no value can satisfy it")
            ok = false
        }
        guard ok else { return nil }
        return Requirement(name: register, min: min, max: max, eq: eq, oneOf: oneOf, location: ctx.location(keyNode))
    }
}

/// Host names and IP literals; dotted quads must be valid IPv4.
func isValidHost(_ h: String) -> Bool {
    guard !h.isEmpty, h.utf8.count <= 253 else { return false }
    if h.contains(":") {
        // IPv6 literal, possibly bracketed.
        let core = h.hasPrefix("[") && h.hasSuffix("]") ? String(h.dropFirst().dropLast()) : h
        return !core.isEmpty && core.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
    }
    if h.allSatisfy({ $0.isNumber || $0 == "." }) {
        let parts = h.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isASCII) && (Int(p).map { $0 <= 255 } ?? false)
        }
    }
    return h.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
        !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
            && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
    }
}
