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
                                            reason: i["reason"]?.stringValue ?? "", latched: i["latched"]?.boolValue ?? false,
                                            conditions: Self.strings(i["conditions"])))
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
                blockCount: UInt64(d["block_count"]?.intValue ?? 0), values: values,
                reasonCode: d["reason_code"]?.intValue.flatMap { UInt16(exactly: $0) }.flatMap(ReasonCode.init(rawValue:)),
                reason: d["reason"]?.stringValue, physicalError: d["poll_error"]?.stringValue,
                inputProblems: Self.strings(d["input_problems"]), maxAgeMs: d["max_age_ms"]?.doubleValue,
                maxDriftMs: d["max_drift_ms"]?.doubleValue))
        }
        self.init(node: node, healthy: healthy, auditHealthy: json["audit_healthy"]?.boolValue ?? healthy,
                  heartbeat: UInt16(truncatingIfNeeded: json["heartbeat"]?.intValue ?? 0),
                  wallNs: json["time"]?.stringValue.flatMap { RFC3339.parse($0) } ?? 0, devices: devices)
    }

    static func strings(_ v: JSONValue?) -> [String] {
        guard case .array(let a)? = v else { return [] }
        return a.compactMap(\.stringValue)
    }

    /// The terminal form of `tibet-twin status`: per device its state, the reason once, the
    /// ages (or `no data`), then one line per intent with its own extra conditions.
    package func text(color: Bool) -> String {
        let green = color ? "\u{1B}[32m" : "", red = color ? "\u{1B}[31m" : "", bold = color ? "\u{1B}[1m" : ""
        let reset = color ? "\u{1B}[0m" : ""
        let faults = failingDevices.count
        var out = "\(bold)\(node)\(reset)  \(healthy ? "\(green)healthy\(reset)" : "\(red)DEGRADED\(reset)")"
        if faults > 0 { out += "  \(red)\(faults) of \(devices.count) devices in FAULT\(reset)" }
        out += "  heartbeat \(heartbeat)  audit \(auditHealthy ? "ok" : "\(red)FAILING\(reset)")"
        out += "  \(permitCount)/\(intentCount) permits\n"
        for d in devices {
            let state = d.state
            let mark = state == .ok ? "\(green)\(state.word)\(reset)" : "\(red)\(state.word)\(reset)"
            out += "\(bold)\(d.device)\(reset)  \(mark)  status physical=\(d.physicalStatus ?? "?") twin=\(d.twinStatus ?? "?")"
            if let seq = d.twinSeq { out += " seq \(seq)" }  // UInt64: never shown negative
            out += "  drift \(Self.msText(d.driftMs))  physical \(d.physicalAgeText)  twin \(d.twinAgeText)\n"
            if let reason = d.reason { out += "  reason: \(reason)\n" }
            for i in d.intents {
                let mark = i.permit ? "\(green)PERMIT\(reset) " : "\(red)BLOCKED\(reset)"
                out += "  \(mark) \(i.intent) (coil \(i.coil))"
                if let extra = i.ownText(deviceReason: d.reason) { out += "  \(extra)" }
                out += "\(i.latched ? "  [latched]" : "")\n"
            }
        }
        return out
    }

    static func msText(_ v: Double?) -> String {
        guard let v, v.isFinite else { return "-" }
        return v < 10 ? "\((v * 10).rounded() / 10) ms" : "\(Int(v.rounded())) ms"
    }

    /// The read-only status page (`GET /`): a header that is red while any device is in fault
    /// or the guard is degraded, a filter box, and one compact row per device (its state, the
    /// reason once, each intent with its own extra conditions, ages or `no data`, the values
    /// folded). Refreshes itself every 2 s, keeping the filter (in the URL's `#`).
    package var html: String {
        var rows = ""
        rows.reserveCapacity(devices.count * 900)
        // A limit all devices share goes in the column's heading; otherwise beside each figure.
        let ageLimits = Set(devices.compactMap(\.maxAgeMs)), driftLimits = Set(devices.compactMap(\.maxDriftMs))
        let sharedAge = ageLimits.count == 1 ? ageLimits.first : nil
        let sharedDrift = driftLimits.count == 1 ? driftLimits.first : nil
        // Faults first, then blocked devices, then the rest, each in map order: what needs
        // attention is at the top even with hundreds of devices.
        let ordered = devices.enumerated().sorted { a, b in
            (a.element.state.rank, a.offset) < (b.element.state.rank, b.offset)
        }.map(\.element)
        for d in ordered {
            let state = d.state
            var cells = ""
            for i in d.intents {
                cells += "<span class=\"intent \(i.permit ? "ok" : "blocked")\" data-intent=\"\(Self.esc(i.intent))\" "
                cells += "title=\"coil \(i.coil)\">\(Self.esc(i.intent)) \(i.permit ? "PERMIT" : "BLOCKED")"
                if i.latched { cells += " · latched: reset required" }
                cells += "</span>"
                if let extra = i.ownText(deviceReason: d.reason), !i.permit {
                    cells += "<span class=\"cond\">\(Self.esc(extra))</span>"
                }
                cells += " "
            }
            var vals = ""
            for v in d.values {
                let p = v.physical.map { $0.text(precision: v.precision) } ?? "–"
                let t = v.twin.map { NumberText.text($0, precision: .float64) } ?? "–"
                let q = v.quality.map { $0.isGood ? "" : " <span class=\"bad\">\($0)</span>" } ?? ""
                vals += "\(Self.esc(v.name)): \(Self.esc(p))\(v.unit.map { " " + Self.esc($0) } ?? "")\(q) / twin \(Self.esc(t))<br>"
            }
            let reasonText = d.reason ?? (state == .ok ? "" : "see intents")
            let physical = d.physicalError == nil
                ? "\(Self.esc(d.physicalStatus ?? "?")) · \(Self.age(d.physicalAgeMs, limit: d.maxAgeMs, shown: sharedAge == nil))"
                : "<span class=\"nodata\" title=\"\(Self.esc(d.physicalError ?? ""))\">no data</span>"
            let twin = d.twinStatus == nil
                ? "<span class=\"nodata\">no data</span>"
                : "\(Self.esc(d.twinStatus ?? "?")) · \(Self.age(d.twinAgeMs, limit: d.maxAgeMs, shown: sharedAge == nil))"
            rows += """
                <tr class="row \(state.cssClass)" data-device="\(Self.esc(d.device))" data-state="\(state.cssClass)">\
                <td class="dev">\(Self.esc(d.device))</td><td class="state">\(state.word)</td>\
                <td class="reason"><div class="clamp" title="\(Self.esc(reasonText))">\(Self.esc(reasonText))</div></td><td>\(cells)</td>\
                <td class="small nw">\(physical)</td><td class="small nw"\(d.twinSeq.map { " title=\"seq \($0)\"" } ?? "")>\(twin)</td>\
                <td class="small nw">\(Self.age(d.driftMs, limit: d.maxDriftMs, shown: sharedDrift == nil))</td>\
                <td class="small num">\(d.blockCount)</td>\
                <td class="small nw">\(vals.isEmpty ? "" : "<details><summary>\(d.values.count) values</summary>\(vals)</details>")</td></tr>

                """
        }
        let faults = failingDevices.count
        let blocked = devices.filter { $0.state == .blocked }.count
        let bad = !healthy || faults > 0
        var summary = healthy ? "guard running" : "DEGRADED"
        if faults > 0 { summary += " · \(faults) of \(devices.count) devices in FAULT" }
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <noscript><meta http-equiv="refresh" content="2"></noscript>
            <title>\(bad ? "FAULT · " : "")tibet-twin \(Self.esc(node))</title>
            <style>
            body{font-family:system-ui,sans-serif;margin:0;background:#f7f7f7;color:#222;font-size:14px}
            header{padding:.6em 1em;color:#fff}header.allgood{background:#1b7f3b}header.fault{background:#b3261e}
            header h1{font-size:1.3em;margin:0 0 .2em 0}
            main{padding:.5em 1em}
            table{border-collapse:collapse;width:100%;background:#fff}
            td,th{border-bottom:1px solid #ddd;padding:.25em .4em;vertical-align:top;text-align:left}
            th{position:sticky;top:0;background:#eee}
            tr.fault td.state{background:#b3261e;color:#fff;font-weight:bold}
            tr.blocked td.state{background:#f2c94c;font-weight:bold}tr.ok td.state{color:#1b7f3b;font-weight:bold}
            .intent{display:inline-block;margin:1px;padding:1px 6px;border-radius:3px;color:#fff;white-space:nowrap}
            .intent.ok{background:#1b7f3b}.intent.blocked{background:#b3261e}
            .cond{font-size:.85em;color:#b3261e;margin-right:.4em}
            .small{font-size:.85em;color:#444}.bad{color:#b3261e;font-weight:bold}.dev{font-weight:bold;white-space:nowrap}
            .nodata{color:#b3261e;font-weight:bold}.num{text-align:right}.nw{white-space:nowrap}
            .over{color:#b3261e;font-weight:bold}td.reason{min-width:24em;max-width:40em}
            .clamp{display:-webkit-box;-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden}
            #filter{font-size:1em;padding:.3em;width:20em}
            </style></head><body>
            <header class="\(bad ? "fault" : "allgood")" id="summary" data-faults="\(faults)">
            <h1>tibet-twin · \(Self.esc(node)) · \(summary)</h1>
            audit \(auditHealthy ? "writable" : "<b>FAILING</b>") · heartbeat \(heartbeat) · \
            \(permitCount) of \(intentCount) permits · \(devices.count) device\(devices.count == 1 ? "" : "s"): \(devices.count - faults - blocked) ok, \
            \(blocked) blocked, \(faults) fault · \(RFC3339.format(wallNs: wallNs))
            </header><main>
            <p><input id="filter" type="search" placeholder="filter: device, state, reason…" autocomplete="off">
            <label><input id="onlybad" type="checkbox"> only blocked and fault</label> <span id="shown" class="small"></span></p>
            <table><thead><tr><th>device</th><th>state</th><th>reason</th><th>intents</th><th>physical · age\(sharedAge.map { " (limit \(Self.msText($0)))" } ?? "")</th>\
            <th>twin · age\(sharedAge.map { " (limit \(Self.msText($0)))" } ?? "")</th>\
            <th>drift\(sharedDrift.map { " (limit \(Self.msText($0)))" } ?? "")</th><th>blocks</th><th>values</th></tr></thead><tbody>
            \(rows)</tbody></table>
            <p class="small">Read-only. Re-arm a latched intent with <code>tibet-twin reset DEVICE [INTENT]</code>.
            JSON: <a href="/status">/status</a> · readiness: <a href="/readyz">/readyz</a> · metrics: <a href="/metrics">/metrics</a></p>
            </main>
            <script>
            (function(){
            var f=document.getElementById('filter'),b=document.getElementById('onlybad'),shown=document.getElementById('shown');
            var h=decodeURIComponent(location.hash.slice(1));if(h.charAt(0)==='!'){b.checked=true;h=h.slice(1);}f.value=h;
            function apply(){var q=f.value.toLowerCase(),n=0,rows=document.querySelectorAll('tr.row');
            for(var i=0;i<rows.length;i++){var r=rows[i];var hit=r.textContent.toLowerCase().indexOf(q)>=0&&(!b.checked||r.dataset.state!=='ok');
            r.style.display=hit?'':'none';if(hit)n++;}
            shown.textContent=n+' of '+rows.length+' shown';history.replaceState(null,'','#'+(b.checked?'!':'')+encodeURIComponent(f.value));}
            f.addEventListener('input',apply);b.addEventListener('change',apply);apply();
            setInterval(function(){if(document.activeElement!==f&&!document.querySelector('details[open]'))location.reload();},2000);
            })();
            </script>
            </body></html>

            """
    }

    /// An age or drift for the page: red when over its limit; the limit beside it if `shown`.
    static func age(_ ms: Double?, limit: Double?, shown: Bool) -> String {
        var t = msText(ms)
        if shown, let limit { t += " / \(msText(limit))" }
        if let ms, let limit, ms > limit { return "<span class=\"over\">\(t)</span>" }
        return t
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

/// A device's state as the page and the terminal show it.
package enum DeviceState: Sendable, Hashable {
    /// Every intent permits.
    case ok
    /// Inputs good, some intent blocked (a disagreement, a condition, re-arming).
    case blocked
    /// An input is failing (PLC, twin, identity) or the device was not evaluated yet.
    case fault

    var word: String {
        switch self {
        case .ok: return "OK"
        case .blocked: return "BLOCKED"
        case .fault: return "FAULT"
        }
    }

    /// Sort order on the page: faults first.
    var rank: Int {
        switch self {
        case .fault: return 0
        case .blocked: return 1
        case .ok: return 2
        }
    }

    var cssClass: String {
        switch self {
        case .ok: return "ok"
        case .blocked: return "blocked"
        case .fault: return "fault"
        }
    }
}

extension DeviceStatus {
    package var state: DeviceState {
        if !inputProblems.isEmpty { return .fault }
        return intents.allSatisfy(\.permit) ? .ok : .blocked
    }

    /// `age 20 ms (limit 500 ms)`, or `no data` when the last poll failed.
    var physicalAgeText: String {
        physicalError != nil ? "no data" : "age \(StatusSnapshot.msText(physicalAgeMs))\(limitText)"
    }

    var twinAgeText: String {
        twinStatus == nil ? "no data" : "age \(StatusSnapshot.msText(twinAgeMs))\(limitText)"
    }

    private var limitText: String { maxAgeMs.map { " (limit \(StatusSnapshot.msText($0)))" } ?? "" }
}

extension IntentStatus {
    /// What to show beside the intent: its own conditions when the device's reason is shown
    /// once; the whole reason when the JSON did not split it (an older appliance); nil if nothing.
    func ownText(deviceReason: String?) -> String? {
        if !conditions.isEmpty { return conditions.joined(separator: "; ") }
        if permit || deviceReason != nil { return nil }
        return reason.isEmpty ? nil : reason
    }
}
