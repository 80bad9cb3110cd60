import Logging
import TibetTwin

/// Puts a twin feed's outage and recovery on the audit chain (docs/mqtt.md): the permits need
/// nothing from it (a silent twin goes stale and blocks by itself), but an inspector reading why
/// the crane stopped sees the cause — `broker_unreachable`, `refused`, `tls`, `connection_lost`,
/// `subscription_refused`, `session_expired` — beside the `permit_changed` tokens it caused.
/// A source reports each outage once, however many reconnect attempts it takes.
package enum TwinFeedEventAudit {
    /// The token: ERIN the facts, ERAAN the feed, ERACHTER what it means for the permits.
    package static func record(_ e: TwinFeedEvent) -> AuditRecord {
        let why = e.kind == .lost
            ? "the twin feed \(e.source) cannot deliver lines (\(e.cause.rawValue)): its devices go stale and block until it is back"
            : "the twin feed \(e.source) delivers lines again; permits rise only through their own checks and re-arm"
        return AuditRecord(action: e.kind == .lost ? .twinFeedLost : .twinFeedRestored, erin: .object([
            "source": .string(e.source),
            "cause": .string(e.cause.rawValue),
            "detail": .string(e.detail),
        ]), eraan: .object([
            "feed": .string(e.source),
        ]), erachter: .object([
            "why": .string(why),
        ]), time: e.time, timing: .reporting)
    }
}
