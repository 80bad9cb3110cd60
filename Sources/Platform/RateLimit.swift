/// At most one event per key per interval, counting the ones left out: the one limiter behind
/// every rate-limited log line (dropped twin lines, refused interlock clients). Counters and
/// audit records are never limited, only logs.
public struct RateLimit: Sendable {
    public let intervalNs: Int64
    private var lastAdmitted: [String: Int64] = [:]
    private var suppressed: [String: Int] = [:]

    public init(intervalNs: Int64) { self.intervalNs = intervalNs }

    public init(intervalSeconds: Double) { self.init(intervalNs: Int64(intervalSeconds * 1e9)) }

    /// Whether to let the event with `key` through now (monotonic `nowNs`); if so, how many
    /// events with that key were suppressed since the last one let through.
    public mutating func admit(_ key: String, nowNs: Int64) -> Int? {
        if let last = lastAdmitted[key], nowNs &- last < intervalNs {
            suppressed[key, default: 0] += 1
            return nil
        }
        lastAdmitted[key] = nowNs
        return suppressed.removeValue(forKey: key) ?? 0
    }
}
