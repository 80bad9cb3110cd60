import Platform
import TibetTwin

extension StatusSnapshot {
    /// Reads the JSON of `GET /status` back (the `tibet-twin status` client). Devices come back
    /// sorted by name; fields the JSON lacks stay unknown.
    package init?(json: JSONValue) {
        guard let node = json["node"]?.stringValue, let healthy = json["healthy"]?.boolValue,
              let devs = json["devices"]?.objectValue else { return nil }
        var devices: [DeviceStatus] = []
        for name in devs.keys.sorted() {
            let d = devs[name]!
            var intents: [IntentStatus] = []
            for (iname, i) in (d["intents"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
                let code = i["reason_code"]?.intValue.flatMap { UInt16(exactly: $0) }.flatMap(ReasonCode.init(rawValue:))
                intents.append(IntentStatus(intent: iname, coil: UInt16(i["coil"]?.intValue ?? 0),
                                            permit: i["permit"]?.boolValue ?? false, reasonCode: code ?? .noPhysical,
                                            reason: i["reason"]?.stringValue ?? "", latched: i["latched"]?.boolValue ?? false))
            }
            intents.sort { $0.coil < $1.coil }
            var values: [ValueStatus] = []
            for (vname, v) in (d["values"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
                let physical: Value?
                switch v["value"] {
                case .some(.bool(let b)): physical = .bool(b)
                case .some(.int(let n)): physical = .int(n)
                case .some(.double(let x)): physical = .double(x)
                case .some(.string(let s)): physical = .string(s)
                default: physical = nil
                }
                values.append(ValueStatus(name: vname, physical: physical,
                                          quality: v["quality"]?.stringValue.flatMap { Quality(text: $0) },
                                          twin: v["twin"]?.doubleValue, unit: v["unit"]?.stringValue,
                                          tolerance: v["tolerance"]?.doubleValue))
            }
            devices.append(DeviceStatus(
                device: name, intents: intents, driftMs: d["drift_ms"]?.doubleValue,
                physicalAgeMs: d["physical_age_ms"]?.doubleValue, twinAgeMs: d["twin_age_ms"]?.doubleValue,
                physicalStatus: d["physical_status"]?.stringValue, twinStatus: d["twin_status"]?.stringValue,
                identity: d["identity"]?.stringValue,
                twinSeq: d["twin_seq"]?.intValue.flatMap { UInt64(exactly: $0) },
                blockCount: UInt64(d["block_count"]?.intValue ?? 0), values: values))
        }
        self.init(node: node, healthy: healthy, auditHealthy: json["audit_healthy"]?.boolValue ?? healthy,
                  heartbeat: UInt16(truncatingIfNeeded: json["heartbeat"]?.intValue ?? 0),
                  wallNs: json["time"]?.stringValue.flatMap { RFC3339.parse($0) } ?? 0, devices: devices)
    }

    /// The terminal form of `tibet-twin status`: one line per intent, the device's ages beside.
    package func text(color: Bool) -> String {
        let green = color ? "\u{1B}[32m" : "", red = color ? "\u{1B}[31m" : "", bold = color ? "\u{1B}[1m" : ""
        let reset = color ? "\u{1B}[0m" : ""
        var out = "\(bold)\(node)\(reset)  \(healthy ? "\(green)healthy\(reset)" : "\(red)DEGRADED\(reset)")"
        out += "  heartbeat \(heartbeat)  audit \(auditHealthy ? "ok" : "\(red)FAILING\(reset)")"
        out += "  \(permitCount)/\(intentCount) permits\n"
        for d in devices {
            out += "\(bold)\(d.device)\(reset)  status physical=\(d.physicalStatus ?? "?") twin=\(d.twinStatus ?? "?")"
            if let seq = d.twinSeq { out += " seq \(seq)" }  // UInt64: never shown negative
            out += "  drift \(Self.msText(d.driftMs))  physical age \(Self.msText(d.physicalAgeMs))"
            out += "  twin age \(Self.msText(d.twinAgeMs))\n"
            for i in d.intents {
                let mark = i.permit ? "\(green)PERMIT\(reset) " : "\(red)BLOCKED\(reset)"
                out += "  \(mark) \(i.intent) (coil \(i.coil))  \(i.reason)\(i.latched ? "  [latched]" : "")\n"
            }
        }
        return out
    }

    static func msText(_ v: Double?) -> String {
        guard let v, v.isFinite else { return "-" }
        return v < 10 ? "\((v * 10).rounded() / 10) ms" : "\(Int(v.rounded())) ms"
    }

    /// The read-only status page (`GET /`): refreshes itself every 2 s, one row per device,
    /// green or red per intent with the reason in words.
    package var html: String {
        var rows = ""
        for d in devices {
            var cells = ""
            for i in d.intents {
                cells += "<div class=\"intent \(i.permit ? "ok" : "blocked")\"><b>\(Self.esc(i.intent))</b> "
                cells += "<span class=\"coil\">coil \(i.coil)</span><br>"
                cells += "\(i.permit ? "PERMIT" : "BLOCKED")\(i.latched ? " (latched: reset required)" : "")"
                cells += "<div class=\"reason\">\(Self.esc(i.reason))</div></div>"
            }
            var vals = ""
            for v in d.values {
                let p = v.physical.map { "\($0)" } ?? "–"
                let t = v.twin.map { "\($0)" } ?? "–"
                let q = v.quality.map { $0.isGood ? "" : " <span class=\"bad\">\($0)</span>" } ?? ""
                vals += "\(Self.esc(v.name)): \(Self.esc(p))\(v.unit.map { " " + Self.esc($0) } ?? "")\(q) / twin \(Self.esc(t))<br>"
            }
            rows += """
                <tr><td class="dev">\(Self.esc(d.device))<div class="small">physical: \(Self.esc(d.physicalStatus ?? "?")) · \
                twin: \(Self.esc(d.twinStatus ?? "?"))\(d.twinSeq.map { " · seq \($0)" } ?? "")</div></td><td>\(cells)</td>\
                <td class="small">drift \(Self.msText(d.driftMs))<br>physical age \(Self.msText(d.physicalAgeMs))<br>\
                twin age \(Self.msText(d.twinAgeMs))<br>blocks \(d.blockCount)</td><td class="small">\(vals)</td></tr>

                """
        }
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
            <title>tibet-twin \(Self.esc(node))</title>
            <style>
            body{font-family:system-ui,sans-serif;margin:1.5em;background:#f7f7f7;color:#222}
            table{border-collapse:collapse;width:100%;background:#fff}
            td,th{border:1px solid #ccc;padding:.5em;vertical-align:top;text-align:left}
            .intent{display:inline-block;margin:.2em;padding:.4em .6em;border-radius:4px;min-width:12em;color:#fff}
            .ok{background:#1b7f3b}.blocked{background:#b3261e}.reason{font-size:.85em;opacity:.95}
            .small{font-size:.85em;color:#555}.bad{color:#b3261e;font-weight:bold}.dev{font-weight:bold}
            .coil{font-size:.8em;opacity:.8}
            </style></head><body>
            <h1>tibet-twin · \(Self.esc(node))</h1>
            <p>\(healthy ? "<span style=\"color:#1b7f3b\">healthy</span>" : "<span class=\"bad\">DEGRADED</span>") · \
            audit \(auditHealthy ? "writable" : "<span class=\"bad\">FAILING</span>") · heartbeat \(heartbeat) · \
            \(permitCount) of \(intentCount) permits · \(RFC3339.format(wallNs: wallNs))</p>
            <table><tr><th>device</th><th>intents</th><th>timing</th><th>values (physical / twin)</th></tr>
            \(rows)</table>
            <p class="small">Read-only. Re-arm a latched intent with <code>tibet-twin reset DEVICE [INTENT]</code>.
            JSON: <a href="/status">/status</a> · metrics: <a href="/metrics">/metrics</a></p>
            </body></html>

            """
    }

    static func esc(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }
}
