import Yams

// Register entries of a map: address forms, types, overlaps.

extension MapParser {
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
            declaredType = parseType(typeNode, keyPath(p, "type"))
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

        // int8 / uint8 name the byte they are; no other type takes one.
        var byte: ByteHalf?
        let byteNode = m.known.contains("byte") ? m.take("byte") : nil
        if type == .int8 || type == .uint8 {
            if let byteNode {
                byte = ctx.choice(ByteHalf.self, byteNode, keyPath(p, "byte"), what: "byte (high = bits 15…8, low = bits 7…0)")
                if byte == nil { ok = false }
            } else {
                ctx.error(typeNode ?? m.node, p, "type \(type.rawValue) needs byte: high (bits 15…8, sent first) or byte: low (bits 7…0)")
                ok = false
            }
        } else if let byteNode {
            ctx.error(byteNode, keyPath(p, "byte"), "byte applies only to types int8 and uint8 (type is \(type.rawValue))")
            ok = false
        }

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
                } else if type == .int8 || type == .uint8 {
                    ctx.error(on, keyPath(p, "order"), "order does not apply to \(type.rawValue): say which byte with byte: high or byte: low")
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
        if explicitTable != nil || parsedAddress?.modicon == nil, case .scalar(let a) = addressNode, !isQuoted(a),
           a.string.count == 5, a.string.first.flatMap({ Int(String($0)) }) == table.modiconPrefix, address > 10000 {
            ctx.warning(addressNode, keyPath(p, "address"),
                        "\(a.string) looks like a Modicon address, but unquoted it is read as protocol address \(address) of the \(table.rawValue) table; if \(table.rawValue) \(address - table.modiconPrefix * 10000 - 1) is meant, quote it (\"\(a.string)\") or write \(address - table.modiconPrefix * 10000 - 1)")
        }
        let spec = RegisterSpec(name: name, table: table, address: UInt16(address), type: type, order: order,
                                bit: bit, byte: byte, length: length, scale: scale, offset: offset, unit: unit,
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

    /// Names other tools use for our types (Telegraf, Home Assistant, IEC 61131-3, C).
    static let typeAliases: [String: ValueType] = [
        "float": .float32, "real": .float32, "single": .float32, "double": .float64, "lreal": .float64,
        "int": .int16, "short": .int16, "word": .uint16, "uint": .uint16, "ushort": .uint16,
        "dint": .int32, "long": .int32, "dword": .uint32, "udint": .uint32, "ulong": .uint32,
        "lint": .int64, "lword": .uint64, "ulint": .uint64, "sint": .int8, "usint": .uint8, "byte": .uint8,
        "char": .int8, "boolean": .bool, "bit": .bool, "coil": .bool, "str": .string, "text": .string,
        "int8l": .int8, "int8h": .int8, "uint8l": .uint8, "uint8h": .uint8,
    ]

    /// A value type; a name another tool uses gets the type it means as a suggestion.
    func parseType(_ node: Node, _ path: String) -> ValueType? {
        guard let text = ctx.scalarText(node, path, expected: "a type") else { return nil }
        if let t = ValueType(rawValue: text) { return t }
        let all = ValueType.allCases.map(\.rawValue).joined(separator: ", ")
        let lower = text.lowercased()
        if let t = ValueType(rawValue: lower) {
            ctx.error(node, path, "unknown type \"\(text)\" (did you mean \"\(t.rawValue)\"? expected one of: \(all))")
        } else if let t = Self.typeAliases[lower] {
            var hint = "use \(t.rawValue)"
            if t == .int8 || t == .uint8 {
                hint += lower.hasSuffix("h") ? " with byte: high" : lower.hasSuffix("l") ? " with byte: low" : " with byte: high or low"
            }
            ctx.error(node, path, "unknown type \"\(text)\": \(hint) (expected one of: \(all))")
        } else {
            ctx.error(node, path, "unknown type \"\(text)\" (expected one of: \(all))")
        }
        return nil
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
    ///
    /// Each entry is checked against the earlier entries indexed by (table, address), not against
    /// every earlier entry: a map of tens of thousands of registers takes linear time, not minutes
    /// (issue 17). Per address only the first entry of each bit (or of no bit) is kept: a later
    /// entry with the same bit could only ever be a later, so unreported, match.
    func checkOverlaps(_ items: [Placed]) {
        var byAddress: [RegisterTable: [Int: [Int]]] = [:]
        for (j, b) in items.enumerated() {
            let span = Int(b.spec.address)...b.spec.lastAddress
            var hit: Int?
            if let table = byAddress[b.spec.table] {
                for address in span {
                    for ai in table[address] ?? [] {
                        if let h = hit, ai >= h { break }
                        let a = items[ai]
                        guard a.label != b.label else { continue }
                        if let ba = a.spec.bit, let bb = b.spec.bit, ba != bb { continue }
                        if let ba = a.spec.byte, let bb = b.spec.byte, ba != bb { continue }
                        hit = ai
                        break
                    }
                }
            }
            if let ai = hit {
                let a = items[ai]
                // Report at whichever is written later in the file.
                let (first, second) = ctx.location(a.addressNode).line <= ctx.location(b.addressNode).line ? (a, b) : (b, a)
                ctx.error(second.addressNode, keyPath(second.path, "address"),
                          "\(self.span(second.spec)) overlaps \(first.label) (\(self.span(first.spec))) at \(ctx.location(first.addressNode))")
            }
            for address in span {
                var bucket = byAddress[b.spec.table, default: [:]][address, default: []]
                if !bucket.contains(where: { items[$0].spec.bit == b.spec.bit && items[$0].spec.byte == b.spec.byte }) {
                    bucket.append(j)
                    byAddress[b.spec.table, default: [:]][address] = bucket
                }
            }
        }
    }

    func span(_ s: RegisterSpec) -> String {
        var t = "\(s.table.rawValue) \(s.address)"
        if s.width > 1 { t += "…\(s.lastAddress)" }
        if let b = s.bit { t += " bit \(b)" }
        if let b = s.byte { t += " \(b.rawValue) byte" }
        return t
    }
}
