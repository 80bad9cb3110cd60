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

    static func deviceReason(_ slot: Slot) -> ReasonCode {
        for i in slot.published.indices where !slot.published[i] {
            let v = slot.guardState.verdict(intent: i)
            return v.permit ? .audit : v.reason
        }
        return .ok
    }

    /// `deviceReason` of `slots[s]`, read in place.
    func deviceReason(slot s: Int) -> ReasonCode {
        for i in slots[s].published.indices where !slots[s].published[i] {
            let v = slots[s].guardState.verdict(intent: i)
            return v.permit ? .audit : v.reason
        }
        return .ok
    }

    // The permit image is kept between publications and rewritten in place, device by device:
    // a twin line that drops one device's permit rewrites that device's block and coils, not
    // the table of every device (docs/architecture.md#publishing-the-permits). Every tick
    // rewrites all blocks (the ages move), without allocating.

    /// Builds the image from scratch for the current layout and slots: the arrays, and where
    /// each slot's block and coils are (flat integer arrays, so rewriting a slot retains nothing).
    func rebuildImage() {
        image.bits = [UInt8](repeating: 0, count: layout.coilCount)
        image.registers = [UInt16](repeating: 0, count: layout.registerCount)
        let byName = Dictionary(layout.devices.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        image.registerBase = []
        image.intentStart = []
        image.intentCoil = []
        image.intentBit = []
        image.intentMap = []
        for slot in slots {
            image.intentStart.append(image.intentCoil.count)
            guard let d = byName[slot.map.device] else {
                image.registerBase.append(-1)
                continue
            }
            image.registerBase.append(Int(d.registerBase))
            for li in d.intents {
                image.intentCoil.append(Int(li.coil))
                image.intentBit.append(li.bit)
                image.intentMap.append(slot.map.intents.firstIndex { $0.name == li.name } ?? -1)
            }
        }
        image.intentStart.append(image.intentCoil.count)
        image.stale = false
        withImage { bits, regs in for s in slots.indices { writeSlot(s, &bits, &regs) } }
    }

    /// Lends the image's two arrays out of `image` (one exclusive access each, and no copy:
    /// they are moved, not shared).
    func withImage(_ body: (inout [UInt8], inout [UInt16]) -> Void) {
        var bits: [UInt8] = [], regs: [UInt16] = []
        swap(&bits, &image.bits)
        swap(&regs, &image.registers)
        body(&bits, &regs)
        swap(&bits, &image.bits)
        swap(&regs, &image.registers)
    }

    /// Rewrites one slot's block and coils from its guard state and published permits.
    func writeSlot(_ s: Int, _ bits: inout [UInt8], _ regs: inout [UInt16]) {
        // Everything is read in place through `slots[s]` and the flat place arrays: this runs
        // for every device on every tick.
        let base = image.registerBase[s]
        guard base >= 0 else { return }
        let evaluated = slots[s].guardState.lastEvaluation != nil
        var mask: UInt16 = 0
        for j in image.intentStart[s]..<image.intentStart[s + 1] {
            let i = image.intentMap[j]
            let on = evaluated && i >= 0 && slots[s].published[i]
            bits[image.intentCoil[j]] = on ? 1 : 0
            if on { mask |= 1 << UInt16(image.intentBit[j]) }
        }
        PermitTable.encodeBlock(registerBase: base, reason: evaluated ? deviceReason(slot: s) : nil,
                                driftMs: slots[s].guardState.lastDriftMs, physicalAgeMs: slots[s].guardState.lastPhysicalAgeMs,
                                twinAgeMs: slots[s].guardState.lastTwinAgeMs, blockCount: slots[s].guardState.blockCount,
                                permitBits: mask, registers: &regs)
    }

    /// Brings the image up to date — every slot on a tick, else the slots `touched` since the
    /// last publication — and publishes it.
    func publishImage(healthy: Bool, tick: Bool) {
        if image.stale {
            rebuildImage()
        } else if tick {
            withImage { bits, regs in for s in slots.indices { writeSlot(s, &bits, &regs) } }
        } else {
            withImage { bits, regs in for s in image.touched { writeSlot(s, &bits, &regs) } }
        }
        image.touched.removeAll(keepingCapacity: true)
        PermitTable.encodeHeader(layout: layout, heartbeat: heartbeat, healthy: healthy, registers: &image.registers)
        if tick { updateTableMetrics(healthy: healthy) }
        let table = PermitTable(layout: layout, bits: image.bits, registers: image.registers)
        // Debug builds (every test) hold the in-place image to the table built whole, except
        // the diagnostics of untouched devices between ticks, which are as of their last write.
        assert(agreesWithFullTable(table, healthy: healthy, tick: tick), "the in-place permit image differs from the full encoding")
        publishTable(table)
    }

    /// Slots evaluated between two early publications, at most, while drops keep coming.
    static let earlyPublishEvery = 64

    /// Publishes the slots touched so far in this iteration, mid-iteration, because a permit
    /// fell in one of them: the coils drop before the rest of the devices are evaluated. The
    /// iteration still publishes at its end (the ticks' full rewrite, the other slots).
    ///
    /// Only slots already evaluated in this iteration (or not to be evaluated in it) are
    /// written: a rise acknowledged in this iteration is judged again at this iteration's
    /// `now` before it may reach the coils, so a slot still waiting for that evaluation
    /// (`evaluate` still set) stays as last published until the end.
    func publishFallenNow(healthy: Bool) {
        guard !image.stale else { return }  // a reload's rebuild publishes at the end
        var later: [Int] = []
        withImage { bits, regs in
            for s in image.touched {
                if slots[s].evaluate {
                    later.append(s)
                } else {
                    writeSlot(s, &bits, &regs)
                }
            }
        }
        image.touched.removeAll(keepingCapacity: true)
        image.touched.append(contentsOf: later)
        PermitTable.encodeHeader(layout: layout, heartbeat: heartbeat, healthy: healthy, registers: &image.registers)
        let table = PermitTable(layout: layout, bits: image.bits, registers: image.registers)
        assert(noCoilAbovePublished(table), "an early publication shows a permit the guard has not published")
        publishTable(table)
    }

    /// Every coil at 1 belongs to an intent whose permit is published (debug builds): what an
    /// early publication must never break, while slots held back may still show an older 0.
    func noCoilAbovePublished(_ table: PermitTable) -> Bool {
        for s in slots.indices {
            for j in image.intentStart[s]..<image.intentStart[s + 1] where table.bits[image.intentCoil[j]] == 1 {
                let i = image.intentMap[j]
                if i < 0 || !slots[s].published[i] { return false }
            }
        }
        return true
    }

    /// The coils always, and on a tick everything, equal the table encoded whole (debug builds).
    func agreesWithFullTable(_ table: PermitTable, healthy: Bool, tick: Bool) -> Bool {
        let full = fullTable(healthy: healthy)
        return tick ? table == full : table.bits == full.bits
    }

    /// The table encoded whole from every slot (the debug-build oracle for the in-place image).
    func fullTable(healthy: Bool) -> PermitTable {
        var devices: [String: DeviceDiagnostics] = [:]
        for slot in slots {
            let g = slot.guardState
            var names = Set<String>()
            for i in slot.published.indices where slot.published[i] { names.insert(slot.map.intents[i].name) }
            devices[slot.map.device] = DeviceDiagnostics(
                reason: g.lastEvaluation == nil ? nil : Self.deviceReason(slot), driftMs: g.lastDriftMs,
                physicalAgeMs: g.lastPhysicalAgeMs, twinAgeMs: g.lastTwinAgeMs, permits: names, blockCount: g.blockCount)
        }
        return PermitTable(layout: layout, heartbeat: heartbeat, healthy: healthy, devices: devices)
    }

    /// Permits, intents and blocked intents by reason, for `/metrics` (on ticks only).
    func updateTableMetrics(healthy: Bool) {
        for k in image.blockedByReason.indices { image.blockedByReason[k] = 0 }
        var permits = 0, intents = 0
        for s in slots.indices {
            for i in slots[s].published.indices {
                intents += 1
                if slots[s].published[i] {
                    permits += 1
                } else {
                    let v = slots[s].guardState.verdict(intent: i)
                    let r = v.permit ? ReasonCode.audit : v.reason
                    image.blockedByReason[Int(r.rawValue)] += 1
                }
            }
        }
        metrics.setTable(permits: permits, intents: intents, devices: slots.count, healthy: healthy,
                         blockedByCode: image.blockedByReason)
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

    /// The status of `slots` (a copy the loop handed over): built off the loop thread, so
    /// explaining every device's every intent never delays an evaluation.
    static func snapshot(slots: [Slot], node: String, auditOK: Bool, ready: Bool, heartbeat: UInt16,
                         now: ClockReading) -> StatusSnapshot {
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
                var vs = ValueStatus(name: r.name, physical: reading?.value, quality: reading?.quality,
                                     twin: t?.values[r.name], unit: r.unit, tolerance: r.tolerance, precision: r.precision)
                vs.twinQuality = t?.quality?.values[r.name]
                values.append(vs)
            }
            var status = DeviceStatus(
                device: slot.map.device, intents: intents, driftMs: g.lastDriftMs, physicalAgeMs: g.lastPhysicalAgeMs,
                twinAgeMs: g.lastTwinAgeMs, physicalStatus: p?.status, twinStatus: t?.status,
                identity: p.map { "\($0.identity)" }, twinSeq: t?.seq, blockCount: g.blockCount, values: values,
                reasonCode: g.lastEvaluation == nil ? nil : Self.deviceReason(slot),
                reason: shared.isEmpty ? nil : shared.joined(separator: "; "),
                physicalError: p == nil ? "no poll answer yet" : p?.pollError, inputProblems: inputProblems,
                maxAgeMs: slot.map.limits.maxAgeMs, maxDriftMs: slot.map.limits.maxDriftMs)
            status.twinQuality = t?.quality
            devices.append(status)
        }
        return StatusSnapshot(node: node, healthy: auditOK && ready, auditHealthy: auditOK,
                              heartbeat: heartbeat, wallNs: now.wallNs, devices: devices)
    }

    /// The checks on a device's inputs (the PLC, the twin feed, who they are): while one fails
    /// the appliance is not ready (`/readyz`). Drift, status and value disagreement are
    /// verdicts on good inputs, not input failures.
    static let inputChecks: Set<GuardCheck> = [.physical, .comms, .physicalAge, .twin, .twinAge, .identity]
}
