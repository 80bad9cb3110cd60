#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// A guard for one device whose states pass every check, evaluated the way the appliance does:
/// `auditOK` is the store's lock-free health, a rise is published only after its token is
/// durable, a drop at once with its token following.
private struct GuardedDevice {
    var guardState: DeviceGuard
    let now = ClockReading(monotonicNs: 5_000_000_000, wallNs: 1_795_703_520_000_000_000)
    /// The permit shown on the coil.
    var published = false

    init() {
        let map = DeviceMap(
            device: "crane-01", profile: .port, plc: PLCEndpoint(host: "127.0.0.1", pollMs: 50),
            limits: Limits(maxDriftMs: 200, rearmMs: 0),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational", 1: "fault"]),
            registers: [RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5)],
            intents: [IntentSpec(name: "move_left", coil: 0)])
        guardState = DeviceGuard(map: map)
        let physical = PhysicalState(device: "crane-01", status: "operational", statusRaw: 0,
                                     values: ["position_x": Reading(value: .double(12.5), quality: .good)],
                                     time: now.adding(milliseconds: -50))
        guardState.updatePhysical(physical)
        guardState.updateTwin(TwinState(device: "crane-01", tsNs: physical.time.wallNs - 50_000_000, status: "operational",
                                        values: ["position_x": 12.5], received: now.adding(milliseconds: -40)))
    }

    /// One evaluation; a changed permit is recorded (and published) by the rules above.
    /// Returns the verdict and, for a rise, the acknowledgement it waited for.
    mutating func tick(store: AuditStore) async -> (IntentVerdict, AuditAck?) {
        guardState.evaluate(now: now, auditOK: store.isHealthy)
        let verdict = guardState.verdict(intent: 0)
        guard verdict.permit != published else { return (verdict, nil) }
        let decision = guardState.decision(intent: 0)
        let record = AuditRecord(action: .permitChanged, erin: decision.erin, eraan: ["jis": "jis:crane-01"],
                                 erachter: ["intent": "move_left"], time: now,
                                 timing: verdict.permit ? .gating : .reporting)
        if verdict.permit {
            let ack = await store.submitAndWait(record)
            if ack.isDurable { published = true }
            return (verdict, ack)
        }
        published = false
        store.submit(record)
        return (verdict, nil)
    }
}

@Suite("Audit store feeding the guard")
struct AuditGuardTests {
    /// The disk fails: the store's health turns 0, the guard blocks with AUDIT and the drop is
    /// shown at once (its token held); a rise while the store is unhealthy is impossible. When
    /// the disk works again the store recovers by itself, the guard permits again, and that
    /// rise is shown only with its token durable. The chain holds every step.
    @Test func failingDiskBlocksWithAuditAndRecovers() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(retryMs: 20, hooks: disk.hooks))
        var device = GuardedDevice()

        let (first, firstAck) = await device.tick(store: store)
        #expect(first.permit && first.reason == .ok)
        #expect(firstAck?.isDurable == true && device.published)

        // The disk fails; the next write (any record) finds out.
        disk.failWith.store(EIO, ordering: .releasing)
        _ = await store.submitAndWait(AuditRecord(action: .check, erin: ["device": "crane-01"],
                                                  time: device.now, timing: .gating))
        #expect(!store.isHealthy)
        let (blocked, _) = await device.tick(store: store)
        #expect(!blocked.permit && blocked.reason == .audit)
        #expect(!device.published)
        // Still failing: it stays blocked, nothing rises.
        let (still, stillAck) = await device.tick(store: store)
        #expect(!still.permit && still.reason == .audit && stillAck == nil && !device.published)

        disk.failWith.store(0, ordering: .releasing)
        #expect(await eventually { store.isHealthy })
        let (again, againAck) = await device.tick(store: store)
        #expect(again.permit && again.reason == .ok)
        #expect(againAck?.isDurable == true && device.published)
        store.close()

        let tokens = try fx.tokens()
        let permits = tokens.filter { $0.action == .permitChanged }.map { ($0.erin["allowed"], $0.erin["reason_name"]) }
        #expect(permits.map(\.0) == [true, false, true])
        #expect(permits[1].1?.stringValue == ReasonCode.audit.name)
        let recovered = try #require(tokens.firstIndex { $0.action == .auditRecovered })
        // The drop's token was held through the outage and follows the recovery token.
        let drop = try #require(tokens.firstIndex { $0.action == .permitChanged && $0.erin["allowed"] == false })
        #expect(drop > recovered)
        _ = try fx.verify().get()
    }

    /// The writer falls behind (its fdatasync held while more than `backlogHigh` records wait,
    /// so nothing depends on timing): the guard blocks with AUDIT and shows the drop at once;
    /// nothing rises until the backlog has drained; then the rise is shown with its token
    /// durable, and every record is on the chain.
    @Test func auditBacklogBlocksWithAuditUntilDrained() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(stallMs: 600_000, backlogHigh: 4, hooks: disk.hooks))
        var device = GuardedDevice()
        let (first, firstAck) = await device.tick(store: store)
        #expect(first.permit && firstAck?.isDurable == true && device.published)

        disk.holdSync.store(true, ordering: .releasing)
        for i in 0..<5 { store.submit(record(i, action: .check)) }
        #expect(!store.isHealthy)
        let (blocked, _) = await device.tick(store: store)
        #expect(!blocked.permit && blocked.reason == .audit && !device.published)
        let (still, stillAck) = await device.tick(store: store)
        #expect(!still.permit && still.reason == .audit && stillAck == nil && !device.published)

        disk.holdSync.store(false, ordering: .releasing)
        #expect(await eventually { store.isHealthy })
        let (again, againAck) = await device.tick(store: store)
        #expect(again.permit && again.reason == .ok)
        #expect(againAck?.isDurable == true && device.published)
        store.close()

        let tokens = try fx.tokens()
        let permits = tokens.filter { $0.action == .permitChanged }
        #expect(permits.map { $0.erin["allowed"] } == [true, false, true])
        #expect(permits[1].erin["reason_name"]?.stringValue == ReasonCode.audit.name)
        #expect(tokens.filter { $0.action == .check }.count == 5)
        #expect(tokens.contains { $0.action == .auditRecovered && $0.erin["backlog_episodes"] == 1 })
        _ = try fx.verify().get()
    }
}
