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
                    pending.tableChanged = true
                    metrics.countRise()
                    // That verdict is from the last evaluation, up to a tick old: judge the
                    // device again at this iteration's `now` before the table is built, so a
                    // state that went stale while the token was being written drops the rise
                    // before it reaches the coils.
                    slots[s].evaluate = true
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
            audit.submit(AuditRecord(action: .reset, erin: .object([
                "device": .string(device), "intent": intent.map { .string($0) } ?? .null,
                "cleared": .array(cleared.map { .string($0) }), "client": .string(client),
            ]), eraan: eraan(slots[s]), erachter: .object([
                "why": .string("operator reset via the local HTTP API"),
                "safety_critical": .bool(IndustryProfile.named(slots[s].map.profile).safetyCritical),
            ]), time: now), onDurable: nil)
            metrics.countReset()
            logger.notice("reset", metadata: ["device": "\(device)", "cleared": "\(cleared)", "client": "\(client)"])
            slots[s].evaluate = true
            done(.done(device: device, cleared: cleared))
        case .status(let done):
            statusRequests.append(done)
        case .reload(let reload, let done):
            // The reply waits until the new table is published: whoever reloaded (the runtime
            // restarting its poller) may rely on replaced devices' permits being 0 on the coils.
            let result = applyReload(reload, now: now, pending: &pending)
            pending.tableChanged = true
            pending.afterPublish.append { done(result) }
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
        tickNs = Self.tickNs(reload.maps)
        nextTickNs = min(nextTickNs, now.monotonicNs + tickNs)
        pending.tableChanged = true
        for s in slots.indices { slots[s].evaluate = true }
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
