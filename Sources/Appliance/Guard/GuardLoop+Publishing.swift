import Foundation
import Logging
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

// Building and publishing the permit table, and the status snapshot. Loop thread only.

extension GuardLoop {
    // MARK: Publishing

    func deviceReason(_ slot: Slot) -> ReasonCode {
        for i in slot.published.indices where !slot.published[i] {
            let v = slot.guardState.verdict(intent: i)
            return v.permit ? .audit : v.reason
        }
        return .ok
    }

    func buildTable(healthy: Bool) -> PermitTable {
        var devices: [String: DeviceDiagnostics] = [:]
        devices.reserveCapacity(slots.count)
        var blocked: [ReasonCode: Int] = [:]
        var permits = 0, intents = 0
        for slot in slots {
            let g = slot.guardState
            var names = Set<String>()
            for i in slot.published.indices {
                intents += 1
                if slot.published[i] {
                    names.insert(slot.map.intents[i].name)
                    permits += 1
                } else {
                    let v = g.verdict(intent: i)
                    blocked[v.permit ? .audit : v.reason, default: 0] += 1
                }
            }
            devices[slot.map.device] = DeviceDiagnostics(
                reason: g.lastEvaluation == nil ? nil : deviceReason(slot), driftMs: g.lastDriftMs,
                physicalAgeMs: g.lastPhysicalAgeMs, twinAgeMs: g.lastTwinAgeMs, permits: names,
                blockCount: g.blockCount)
        }
        metrics.setTable(permits: permits, intents: intents, devices: slots.count, healthy: healthy,
                         blockedByReason: blocked)
        return PermitTable(layout: layout, heartbeat: heartbeat, healthy: healthy, devices: devices)
    }

    func publishTable(_ table: PermitTable) {
        lastPublished = table
        publish(table)
    }

    func permitTableJSON() -> JSONValue {
        var devs: [String: JSONValue] = [:]
        for slot in slots {
            var intents: [String: JSONValue] = [:]
            for (i, spec) in slot.map.intents.enumerated() {
                let v = slot.guardState.verdict(intent: i)
                intents[spec.name] = .object([
                    "coil": .int(Int64(spec.coil)), "permit": .bool(slot.published[i]),
                    "reason_code": .int(Int64((slot.published[i] ? ReasonCode.ok : v.permit ? .audit : v.reason).rawValue)),
                ])
            }
            devs[slot.map.device] = .object(["intents": .object(intents), "map_sha256": .string(slot.map.sha256),
                                             "block_count": .int(Int64(truncatingIfNeeded: slot.guardState.blockCount))])
        }
        return .object(["heartbeat": .int(Int64(heartbeat)), "healthy": .bool(audit.isHealthy), "devices": .object(devs)])
    }

    // MARK: Status

    func snapshot(now: ClockReading) -> StatusSnapshot {
        var devices: [DeviceStatus] = []
        for slot in slots {
            let g = slot.guardState
            var intents: [IntentStatus] = []
            var failing: [[String]] = []
            var inputProblems: [String] = []
            for (i, spec) in slot.map.intents.enumerated() {
                let v = g.verdict(intent: i)
                let decision = g.decision(intent: i)
                let reasonCode: ReasonCode
                let reason: String
                var details: [String] = []
                if slot.published[i] {
                    reasonCode = .ok
                    reason = decision.reason
                } else if v.permit {
                    reasonCode = .audit
                    reason = "BLOCKED: waiting for the audit chain to make the rise durable"
                    details = ["waiting for the audit chain to make the rise durable"]
                } else {
                    reasonCode = v.reason
                    reason = decision.reason
                    details = decision.failing.map(\.detail)
                }
                if i == 0 {
                    inputProblems = decision.failing.filter { Self.inputChecks.contains($0.check) }.map(\.detail)
                }
                failing.append(details)
                intents.append(IntentStatus(intent: spec.name, coil: spec.coil, permit: slot.published[i],
                                            reasonCode: reasonCode, reason: reason, latched: g.isLatched(intent: i)))
            }
            // The reason once per device: the failing checks every intent shares; each intent
            // keeps only its own conditions beside it.
            let shared = failing.dropFirst().reduce(failing.first ?? []) { common, next in common.filter(next.contains) }
            for i in intents.indices { intents[i].conditions = failing[i].filter { !shared.contains($0) } }
            let p = g.latestPhysical, t = g.latestTwin
            if g.lastEvaluation == nil { inputProblems = ["not evaluated yet"] }
            var values: [ValueStatus] = []
            for r in slot.map.registers {
                let reading = p?.values[r.name]
                values.append(ValueStatus(name: r.name, physical: reading?.value, quality: reading?.quality,
                                          twin: t?.values[r.name], unit: r.unit, tolerance: r.tolerance, precision: r.precision))
            }
            devices.append(DeviceStatus(
                device: slot.map.device, intents: intents, driftMs: g.lastDriftMs, physicalAgeMs: g.lastPhysicalAgeMs,
                twinAgeMs: g.lastTwinAgeMs, physicalStatus: p?.status, twinStatus: t?.status,
                identity: p.map { "\($0.identity)" }, twinSeq: t?.seq, blockCount: g.blockCount, values: values,
                reasonCode: g.lastEvaluation == nil ? nil : deviceReason(slot),
                reason: shared.isEmpty ? nil : shared.joined(separator: "; "),
                physicalError: p == nil ? "no poll answer yet" : p?.pollError, inputProblems: inputProblems,
                maxAgeMs: slot.map.limits.maxAgeMs, maxDriftMs: slot.map.limits.maxDriftMs))
        }
        let auditOK = audit.isHealthy
        return StatusSnapshot(node: config.node, healthy: auditOK && isReady, auditHealthy: auditOK,
                              heartbeat: heartbeat, wallNs: now.wallNs, devices: devices)
    }

    /// The checks on a device's inputs (the PLC, the twin feed, who they are): while one fails
    /// the appliance is not ready (`/readyz`). Drift, status and value disagreement are
    /// verdicts on good inputs, not input failures.
    static let inputChecks: Set<GuardCheck> = [.physical, .comms, .physicalAge, .twin, .twinAge, .identity]
}
