/// Audit tokens for people (`tibet-twin audit show`): one line per token, and the filters
/// `--device`, `--since`, `--action`.
public enum AuditText {
    /// Which tokens to show; `nil` fields match everything.
    public struct Filter: Sendable, Hashable {
        public var device: String?
        /// Only tokens whose `timestamp` is at or after this (ns since the epoch).
        public var sinceNs: Int64?
        public var action: String?

        public init(device: String? = nil, sinceNs: Int64? = nil, action: String? = nil) {
            self.device = device
            self.sinceNs = sinceNs
            self.action = action
        }

        public func matches(_ t: TibetToken) -> Bool {
            if let a = action, t.action.rawValue != a { return false }
            if let d = device, AuditText.device(of: t) != d { return false }
            if let s = sinceNs {
                guard let ts = RFC3339.parse(t.timestamp), ts >= s else { return false }
            }
            return true
        }
    }

    /// The device a token is about: `erin.device`, else `eraan.device`, else `eraan.jis`
    /// without its `jis:` prefix.
    public static func device(of t: TibetToken) -> String? {
        if let d = t.erin["device"]?.stringValue { return d }
        if let d = t.eraan["device"]?.stringValue { return d }
        if let j = t.eraan["jis"]?.stringValue, j.hasPrefix("jis:") { return String(j.dropFirst(4)) }
        return nil
    }

    /// `2026-11-26 14:32:01.021Z crane-01 move_left BLOCKED: status mismatch: …` for decisions
    /// (tokens whose ERIN has a `reason`: permit changes, checks); for other tokens the time,
    /// the action, the device and intent if any, and ERIN's other fields as `key=value`.
    public static func line(_ t: TibetToken) -> String {
        var out = humanTime(t.timestamp)
        if let reason = t.erin["reason"]?.stringValue {
            if t.action != .permitChanged { out += " " + t.action.rawValue }
            if let d = device(of: t) { out += " " + d }
            if let i = t.erin["intent"]?.stringValue ?? t.erachter["intent"]?.stringValue { out += " " + i }
            if t.action == .permitChanged, let allowed = t.erin["allowed"]?.boolValue {
                out += allowed ? " PERMIT" : " INHIBIT"
            }
            return out + " " + reason
        }
        out += " " + t.action.rawValue
        if let d = device(of: t) { out += " " + d }
        if let i = t.erin["intent"]?.stringValue { out += " " + i }
        if case .object(let o) = t.erin {
            for k in o.keys.sorted() where k != "device" && k != "intent" {
                // The full key is noise for people; its fingerprint (key_id) says which key.
                if t.action == .started && k == "public_key" { continue }
                out += " \(k)=" + scalarText(o[k]!)
            }
        }
        return out
    }

    /// `2026-11-26T14:32:01.021000Z` → `2026-11-26 14:32:01.021Z` (UTC, milliseconds);
    /// anything else unchanged.
    public static func humanTime(_ ts: String) -> String {
        guard let ns = RFC3339.parse(ts) else { return ts }
        // 2026-11-26T14:32:01.021Z → 2026-11-26 14:32:01.021Z
        return String(RFC3339.format(wallNs: ns, fractionDigits: 3).map { $0 == "T" ? " " : $0 })
    }

    static func scalarText(_ v: JSONValue) -> String {
        switch v {
        case .string(let s): return s.contains(" ") ? "\"\(s)\"" : s
        default: return v.canonical
        }
    }
}
