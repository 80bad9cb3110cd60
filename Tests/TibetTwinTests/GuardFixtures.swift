@testable import TibetTwin

/// A crane-like device under any profile, and states that pass every check, for the guard tests.
struct Fixture {
    let profile: IndustryProfile
    var map: DeviceMap
    /// The moment of the evaluation.
    var now: ClockReading

    static let t0: Int64 = 1_795_703_520_000_000_000  // 2026-11-26T14:32:00Z

    init(_ id: ProfileID = .port, rearmMs: Double? = nil, twinKey: String? = nil, latch: Bool = false) {
        profile = IndustryProfile.named(id)
        let drift = Double(profile.maxDriftMs)
        map = DeviceMap(
            device: "crane-01", profile: id, plc: PLCEndpoint(host: "127.0.0.1", pollMs: 50),
            limits: Limits(maxDriftMs: drift, rearmMs: rearmMs ?? 0),
            identity: [IdentitySpec(register: RegisterSpec(name: "serial", address: 9000, type: .uint32), expect: .uint(4711))],
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                               values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
            registers: [
                RegisterSpec(name: "position_x", address: 100, type: .float32, unit: "m", tolerance: 0.5),
                RegisterSpec(name: "load_kg", address: 102, type: .uint32, order: .CDAB, tolerance: 100),
                RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
                RegisterSpec(name: "wind_speed", table: .input, address: 4, type: .int16, scale: 0.1),
            ],
            twinKey: twinKey,
            intents: [
                IntentSpec(name: "move_left", coil: 0, latch: latch),
                IntentSpec(name: "hoist", coil: 1, requires: [
                    Requirement(name: "load_kg", max: 40000), Requirement(name: "hoist_locked", eq: 0),
                ]),
                IntentSpec(name: "inspect", coil: 2, allowedStatuses: ["operational", "maintenance"]),
            ])
        now = ClockReading(monotonicNs: 5_000_000_000, wallNs: Fixture.t0)
    }

    var maxDriftMs: Double { map.limits.maxDriftMs }
    var maxAgeMs: Double { map.limits.maxAgeMs }

    /// A physical state that passes: fresh (a quarter of max_age old), operational, all Good.
    func physical(status: String? = "operational", load: Double = 2500, hoistLocked: Bool = false,
                  ageMs: Double? = nil) -> PhysicalState {
        PhysicalState(
            device: "crane-01", status: status, statusRaw: 0,
            values: [
                "position_x": Reading(value: .double(12.5), quality: .good),
                "load_kg": Reading(value: .uint(UInt64(load)), quality: .good),
                "hoist_locked": Reading(value: .bool(hoistLocked), quality: .good),
                "wind_speed": Reading(value: .double(3.2), quality: .good),
            ],
            identity: .ok, time: now.adding(milliseconds: -(ageMs ?? maxAgeMs / 4)))
    }

    /// A twin state that passes: the same values, `ts` a quarter of max_drift before the
    /// physical time, received a fifth of max_age ago.
    func twin(status: String = "operational", values: [String: Double]? = nil, tsOffsetMs: Double? = nil,
              ageMs: Double? = nil, predicted: Bool = false, signature: SignatureCheck? = nil,
              relativeTo p: PhysicalState? = nil) -> TwinState {
        let p = p ?? physical()
        let ts = p.physicalWallNs + Int64((tsOffsetMs ?? -maxDriftMs / 4) * 1_000_000)
        return TwinState(
            device: "crane-01", tsNs: ts, seq: 1, status: status,
            values: values ?? ["position_x": 12.5, "load_kg": 2500, "hoist_locked": 0, "wind_speed": 3.2],
            predicted: predicted, modelVersion: "4.2",
            signature: signature ?? (map.twinKey == nil ? .notRequired : .valid),
            received: now.adding(milliseconds: -(ageMs ?? maxAgeMs / 5)))
    }

    /// One evaluation of fresh states at `now`.
    func evaluate(_ p: PhysicalState?, _ t: TwinState?, auditOK: Bool = true) -> DeviceGuard {
        var g = DeviceGuard(map: map)
        if let p { g.updatePhysical(p) }
        if let t { g.updateTwin(t) }
        g.evaluate(now: now, auditOK: auditOK)
        return g
    }
}
