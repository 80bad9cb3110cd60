import Yams

// Identity, status, clock and intents of a map.

extension MapParser {
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
        case .int8, .uint8, .int16, .int32, .int64, .uint16, .uint32, .uint64:
            let ranges: [ValueType: (Int64, UInt64)] = [
                .int8: (-128, 127), .uint8: (0, 255),
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
            case .int8, .int16, .int32, .int64: return .int(i.int64!)
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
        case .int8: return code >= -128 && code <= 127
        case .uint8: return code >= 0 && code <= 255
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
