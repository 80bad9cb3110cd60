import Foundation
import Logging
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

// Operator and reload commands, applied on the loop thread in the order they arrived.

extension GuardLoop {
    // MARK: Commands

    func handle(_ command: GuardCommand, now: ClockReading, pending: inout Pending,
                        statusRequests: inout [@Sendable (StatusSnapshot) -> Void]) {
        switch command {
        case .auditAck(let id, let ok):
            guard let (device, intent) = pendingAcks.removeValue(forKey: id) else { return }
            guard let s = slotIndex[device], slots[s].pendingRise.indices.contains(intent),
                  slots[s].pendingRise[intent] == id else { return }
            slots[s].pendingRise[intent] = nil
            if ok {
                if slots[s].guardState.verdict(intent: intent).permit {
                    slots[s].published[intent] = true
                    image.touched.append(s)
                    pending.tableChanged = true
                    metrics.countRise()
                    // That verdict is from the last evaluation, up to a tick old: judge the
                    // device again at this iteration's `now` before the table is built, so a
                    // state that went stale while the token was being written drops the rise
                    // before it reaches the coils.
                    mark(s)
                }
            } else {
                metrics.countAuditFailure()
                slots[s].riseRecorded[intent] = false
                logger.error("audit chain did not make a permit rise durable: permit stays 0",
                             metadata: ["device": "\(device)", "intent": "\(slots[s].map.intents[intent].name)"])
            }
        case .reset(let device, let intent, let client, let done):
            guard let s = slotIndex[device] else { return done(.unknownDevice(device)) }
            var cleared: [String] = []
            if let intent {
                guard let i = slots[s].guardState.intentIndex(named: intent) else {
                    return done(.unknownIntent(device: device, intent: intent))
                }
                guard audit.isHealthy else { return done(.auditFailed("audit store unhealthy")) }
                if slots[s].guardState.reset(intent: i) { cleared = [intent] }
            } else {
                guard audit.isHealthy else { return done(.auditFailed("audit store unhealthy")) }
                cleared = slots[s].guardState.resetAll()
            }
            metrics.countReset()
            if cleared.isEmpty {
                // Nothing was latched: answered and counted, but a flood of these must not
                // flood the chain (docs/operations.md#resets).
                metrics.countNoopReset()
                foldNoopReset(slot: s, device: device, intent: intent, client: client, now: now)
                return done(.done(device: device, cleared: []))
            }
            submitReset(slot: s, device: device, intent: intent, cleared: cleared, client: client, count: nil, now: now)
            logger.notice("reset", metadata: ["device": "\(device)", "cleared": "\(cleared)", "client": "\(client)"])
            mark(s)
            done(.done(device: device, cleared: cleared))
        case .status(let done):
            statusRequests.append(done)
        case .reload(let reload, let done):
            // The reply waits until the new table is published: whoever reloaded (the runtime
            // restarting its poller) may rely on replaced devices' permits being 0 on the coils.
            let result = applyReload(reload, now: now, pending: &pending)
            // Repeats waiting for a tick were read or parsed by the maps just replaced: a new
            // state of each follows within its period.
            let gone = result.replaced + result.removed
            if !gone.isEmpty {
                cond.withLock {
                    for d in gone {
                        inPhysicalRepeats[d] = nil
                        inTwinRepeats[d] = nil
                    }
                }
            }
            pending.tableChanged = true
            pending.afterPublish.append { done(result) }
        }
    }

    // MARK: Resets

    func submitReset(slot s: Int, device: String, intent: String?, cleared: [String], client: String, count: Int?,
                     now: ClockReading) {
        var erin: [String: JSONValue] = [
            "device": .string(device), "intent": intent.map { .string($0) } ?? .null,
            "cleared": .array(cleared.map { .string($0) }), "client": .string(client),
        ]
        var why = "operator reset via the local HTTP API"
        if let count {
            erin["count"] = .int(Int64(count))
            why += "; nothing was latched (repeats from one client within a second are folded into count)"
        }
        audit.submit(AuditRecord(action: .reset, erin: .object(erin), eraan: eraan(slots[s]), erachter: .object([
            "why": .string(why),
            "safety_critical": .bool(IndustryProfile.named(slots[s].map.profile).safetyCritical),
        ]), time: now), onDurable: nil)
    }

    /// A reset that cleared nothing: the first per device, intent and client address in a
    /// second is written at once (with the count folded since the last one); the rest of that
    /// second only count, and are written by `flushNoopResets` on a later tick. Like the
    /// interlock's refused writes (`InterlockAuditor`): every reset is in the chain, as a count.
    func foldNoopReset(slot s: Int, device: String, intent: String?, client: String, now: ClockReading) {
        let key = "\(device)|\(intent ?? "")|\(InterlockAuditor.host(of: client))"
        var entry = noopResets[key] ?? FoldedReset(device: device, intent: intent, client: client)
        entry.count += 1
        entry.client = client
        if entry.lastWrittenNs.map({ now.monotonicNs - $0 >= FoldedReset.intervalNs }) ?? true {
            submitReset(slot: s, device: device, intent: intent, cleared: [], client: client, count: entry.count, now: now)
            entry.count = 0
            entry.lastWrittenNs = now.monotonicNs
        }
        noopResets[key] = entry
    }

    /// Writes the folded no-op resets whose second is over (`all`: every one, at stop) and
    /// forgets the keys that have been quiet for a second.
    func flushNoopResets(now: ClockReading, all: Bool) {
        for (key, var e) in noopResets {
            let due = all || e.lastWrittenNs.map { now.monotonicNs - $0 >= FoldedReset.intervalNs } ?? true
            guard due else { continue }
            if e.count > 0, let s = slotIndex[e.device] {
                submitReset(slot: s, device: e.device, intent: e.intent, cleared: [], client: e.client, count: e.count, now: now)
                e.count = 0
                e.lastWrittenNs = now.monotonicNs
                noopResets[key] = e
            } else {
                noopResets[key] = nil
            }
        }
    }

    func applyReload(_ reload: GuardReload, now: ClockReading, pending: inout Pending) -> GuardReloadResult {
        var result = GuardReloadResult()
        var newSlots: [Slot] = []
        let newNames = Set(reload.maps.map(\.device))
        for map in reload.maps {
            if let s = slotIndex[map.device] {
                if slots[s].map == map {
                    newSlots.append(slots[s])
                    result.kept.append(map.device)
                } else {
                    result.replaced.append(map.device)
                    newSlots.append(Slot(map: map))
                    dropAllForReload(slot: s, why: "map replaced", now: now, pending: &pending)
                }
            } else {
                result.added.append(map.device)
                newSlots.append(Slot(map: map))
            }
        }
        for (s, slot) in slots.enumerated() where !newNames.contains(slot.map.device) {
            result.removed.append(slot.map.device)
            dropAllForReload(slot: s, why: "device removed from the maps", now: now, pending: &pending)
        }
        // Acks for rises of replaced or removed devices no longer match anything.
        pendingAcks = pendingAcks.filter { result.kept.contains($0.value.device) }
        slots = newSlots
        slotIndex = Dictionary(uniqueKeysWithValues: slots.enumerated().map { ($1.map.device, $0) })
        layout = reload.layout
        image.stale = true
        tickNs = Self.tickNs(reload.maps)
        nextTickNs = min(nextTickNs, now.monotonicNs + tickNs)
        pending.tableChanged = true
        // The lists name slots of the old array: every new slot is evaluated instead.
        marked.removeAll(keepingCapacity: true)
        suspects.removeAll(keepingCapacity: true)
        for s in slots.indices { slots[s].evaluate = true; slots[s].suspect = false }
        allMarked = true
        return result
    }

    /// Before a slot is replaced: its published permits go with it, and their drops are audited
    /// (the new table, published in this iteration, no longer carries them).
    func dropAllForReload(slot s: Int, why: String, now: ClockReading, pending: inout Pending) {
        for i in slots[s].published.indices {
            if slots[s].published[i] { metrics.countDrop(reason: .noPhysical) }
            slots[s].published[i] = false
            slots[s].pendingRise[i] = nil
            // Built now, while the slot exists; submitted after the new table is published.
            if let r = dropRecord(slot: s, intent: i, why: why, now: now) { pending.records.append(r) }
        }
    }
}

/// No-op resets from one client for one device and intent, not yet written.
struct FoldedReset {
    static let intervalNs: Int64 = 1_000_000_000
    var device: String
    var intent: String?
    /// The last client (address and port) that sent one.
    var client: String
    var count = 0
    /// When the last token for this key was written; nil: never.
    var lastWrittenNs: Int64?
}
