/// The deadly scenario of `tibet-twin info`, judged by the real rule: the crane's PLC reports
/// FAULT at 14:32:01.003 while the twin, last heard at 14:32:00.500, still says operational.
public enum DeadlyScenario {
    /// The crane's map: port profile (200 ms drift and age), one compared value, one intent.
    public static let map = DeviceMap(
        device: "crane-01", profile: .port, plc: PLCEndpoint(host: "10.0.0.21", pollMs: 50),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                           values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
        registers: [RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100)],
        intents: [IntentSpec(name: "move_left", coil: 0)])

    /// 2026-11-26T14:32:01.003Z: the PLC answers FAULT, and the twin asks to move.
    public static let faultNs: Int64 = 1_795_703_521_003_000_000
    /// 2026-11-26T14:32:00.500Z: the twin's last state, operational.
    public static let twinNs: Int64 = 1_795_703_520_500_000_000

    /// The guard's verdict at the moment of the fault.
    public static func decision() -> SyncDecision {
        var g = DeviceGuard(map: map)
        let at = ClockReading(monotonicNs: faultNs, wallNs: faultNs)
        g.updatePhysical(PhysicalState(device: "crane-01", status: "fault",
                                       values: ["load_kg": Reading(value: .uint(2500), quality: .good)], time: at))
        g.updateTwin(TwinState(device: "crane-01", tsNs: twinNs, seq: 1042, status: "operational",
                               values: ["load_kg": 2500], received: ClockReading(monotonicNs: twinNs, wallNs: twinNs)))
        g.evaluate(now: at, auditOK: true)
        return g.decision(intent: 0)
    }
}
