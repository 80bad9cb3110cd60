import Platform
import Synchronization
import TibetTwin

/// Turns the interlock server's events (refused writes, refused clients) into audit tokens
/// (docs/interlock.md, docs/audit.md: `write_rejected`, `client_refused`, with the client's address).
///
/// Every event is counted in the chain, but a flood cannot flood it: per client address and
/// kind, the first event of a second is written at once and the rest of that second are
/// folded into the next token's `count` (written with the next event after the second, or by
/// `flush`, which the runtime calls every second). An attacker hammering writes therefore
/// costs one token per second, not one per frame, and cannot push the audit store into the
/// backlog that would block every permit with `AUDIT`.
package final class InterlockAuditor: Sendable {
    struct Pending {
        var count: UInt64
        /// When the last token for this key was written; nil: never.
        var lastWrittenNs: Int64?
        var detail: JSONValue
        var action: TokenAction
    }

    let audit: any AuditTrail
    let clock: any TimeSource
    let node: String
    let intervalNs: Int64
    let pending = Mutex<[String: Pending]>([:])

    package init(audit: any AuditTrail, node: String, clock: any TimeSource = SystemTimeSource(),
                intervalMs: Int = 1000) {
        self.audit = audit
        self.node = node
        self.clock = clock
        self.intervalNs = Int64(intervalMs) * 1_000_000
    }

    /// Records one event (called on the interlock thread; never blocks beyond a short lock).
    package func record(_ event: InterlockEvent) {
        let now = clock.now()
        let key: String, action: TokenAction, detail: JSONValue
        switch event {
        case .writeRejected(let client, let unit, let function, let address, let count):
            key = "w|\(Self.host(of: client))|\(function)"
            action = .writeRejected
            detail = .object([
                "client": .string(client), "unit": .int(Int64(unit)), "function": .int(Int64(function)),
                "address": address.map { .int(Int64($0)) } ?? .null, "quantity": count.map { .int(Int64($0)) } ?? .null,
                "answer": .string("exception 1 (illegal function): the interlock is read-only"),
            ])
        case .clientRefused(let client, let reason):
            key = "c|\(Self.host(of: client))|\(reason)"
            action = .clientRefused
            detail = .object(["client": .string(client), "reason": .string(reason)])
        case .mqttCommandRefused(let broker, let topic, let metrics, let why):
            key = "m|\(topic)|\(why)"
            action = .writeRejected
            detail = .object([
                "client": .string("mqtt:\(broker)"), "topic": .string(topic), "reason": .string(why),
                "metrics": .array(metrics.map { .string($0) }),
                "answer": .string("ignored: the published permits are read-only; the permit coil is the only control path"),
            ])
        }
        let write: (UInt64, JSONValue)? = pending.withLock { p in
            var entry = p[key] ?? Pending(count: 0, lastWrittenNs: nil, detail: detail, action: action)
            entry.count += 1
            entry.detail = detail
            if entry.lastWrittenNs.map({ now.monotonicNs - $0 >= intervalNs }) ?? true {
                let n = entry.count
                entry.count = 0
                entry.lastWrittenNs = now.monotonicNs
                p[key] = entry
                return (n, detail)
            }
            p[key] = entry
            return nil
        }
        if let (n, d) = write { submit(action: action, detail: d, count: n, now: now) }
    }

    /// Writes the folded counts that are older than the interval.
    package func flush() {
        let now = clock.now()
        let due: [(TokenAction, JSONValue, UInt64)] = pending.withLock { p in
            var out: [(TokenAction, JSONValue, UInt64)] = []
            for (k, var e) in p where e.count > 0 && e.lastWrittenNs.map({ now.monotonicNs - $0 >= intervalNs }) ?? true {
                out.append((e.action, e.detail, e.count))
                e.count = 0
                e.lastWrittenNs = now.monotonicNs
                p[k] = e
            }
            return out
        }
        for (a, d, n) in due { submit(action: a, detail: d, count: n, now: now) }
    }

    private func submit(action: TokenAction, detail: JSONValue, count: UInt64, now: ClockReading) {
        var erin = detail.objectValue ?? [:]
        erin["count"] = .int(Int64(clamping: count))
        audit.submit(AuditRecord(action: action, erin: .object(erin), eraan: .object(["interlock": .string("jis:\(node)")]),
                                 erachter: .object([
                                    "why": .string(erin["topic"] != nil
                                        ? "an MQTT command tried to write to the read-only permit publisher"
                                        : action == .writeRejected
                                        ? "a client tried to write to the read-only permit server"
                                        : "a client outside interlock.allow or beyond max_clients connected"),
                                    "safety_critical": .bool(true),
                                 ]), time: now), onDurable: nil)
    }

    /// `10.0.0.5:50122` → `10.0.0.5`, `[::1]:5` → `::1`.
    static func host(of client: String) -> String {
        if client.hasPrefix("["), let close = client.firstIndex(of: "]") {
            return String(client[client.index(after: client.startIndex)..<close])
        }
        if let colon = client.lastIndex(of: ":"), client.firstIndex(of: ":") == colon {
            return String(client[..<colon])
        }
        return client
    }
}
