/// How `tibet-twin read` shows one poll: the JSON of docs/cli.md and a table for people.
public enum ReadReport {
    /// `{"device":…,"time":"<RFC 3339>","status":…,"identity":"ok","values":{"name":{"value":…,
    /// "unit":…,"quality":"good"}}}` (docs/cli.md), plus `status_raw`, `status_quality`,
    /// `identity_detail` (for a mismatch) and `poll_error` (null when the poll was good).
    /// Values that could not be read are `null` with their quality.
    public static func json(_ state: PhysicalState, map: DeviceMap) -> JSONValue {
        var values: [String: JSONValue] = [:]
        for r in map.registers {
            let reading = state.values[r.name] ?? Reading(value: nil, quality: .badComm)
            var v: [String: JSONValue] = [
                "value": reading.value.map { jsonValue($0, precision: r.precision) } ?? .null,
                "quality": .string(reading.quality.description),
            ]
            v["unit"] = r.unit.map(JSONValue.string) ?? .null
            values[r.name] = .object(v)
        }
        var o: [String: JSONValue] = [
            "device": .string(state.device),
            "time": .string(RFC3339.format(wallNs: state.time.wallNs)),
            "status": state.status.map(JSONValue.string) ?? .null,
            "status_raw": state.statusRaw.map(JSONValue.int) ?? .null,
            "status_quality": .string(state.statusQuality.description),
            "identity": .string(identityWord(state.identity)),
            "values": .object(values),
            "poll_error": state.pollError.map(JSONValue.string) ?? .null,
        ]
        if case .mismatch = state.identity { o["identity_detail"] = .string(state.identity.description) }
        if state.statusDerived { o["status_derived"] = .bool(true) }
        if let plc = state.plcWallNs { o["plc_time"] = .string(RFC3339.format(wallNs: plc)) }
        return .object(o)
    }

    /// The identity result as one word: `ok`, `not_configured`, `mismatch`, `unknown`.
    public static func identityWord(_ r: IdentityResult) -> String {
        switch r {
        case .ok: return "ok"
        case .notConfigured: return "not_configured"
        case .mismatch: return "mismatch"
        case .unknown: return "unknown"
        }
    }

    /// A decoded value as JSON: integers stay integers (a `uint64` above `Int64.max` becomes a
    /// double), doubles the number their shortest text at `precision` reads back as (a float32
    /// 230.1 is `230.1`), non-finite doubles `null`.
    public static func jsonValue(_ v: Value, precision: ValuePrecision = .float64) -> JSONValue {
        switch v.at(precision: precision) {
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .uint(let u): return u <= UInt64(Int64.max) ? .int(Int64(u)) : .double(Double(u))
        case .double(let d): return d.isFinite ? .double(d) : .null
        case .string(let s): return .string(s)
        }
    }

    /// A table for people: one line per value (name, value, unit, quality, where it is read),
    /// then status and identity.
    public static func text(_ state: PhysicalState, map: DeviceMap) -> String {
        var rows: [[String]] = [["NAME", "VALUE", "UNIT", "QUALITY", "REGISTER"]]
        for r in map.registers {
            let reading = state.values[r.name] ?? Reading(value: nil, quality: .badComm)
            rows.append([r.name, reading.value?.text(precision: r.precision) ?? "-", r.unit ?? "", reading.quality.description, place(r)])
        }
        let widths = (0..<5).map { c in rows.map { $0[c].count }.max() ?? 0 }
        var out = "\(state.device)  \(map.plc.linkName) unit \(map.plc.unit)  \(RFC3339.format(wallNs: state.time.wallNs))\n"
        for row in rows {
            var line = ""
            for c in 0..<5 {
                line += row[c]
                if c < 4 { line += String(repeating: " ", count: widths[c] - row[c].count + 2) }
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        let statusText: String
        if state.statusDerived {
            statusText = (state.status ?? "unknown (\(state.statusQuality))") + " (derived: the map has no status register)"
        } else if let s = state.status {
            statusText = "\(s) (\(state.statusRaw.map(String.init) ?? "?"))"
        } else if let raw = state.statusRaw {
            statusText = "unmapped code \(raw) (\(state.statusQuality))"
        } else {
            statusText = "unknown (\(state.statusQuality))"
        }
        out += "status: \(statusText)\n"
        out += "identity: \(state.identity)\n"
        if let e = state.pollError { out += "error: \(e)\n" }
        return out
    }

    /// Where a value is read, e.g. `holding 100+2 float32 ABCD`, `holding 7 bit 3`.
    static func place(_ r: RegisterSpec) -> String {
        if let bit = r.bit { return "\(r.table.rawValue) \(r.address) bit \(bit)" }
        if r.table.isBitTable { return "\(r.table.rawValue) \(r.address)" }
        var s = "\(r.table.rawValue) \(r.address)" + (r.width > 1 ? "+\(r.width)" : "") + " \(r.type.rawValue)"
        if r.width > 1 && r.type != .string { s += " \(r.order.rawValue)" }
        if let b = r.byte { s += " \(b.rawValue) byte" }
        return s
    }
}
