import Foundation
import Logging
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

// The rise/drop rule: evaluation, audit records for rises and drops, identity episodes.
// Runs on the loop thread only.

extension GuardLoop {
    // MARK: Evaluation and the rise/drop rule

    func evaluate(slot s: Int, now: ClockReading, auditOK: Bool, pending: inout Pending) {
        // Identity and signature change only with new states: a tick alone need not look again.
        let newStates = slots[s].guardState.hasUnevaluatedState
        slots[s].guardState.evaluate(now: now, auditOK: auditOK)
        for i in slots[s].published.indices {
            let v = slots[s].guardState.verdict(intent: i)
            if !v.permit {
                if slots[s].published[i] {
                    slots[s].published[i] = false
                    pending.tableChanged = true
                    pending.fallen += 1
                    pending.drops.append((s, i, "blocked"))
                    metrics.countDrop(reason: v.reason)
                } else if slots[s].pendingRise[i] != nil {
                    // The rise never reached the coils; its token is on its way, so a drop follows it.
                    slots[s].pendingRise[i] = nil
                    pending.drops.append((s, i, "blocked before the rise was durable"))
                }
            } else if !slots[s].published[i] && slots[s].pendingRise[i] == nil {
                submitRise(slot: s, intent: i, now: now)
            }
        }
        if newStates { checkIdentity(slot: s, now: now) }
    }

    func submitRise(slot s: Int, intent i: Int, now: ClockReading) {
        nextAuditId += 1
        let id = nextAuditId
        slots[s].pendingRise[i] = id
        pendingAcks[id] = (slots[s].map.device, i)
        let record = permitRecord(slot: s, intent: i, rise: true, why: "every check held for rearm_ms", now: now)
        slots[s].riseRecorded[i] = true
        audit.submit(record) { [weak self] ack in
            self?.submit(.auditAck(id: id, ok: ack.isDurable))
        }
    }

    /// The token of a drop, if a rise token was written before it (so the chain reads rise,
    /// drop, rise … per intent).
    func submitDrop(slot s: Int, intent i: Int, why: String, now: ClockReading) {
        guard let record = dropRecord(slot: s, intent: i, why: why, now: now) else { return }
        audit.submit(record) { [metrics] ack in if !ack.isDurable { metrics.countAuditFailure() } }
    }

    func dropRecord(slot s: Int, intent i: Int, why: String, now: ClockReading) -> AuditRecord? {
        guard slots[s].riseRecorded[i] else { return nil }
        slots[s].riseRecorded[i] = false
        return permitRecord(slot: s, intent: i, rise: false, why: why, now: now)
    }

    func permitRecord(slot s: Int, intent i: Int, rise: Bool, why: String, now: ClockReading) -> AuditRecord {
        let slot = slots[s]
        let decision = slot.guardState.decision(intent: i)
        var erin = decision.erin.objectValue ?? [:]
        erin["coil"] = .int(Int64(slot.map.intents[i].coil))
        erin["permit"] = .bool(rise)
        erin["change"] = .string(rise ? "rise" : "drop")
        return AuditRecord(action: .permitChanged, erin: .object(erin), eraan: eraan(slot), erachter: .object([
            "intent": .string(slot.map.intents[i].name),
            "why": .string(rise ? "permit rise: \(why)" : "permit drop: \(why): \(decision.reason)"),
            "safety_critical": .bool(IndustryProfile.named(slot.map.profile).safetyCritical),
        ]), time: now, timing: rise ? .gating : .reporting)
    }

    func eraan(_ slot: Slot) -> JSONValue {
        .object([
            "device": .string("jis:\(slot.map.device)"),
            "map_file": .string(slot.map.sourceFile),
            "map_sha256": .string(slot.map.sha256),
            "twin_seq": TwinState.seqJSON(slot.guardState.twin?.seq),
        ])
    }

    /// Audits the moment identity registers or the twin signature start failing (once per
    /// episode, not per poll).
    func checkIdentity(slot s: Int, now: ClockReading) {
        var problems: [String] = []
        if let p = slots[s].guardState.physical {
            switch p.identity {
            case .mismatch: problems.append("identity registers: \(p.identity)")
            default: break
            }
        }
        if let t = slots[s].guardState.twin, t.signature == .invalid || (slots[s].map.twinKey != nil && t.signature == .missing) {
            problems.append("twin signature \(t.signature == .invalid ? "invalid" : "missing")")
        }
        let failing = !problems.isEmpty
        if failing && !slots[s].identityFailing {
            let intervalNs = Int64(config.identityAuditIntervalMs) * 1_000_000
            if let last = slots[s].identityAuditedNs, now.monotonicNs - last < intervalNs {
                // Within the interval: the permit blocks all the same; the episode is counted
                // in the next token instead of writing one now.
                slots[s].identityEpisodesFolded += 1
            } else {
                audit.submit(AuditRecord(action: .identityFailed, erin: .object([
                    "device": .string(slots[s].map.device),
                    "problems": .array(problems.map { .string($0) }),
                    "episodes_not_written_before": .int(Int64(slots[s].identityEpisodesFolded)),
                ]), eraan: eraan(slots[s]), erachter: .object([
                    "why": .string("the PLC answering or the twin speaking is not the one the map names"),
                    "safety_critical": .bool(IndustryProfile.named(slots[s].map.profile).safetyCritical),
                ]), time: now), onDurable: nil)
                logger.warning("identity failed", metadata: ["device": "\(slots[s].map.device)", "problems": "\(problems)",
                                                             "episodes_folded": "\(slots[s].identityEpisodesFolded)"])
                slots[s].identityAuditedNs = now.monotonicNs
                slots[s].identityEpisodesFolded = 0
            }
        }
        slots[s].identityFailing = failing
    }
}
