import Logging
import Platform
import Synchronization
import TibetTwin

/// Puts a twin `seq` restart on the audit chain (docs/twin-feed.md#seq): the feed pipeline asks
/// before it accepts a line whose `seq` is not above the last accepted one. The token is queued
/// before the line's state reaches the guard, and the writer's queue is first in, first out, so
/// a permit rise made possible by the restarted twin is always written after it: the rise is
/// acknowledged durable only once the restart is durable too.
///
/// While the chain is unhealthy the restart is refused (the line is dropped as a replay, and
/// the twin's next line asks again): a restart is never accepted without its token. That
/// refusal is logged at most once a minute per device (a twin sends several lines a second).
package final class TwinSeqResetAudit: Sendable {
    let audit: AuditStore
    let logger: Logger
    private let refusalLog = Mutex(RateLimit(intervalSeconds: 60))

    package init(audit: AuditStore, logger: Logger) {
        self.audit = audit
        self.logger = logger
    }

    /// Queues the `twin_seq_reset` token; false (nothing queued) while the store is unhealthy.
    /// Does not block: called with the feed pipeline's lock held.
    package func record(_ reset: TwinSeqReset) -> Bool {
        guard audit.isHealthy else {
            if let suppressed = refusalLog.withLock({ $0.admit(reset.device, nowNs: reset.received.monotonicNs) }) {
                logger.warning("twin seq restart refused: the audit chain is unhealthy", metadata: [
                    "device": "\(reset.device)", "from_seq": "\(reset.fromSeq)", "to_seq": "\(reset.toSeq)",
                    "suppressed": "\(suppressed)",
                ])
            }
            return false
        }
        audit.submit(Self.record(reset))
        logger.notice("twin seq restarted after a silence; audited as twin_seq_reset", metadata: [
            "device": "\(reset.device)", "from_seq": "\(reset.fromSeq)", "to_seq": "\(reset.toSeq)",
            "silent_ms": "\(Int(reset.silentMs))",
        ])
        return true
    }

    /// The token: ERIN the facts, ERAAN the device, ERACHTER why it was accepted.
    package static func record(_ r: TwinSeqReset) -> AuditRecord {
        AuditRecord(action: .twinSeqReset, erin: .object([
            "device": .string(r.device),
            "from_seq": TwinState.seqJSON(r.fromSeq),
            "to_seq": TwinState.seqJSON(r.toSeq),
            "silent_ms": .double((r.silentMs * 1000).rounded() / 1000),
            "after_ms": .double(r.afterMs),
            "last_ts": .string(RFC3339.format(wallNs: r.lastTsNs)),
            "ts": .string(RFC3339.format(wallNs: r.tsNs)),
        ]), eraan: .object([
            "device": .string("jis:\(r.device)"),
            "twin_seq": TwinState.seqJSON(r.toSeq),
        ]), erachter: .object([
            "why": .string("twin seq restarted: seq \(r.toSeq) <= last accepted \(r.fromSeq) after \(Int(r.silentMs)) ms without an accepted line (bound \(Int(r.afterMs)) ms) and a later ts"),
        ]), time: r.received, timing: .reporting)
    }
}
