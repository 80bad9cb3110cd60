import Testing
import Foundation
import Synchronization
import TibetTwin
@testable import Appliance
import CLinux
import InMemoryLogging
import Logging
import Platform
import TestSupport

/// One ordered log of what the guard loop did to the outside world: tables published and
/// records submitted, so a test can check that a drop reached the coils before its token.
final class LoopRecorder: @unchecked Sendable {
    enum Event {
        case published(PermitTable)
        case submitted(AuditRecord)
    }
    private let lock = NSCondition()
    private var events: [Event] = []

    func add(_ e: Event) { lock.lock(); events.append(e); lock.broadcast(); lock.unlock() }
    var all: [Event] { lock.lock(); defer { lock.unlock() }; return events }
    var tables: [PermitTable] { all.compactMap { if case .published(let t) = $0 { return t } else { return nil } } }
    var records: [AuditRecord] { all.compactMap { if case .submitted(let r) = $0 { return r } else { return nil } } }

    /// Waits (liveness bound) until the latest published table satisfies `ok`. Suspends
    /// between looks: a blocking wait would hold one of the two cooperative threads.
    @discardableResult
    func waitTable(timeout: Double = 5, _ ok: (PermitTable) -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let t = tables.last, ok(t) { return true }
            if Date() > deadline { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    func waitRecord(timeout: Double = 5, _ ok: (AuditRecord) -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if records.contains(where: ok) { return true }
            if Date() > deadline { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// An audit trail whose health and acknowledgements the test controls (the decision logic of
/// the loop is what is tested here; `AuditStore` has its own tests over real files, and the
/// end-to-end tests run the two together).
final class ScriptedAudit: AuditTrail, @unchecked Sendable {
    let recorder: LoopRecorder
    let healthy = Atomic<Bool>(true)
    let holdGating = Atomic<Bool>(false)
    private let held = Mutex<[@Sendable (AuditAck) -> Void]>([])

    init(recorder: LoopRecorder) { self.recorder = recorder }

    var isHealthy: Bool { healthy.load(ordering: .relaxed) }

    func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)?) {
        recorder.add(.submitted(record))
        guard let onDurable else { return }
        if record.timing == .gating && holdGating.load(ordering: .relaxed) {
            held.withLock { $0.append(onDurable) }
        } else {
            onDurable(AuditAck(tokenId: "t", contentHash: "h", error: nil))
        }
    }

    /// Acknowledges every held record as durable.
    func release() {
        let acks = held.withLock { h -> [@Sendable (AuditAck) -> Void] in defer { h.removeAll() }; return h }
        for a in acks { a(AuditAck(tokenId: "t", contentHash: "h", error: nil)) }
    }

    var heldCount: Int { held.withLock { $0.count } }
}

let loopMapYAML = """
    device: crane-01
    profile: port
    plc: {host: 127.0.0.1, port: 1502, unit: 1, poll_ms: 50, timeout_ms: 100}
    limits: {max_drift_ms: 400, max_age_ms: 400, rearm_ms: 20}
    status: {address: 0, table: holding, type: uint16, values: {0: operational, 1: fault}}
    registers:
      - {name: load_kg, address: 102, type: uint32, tolerance: 100}
    intents:
      move_left: {coil: 0}
      hoist: {coil: 1, latch: true}
    """

func loopMap(_ yaml: String = loopMapYAML, sha: String = "a") throws -> DeviceMap {
    var m = try MapLoader.parse(yaml: yaml, file: "test.yaml")
    m.sha256 = sha
    return m
}

/// A guard loop with a scripted audit and a thread that keeps feeding physical and twin states
/// (every 30 ms, fresh) so the device stays in sync until the test changes what is fed.
final class LoopHarness: @unchecked Sendable {
    let recorder = LoopRecorder()
    let audit: ScriptedAudit
    let loop: GuardLoop
    let clock = SystemTimeSource()
    let feeding = Mutex<(physicalStatus: String, twinStatus: String, load: Double, twin: Bool, devices: [String])>(
        ("operational", "operational", 1000, true, ["crane-01"]))
    let running = Atomic<Bool>(true)
    let seq = Atomic<UInt64>(0)

    init(maps: [DeviceMap], identityAuditIntervalMs: Int = 60_000) throws {
        audit = ScriptedAudit(recorder: recorder)
        let layout = try InterlockLayout(maps: maps)
        let recorder = self.recorder
        loop = GuardLoop(configuration: GuardLoop.Configuration(node: "test", checkpointS: 0,
                                                                identityAuditIntervalMs: identityAuditIntervalMs),
                         maps: maps, layout: layout,
                         audit: audit, metrics: ApplianceMetrics()) { table in recorder.add(.published(table)) }
    }

    func start() throws {
        try loop.start()
        let t = Thread { [self] in
            while running.load(ordering: .relaxed) {
                feedOnce()
                usleep(30_000)
            }
        }
        t.start()
    }

    func feedOnce() {
        let f = feeding.withLock { $0 }
        let now = clock.now()
        for d in f.devices {
            loop.submit(physical: PhysicalState(device: d, status: f.physicalStatus,
                                                values: ["load_kg": Reading(value: .double(f.load), quality: .good)], time: now))
            if f.twin {
                loop.submit(twin: TwinState(device: d, tsNs: now.wallNs, seq: seq.add(1, ordering: .relaxed).newValue,
                                            status: f.twinStatus, values: ["load_kg": 1000], received: now))
            }
        }
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        usleep(40_000)
        loop.stop()
    }
}

@Suite("Guard loop")
struct GuardLoopTests {
    @Test func aRiseIsPublishedOnlyAfterItsTokenIsDurable() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        h.audit.holdGating.store(true, ordering: .relaxed)
        try h.start()
        defer { h.stop() }
        // The guard wants to permit: a gating record is submitted …
        #expect(await h.recorder.waitRecord { $0.action == .permitChanged && $0.timing == .gating })
        // … but while it is not durable, the coils stay 0 (ticks keep publishing).
        let ticksBefore = h.recorder.tables.count
        let beat = h.recorder.tables.last?.heartbeat ?? 0
        #expect(await h.recorder.waitTable { $0.heartbeat > beat &+ 2 })
        #expect(h.recorder.tables.count > ticksBefore)
        #expect(h.recorder.tables.allSatisfy { !$0.anyPermit })
        #expect(h.audit.heldCount > 0)
        h.audit.release()
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true })
        let rise = h.recorder.records.first { $0.action == .permitChanged && $0.erin["change"]?.stringValue == "rise" }
        #expect(rise?.erin["allowed"]?.boolValue == true)
        #expect(rise?.eraan["device"]?.stringValue == "jis:crane-01")
    }

    @Test func aDropIsPublishedBeforeItsTokenIsSubmitted() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true })
        h.feeding.withLock { $0.physicalStatus = "fault" }
        #expect(await h.recorder.waitRecord { $0.erin["change"]?.stringValue == "drop" && $0.erin["intent"]?.stringValue == "move_left" })
        let events = h.recorder.all
        let dropToken = events.firstIndex {
            if case .submitted(let r) = $0 { return r.erin["change"]?.stringValue == "drop" } else { return false }
        }!
        // The first table without the permit after it was up comes before the drop's token.
        let firstUp = events.firstIndex { if case .published(let t) = $0 { return t.anyPermit } else { return false } }!
        let firstDown = events[firstUp...].firstIndex { if case .published(let t) = $0 { return !t.anyPermit } else { return false } }!
        #expect(firstDown < dropToken)
        let drop = h.recorder.records.first { $0.erin["change"]?.stringValue == "drop" }
        #expect(drop?.timing == .reporting)
        #expect(drop?.erin["reason_code"]?.intValue == Int64(ReasonCode.statusMismatch.rawValue))
        #expect(drop?.erin["reason"]?.stringValue?.contains("status mismatch: physical=fault, twin=operational") == true)
    }

    @Test func anUnhealthyAuditChainBlocksEveryPermit() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true })
        h.audit.healthy.store(false, ordering: .relaxed)
        #expect(await h.recorder.waitTable { !$0.anyPermit && !$0.healthy })
        let regs = h.recorder.tables.last!.registers
        #expect(regs[16] == ReasonCode.audit.rawValue)
        h.audit.healthy.store(true, ordering: .relaxed)
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true && $0.healthy })
    }

    @Test func heartbeatCountsTicksAndReadyFollowsTheFirstEvaluation() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        h.feeding.withLock { $0.devices = [] }  // nothing arrives: only the tick evaluates
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.heartbeat >= 5 })
        #expect(h.loop.isReady)
        let beats = h.recorder.tables.map(\.heartbeat)
        #expect(zip(beats, beats.dropFirst()).allSatisfy { $1 == $0 || $1 == $0 &+ 1 }, "the heartbeat moves by one per tick")
        #expect(h.recorder.tables.allSatisfy { !$0.anyPermit })
        #expect(h.loop.health().guardAlive)
        // No state ever arrived: the device reason is NO_PHYSICAL.
        #expect(h.recorder.tables.last!.registers[16] == ReasonCode.noPhysical.rawValue)
    }

    @Test func aLatchedIntentWaitsForItsReset() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "hoist") == true })
        h.feeding.withLock { $0.load = 5000 }  // beyond tolerance: trips
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "hoist") == false })
        h.feeding.withLock { $0.load = 1000 }  // back in sync: move_left re-arms, hoist stays latched
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true })
        #expect(h.recorder.tables.last?.permit(device: "crane-01", intent: "hoist") == false)
        let outcome: ResetOutcome = await withCheckedContinuation { c in
            h.loop.reset(device: "crane-01", intent: "hoist", client: "127.0.0.1:9") { c.resume(returning: $0) }
        }
        #expect(outcome == .done(device: "crane-01", cleared: ["hoist"]))
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "hoist") == true })
        let reset = h.recorder.records.first { $0.action == .reset }
        #expect(reset?.erin["client"]?.stringValue == "127.0.0.1:9")
        let unknown: ResetOutcome = await withCheckedContinuation { c in
            h.loop.reset(device: "nope", intent: nil, client: "x") { c.resume(returning: $0) }
        }
        #expect(unknown == .unknownDevice("nope"))
        h.audit.healthy.store(false, ordering: .relaxed)
        let refused: ResetOutcome = await withCheckedContinuation { c in
            h.loop.reset(device: "crane-01", intent: nil, client: "x") { c.resume(returning: $0) }
        }
        if case .auditFailed = refused {} else { Issue.record("reset without a writable audit chain: \(refused)") }
    }

    @Test func reloadKeepsUnchangedDevicesAndReArmsChangedOnes() async throws {
        let robotYAML = loopMapYAML.replacingOccurrences(of: "crane-01", with: "robot-07")
            .replacingOccurrences(of: "coil: 0", with: "coil: 4").replacingOccurrences(of: "coil: 1", with: "coil: 5")
        let crane = try loopMap(), robot = try loopMap(robotYAML, sha: "r")
        let h = try LoopHarness(maps: [crane, robot])
        h.feeding.withLock { $0.devices = ["crane-01", "robot-07"] }
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true
            && $0.permit(device: "robot-07", intent: "move_left") == true })
        // The robot's map changes (rearm differs); the crane's does not.
        let robot2 = try loopMap(robotYAML.replacingOccurrences(of: "rearm_ms: 20", with: "rearm_ms: 300"), sha: "r2")
        let mark = h.recorder.all.count
        let result: GuardReloadResult = await withCheckedContinuation { c in
            h.loop.reload(GuardReload(maps: [crane, robot2], layout: try! InterlockLayout(maps: [crane, robot2]))) {
                c.resume(returning: $0)
            }
        }
        #expect(result.kept == ["crane-01"])
        #expect(result.replaced == ["robot-07"])
        // The first table after the reload: the robot's permits are gone, the crane's stay.
        let after = h.recorder.all[mark...].compactMap { if case .published(let t) = $0 { return t } else { return nil } }
        let first = try #require(after.first)
        #expect(first.permit(device: "robot-07", intent: "move_left") == false)
        #expect(first.permit(device: "crane-01", intent: "move_left") == true)
        #expect(after.allSatisfy { $0.permit(device: "crane-01", intent: "move_left") == true }, "the crane never blinked")
        // The robot re-arms by its new map.
        #expect(await h.recorder.waitTable { $0.permit(device: "robot-07", intent: "move_left") == true })
        #expect(h.recorder.records.contains { $0.erin["change"]?.stringValue == "drop" && $0.erin["device"]?.stringValue == "robot-07"
            && ($0.erachter["why"]?.stringValue?.contains("map replaced") ?? false) })
    }

    @Test func anOldPollersStatesAreShutOutOfAReplacedDeviceAndTheNewPollersAreTaken() throws {
        let robotYAML = loopMapYAML.replacingOccurrences(of: "crane-01", with: "robot-07")
            .replacingOccurrences(of: "coil: 0", with: "coil: 4").replacingOccurrences(of: "coil: 1", with: "coil: 5")
        let maps = [try loopMap(), try loopMap(robotYAML, sha: "r")]
        let loop = GuardLoop(configuration: GuardLoop.Configuration(node: "test", checkpointS: 0), maps: maps,
                             layout: try InterlockLayout(maps: maps), audit: ScriptedAudit(recorder: LoopRecorder()),
                             metrics: ApplianceMetrics()) { _ in }
        let now = SystemTimeSource().now()
        func state(_ d: String) -> PhysicalState {
            PhysicalState(device: d, status: "operational", values: ["load_kg": Reading(value: .double(1000), quality: .good)], time: now)
        }
        // A repeat read by the old map waits for a tick …
        loop.submit(physical: state("crane-01"), generation: 1, wake: false)
        #expect(loop.cond.withLock { loop.inPhysicalRepeats["crane-01"] } != nil)
        // … when a reload replaces the crane's map: poller generation 1 may no longer speak for
        // it, and its waiting repeat goes too.
        loop.shutOutPhysical(["crane-01"], olderThan: 2)
        #expect(loop.cond.withLock { loop.inPhysicalRepeats["crane-01"] } == nil)
        loop.submit(physical: state("crane-01"), generation: 1)
        loop.submit(physical: state("robot-07"), generation: 1)
        loop.iterateOnce()
        #expect(loop.slots[0].guardState.physical == nil, "a state read by the old map never reaches the crane")
        #expect(loop.slots[1].guardState.physical != nil, "the unchanged robot still takes the old poller's states")
        loop.submit(physical: state("crane-01"), generation: 2)
        loop.iterateOnce()
        #expect(loop.slots[0].guardState.physical != nil, "the new poller's states are taken")
        // A later reload never reopens the door for an older generation.
        loop.shutOutPhysical(["crane-01"], olderThan: 1)
        loop.submit(physical: state("crane-01"), generation: 1)
        #expect(loop.cond.withLock { loop.inPhysical["crane-01"] } == nil)
    }

    /// `n` cranes with coils 2i and 2i+1, driven by `iterateOnce` on the test's thread.
    final class ManualLoop {
        let recorder = LoopRecorder()
        let audit: ScriptedAudit
        let loop: GuardLoop
        let names: [String]
        let clock = SystemTimeSource()
        var seq: UInt64 = 0

        init(devices n: Int) throws {
            names = (0..<n).map { "crane-\($0)" }
            let maps = try names.enumerated().map { i, d in
                try loopMap(loopMapYAML.replacingOccurrences(of: "crane-01", with: d)
                    .replacingOccurrences(of: "coil: 0", with: "coil: \(2 * i)").replacingOccurrences(of: "coil: 1", with: "coil: \(2 * i + 1)"),
                            sha: d)
            }
            audit = ScriptedAudit(recorder: recorder)
            let recorder = self.recorder, probe = self.probe
            loop = GuardLoop(configuration: GuardLoop.Configuration(node: "test", checkpointS: 0), maps: maps,
                             layout: try InterlockLayout(maps: maps), audit: audit, metrics: ApplianceMetrics()) {
                recorder.add(.published($0))
                probe.note()
            }
            probe.loop = loop
        }

        /// At each publication, how many devices were still to be evaluated in that iteration
        /// (read on the loop's own thread: `iterateOnce` runs on the test's).
        final class Probe: @unchecked Sendable {
            weak var loop: GuardLoop?
            var stillToEvaluate: [Int] = []
            /// Runs at each publication, on the loop's thread (after `stillToEvaluate` is noted).
            var onPublish: (() -> Void)?
            func note() {
                stillToEvaluate.append(loop?.slots.filter(\.evaluate).count ?? -1)
                onPublish?()
            }
        }
        let probe = Probe()

        /// Fresh states for every device (`fault` ones with a faulted PLC), then one iteration.
        func step(fault: Set<String> = []) {
            let now = clock.now()
            for d in names {
                loop.submit(physical: PhysicalState(device: d, status: fault.contains(d) ? "fault" : "operational",
                                                    values: ["load_kg": Reading(value: .double(1000), quality: .good)], time: now))
                seq += 1
                loop.submit(twin: TwinState(device: d, tsNs: now.wallNs, seq: seq, status: "operational", values: ["load_kg": 1000], received: now))
            }
            loop.iterateOnce()
        }

        func armAll() throws {
            let deadline = Date().addingTimeInterval(10)
            while loop.publishedPermitCount < 2 * names.count {
                try #require(Date() < deadline, "every permit rises within 10 s")
                step()
                usleep(5000)
            }
        }
    }

    @Test func aDropReachesTheCoilsBeforeTheOtherDevicesAreEvaluated() throws {
        let m = try ManualLoop(devices: 100)
        try m.armAll()
        let mark = m.recorder.tables.count
        m.step(fault: ["crane-0"])
        let tables = Array(m.recorder.tables[mark...])
        // The first device's drop is published at once, then the iteration's own table.
        #expect(tables.count >= 2)
        let first = try #require(tables.first)
        #expect(first.permit(device: "crane-0", intent: "move_left") == false)
        #expect(first.permit(device: "crane-99", intent: "move_left") == true)
        #expect(tables.last?.permit(device: "crane-0", intent: "move_left") == false)
    }

    @Test func aDeviceWhoseStatusChangedIsJudgedBeforeTheRestOfTheBurst() throws {
        let m = try ManualLoop(devices: 100)
        try m.armAll()
        let mark = m.recorder.tables.count, probes = m.probe.stillToEvaluate.count
        // The last device in slot order faults in a burst of fresh states of every device.
        m.step(fault: ["crane-99"])
        let first = try #require(m.recorder.tables[mark...].first)
        #expect(first.permit(device: "crane-99", intent: "move_left") == false)
        #expect(m.probe.stillToEvaluate[probes...].first == 99, "its drop was published before the other 99 were judged")
    }

    @Test func newsArrivingDuringALongIterationIsJudgedBeforeItsRest() throws {
        let m = try ManualLoop(devices: 100)
        try m.armAll()
        let mark = m.recorder.tables.count, probes = m.probe.stillToEvaluate.count
        // While the iteration of a burst runs (at its first publication, crane-0's drop),
        // crane-90's PLC faults.
        var injected = false
        m.probe.onPublish = {
            guard !injected else { return }
            injected = true
            m.loop.submit(physical: PhysicalState(device: "crane-90", status: "fault",
                                                  values: ["load_kg": Reading(value: .double(1000), quality: .good)], time: m.clock.now()))
        }
        m.step(fault: ["crane-0"])
        m.probe.onPublish = nil
        let tables = Array(m.recorder.tables[mark...])
        let notes = Array(m.probe.stillToEvaluate[probes...])
        let at = try #require(tables.firstIndex { $0.permit(device: "crane-90", intent: "move_left") == false },
                              "crane-90's drop was published in that iteration")
        #expect(notes[at] >= 100 - 1 - 2 * GuardLoop.peekEvery,
                "published within a few peeks, not after the other \(notes[at]) devices were judged")
        #expect(tables.last?.permit(device: "crane-90", intent: "move_left") == false)
        #expect(tables.last?.permit(device: "crane-0", intent: "move_left") == false)
        #expect(tables.last?.permit(device: "crane-50", intent: "move_left") == true)
    }

    @Test func anOlderRepeatNeverReplacesANewerState() throws {
        // A tick takes the repeats, then absorbs them one by one, looking for news on the way
        // (`peek`): news taken then is newer than a repeat of the same device not absorbed yet.
        let m = try ManualLoop(devices: 2)
        try m.armAll()
        func state(_ status: String, _ t: ClockReading) -> PhysicalState {
            PhysicalState(device: "crane-1", status: status, values: ["load_kg": Reading(value: .double(1000), quality: .good)], time: t)
        }
        let t1 = m.clock.now()
        usleep(1000)
        m.loop.submit(physical: state("fault", m.clock.now()))
        m.loop.iterateOnce()
        #expect(m.recorder.tables.last?.permit(device: "crane-1", intent: "move_left") == false)
        m.loop.absorbRepeat("crane-1", state("operational", t1))
        #expect(m.loop.slots[1].guardState.latestPhysical?.status == "fault", "the older repeat is ignored")
        let t3 = m.clock.now()
        m.loop.absorbRepeat("crane-1", state("fault", t3))
        #expect(m.loop.slots[1].guardState.latestPhysical?.time == t3, "a newer one is taken")
        // The same for twin states, by when they were received.
        let t4 = m.clock.now()
        m.loop.submit(twin: TwinState(device: "crane-1", tsNs: t4.wallNs, seq: 1_000_000, status: "fault", values: ["load_kg": 1000], received: t4))
        m.loop.iterateOnce()
        m.loop.absorbRepeat("crane-1", TwinState(device: "crane-1", tsNs: t1.wallNs, seq: 1, status: "operational",
                                                  values: ["load_kg": 1000], received: t1))
        #expect(m.loop.slots[1].guardState.latestTwin?.status == "fault", "an older twin repeat is ignored")
    }

    @Test func aReloadDropsTheRepeatsWaitingForReplacedDevices() throws {
        let maps = [try loopMap()]
        let loop = GuardLoop(configuration: GuardLoop.Configuration(node: "test", checkpointS: 0), maps: maps,
                             layout: try InterlockLayout(maps: maps), audit: ScriptedAudit(recorder: LoopRecorder()),
                             metrics: ApplianceMetrics()) { _ in }
        let now = SystemTimeSource().now()
        loop.submit(twin: TwinState(device: "crane-01", tsNs: now.wallNs, seq: 1, status: "operational",
                                    values: ["load_kg": 1000], received: now), wake: false)
        loop.submit(physical: PhysicalState(device: "crane-01", status: "operational", values: [:], time: now), wake: false)
        // The crane's map changes (another tolerance): what the old one read or parsed goes.
        let changed = try loopMap(loopMapYAML.replacingOccurrences(of: "tolerance: 100", with: "tolerance: 50"), sha: "b")
        let result = Mutex<GuardReloadResult?>(nil)
        loop.reload(GuardReload(maps: [changed], layout: try InterlockLayout(maps: [changed]))) { r in result.withLock { $0 = r } }
        loop.iterateOnce()
        #expect(result.withLock { $0?.replaced } == ["crane-01"])
        #expect(loop.cond.withLock { loop.inTwinRepeats.isEmpty && loop.inPhysicalRepeats.isEmpty })
        // The reload's iteration was a tick: had the repeats stayed, it would have taken them.
        #expect(loop.slots[0].guardState.latestTwin == nil && loop.slots[0].guardState.latestPhysical == nil)
    }

    @Test func aRepeatedStateWaitsForTheNextNewsOrTick() throws {
        // max_age 40 s: a tick every 10 s, so nothing but news wakes the loop during the test.
        let map = try loopMap(loopMapYAML.replacingOccurrences(of: "max_age_ms: 400", with: "max_age_ms: 40000"))
        let h = try LoopHarness(maps: [map])
        try h.loop.start()
        defer { h.loop.stop() }
        let deadline = Date().addingTimeInterval(10)
        while !h.loop.isReady { try #require(Date() < deadline); usleep(1000) }
        func state() -> PhysicalState {
            PhysicalState(device: "crane-01", status: "operational", values: ["load_kg": Reading(value: .double(1000), quality: .good)],
                          time: SystemTimeSource().now())
        }
        func repeatWaits() -> Bool { h.loop.cond.withLock { h.loop.inPhysicalRepeats["crane-01"] != nil } }
        // A repeat is left in the inbox: the loop sleeps on.
        h.loop.submit(physical: state(), wake: false)
        usleep(200_000)
        #expect(repeatWaits(), "a repeat did not wake the loop")
        // News wakes it at once; the repeat still waits for the tick.
        h.loop.submit(twin: TwinState(device: "crane-01", tsNs: SystemTimeSource().now().wallNs, seq: 1, status: "operational",
                                      values: ["load_kg": 1000], received: SystemTimeSource().now()))
        while !h.loop.cond.withLock({ h.loop.inTwin.isEmpty }) { try #require(Date() < deadline, "news wakes the loop"); usleep(1000) }
        #expect(repeatWaits())
        // News of the same device supersedes its waiting repeat.
        h.loop.submit(physical: state())
        while !h.loop.cond.withLock({ h.loop.inPhysical.isEmpty }) { try #require(Date() < deadline); usleep(1000) }
        #expect(!repeatWaits())
    }

    @Test func anEarlyPublicationNeverShowsARiseThatIsStillToBeJudgedAgain() throws {
        let m = try ManualLoop(devices: 60)
        try m.armAll()
        // crane-50 drops, then re-arms; its rise token is held (not yet durable).
        m.step(fault: ["crane-50"])
        m.audit.holdGating.store(true, ordering: .relaxed)
        let deadline = Date().addingTimeInterval(10)
        while m.audit.heldCount == 0 {
            try #require(Date() < deadline, "crane-50's rise is submitted")
            m.step()
            usleep(5000)
        }
        // In one iteration: crane-50's rise becomes durable while its PLC has faulted, and
        // crane-0 drops first in slot order, which publishes early.
        let mark = m.recorder.tables.count
        let now = m.clock.now()
        m.audit.release()
        for d in ["crane-0", "crane-50"] {
            m.loop.submit(physical: PhysicalState(device: d, status: "fault",
                                                  values: ["load_kg": Reading(value: .double(1000), quality: .good)], time: now))
        }
        m.loop.iterateOnce()
        let tables = Array(m.recorder.tables[mark...])
        #expect(tables.count >= 2, "crane-0's drop went out early")
        #expect(tables.allSatisfy { $0.permit(device: "crane-50", intent: "move_left") == false },
                "the rise was judged again and blocked before any table showed it")
        #expect(tables.allSatisfy { $0.permit(device: "crane-0", intent: "move_left") == false })
    }

    @Test func statusSnapshotShowsPublishedPermitsAndReasons() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.permit(device: "crane-01", intent: "move_left") == true })
        let snap: StatusSnapshot = await withCheckedContinuation { c in h.loop.status { c.resume(returning: $0) } }
        #expect(snap.node == "test")
        let d = try #require(snap.devices.first)
        #expect(d.device == "crane-01")
        #expect(d.intents.first { $0.intent == "move_left" }?.permit == true)
        #expect(d.intents.first { $0.intent == "move_left" }?.reason.hasPrefix("Sync OK") == true)
        #expect(d.values.first?.name == "load_kg")
        #expect(d.values.first?.twin == 1000)
        h.feeding.withLock { $0.twin = false }  // the twin goes silent
        #expect(await h.recorder.waitTable { !$0.anyPermit })
        let silent: StatusSnapshot = await withCheckedContinuation { c in h.loop.status { c.resume(returning: $0) } }
        let i = try #require(silent.devices.first?.intents.first)
        #expect(!i.permit)
        #expect(i.reasonCode == .twinStale)
        #expect(i.reason.contains("twin stale"))
    }

    @Test func identityFailureIsAuditedOncePerEpisode() async throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.heartbeat >= 2 })
        h.feeding.withLock { $0.devices = [] }
        try await Task.sleep(for: .milliseconds(50))
        // A PLC that is not the one the map names, repeatedly.
        for _ in 0..<5 {
            h.loop.submit(physical: PhysicalState(device: "crane-01", status: "operational",
                                                  values: ["load_kg": Reading(value: .double(1000), quality: .good)],
                                                  identity: .mismatch(register: "serial", expected: "4711", got: "42"),
                                                  time: h.clock.now()))
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(await h.recorder.waitRecord { $0.action == .identityFailed })
        try await Task.sleep(for: .milliseconds(100))
        #expect(h.recorder.records.filter { $0.action == .identityFailed }.count == 1)
    }

    /// A client flapping between a wrong and a right identity costs one token per interval per
    /// device, and the episodes not written are counted in the next token.
    @Test func identityFlappingIsRateLimited() async throws {
        let h = try LoopHarness(maps: [try loopMap()], identityAuditIntervalMs: 2000)
        try h.start()
        defer { h.stop() }
        #expect(await h.recorder.waitTable { $0.heartbeat >= 2 })
        h.feeding.withLock { $0.devices = [] }
        func flap() async throws {
            let now = h.clock.now()
            h.loop.submit(physical: PhysicalState(device: "crane-01", status: "operational",
                                                  values: ["load_kg": Reading(value: .double(1000), quality: .good)],
                                                  identity: .mismatch(register: "serial", expected: "4711", got: "42"), time: now))
            try await Task.sleep(for: .milliseconds(40))
            h.loop.submit(physical: PhysicalState(device: "crane-01", status: "operational",
                                                  values: ["load_kg": Reading(value: .double(1000), quality: .good)],
                                                  time: h.clock.now()))
            try await Task.sleep(for: .milliseconds(40))
        }
        let started = Date()
        for _ in 0..<5 { try await flap() }
        #expect(await h.recorder.waitRecord { $0.action == .identityFailed })
        let identity = { h.recorder.records.filter { $0.action == .identityFailed } }
        if Date().timeIntervalSince(started) < 1.8 {  // only meaningful if all flaps fell in one interval
            #expect(identity().count == 1, "one token for five episodes within the interval")
        }
        try await Task.sleep(for: .milliseconds(2100))
        try await flap()
        #expect(await h.recorder.waitRecord { $0.action == .identityFailed && ($0.erin["episodes_not_written_before"]?.intValue ?? 0) >= 1 },
                "the next token counts the episodes not written: \(identity().map(\.erin))")
        #expect(identity().first?.erin["episodes_not_written_before"]?.intValue == 0)
    }
}

@Suite("Interlock events in the audit")
struct InterlockAuditorTests {
    @Test func aFloodCostsOneTokenPerSecondAndEveryEventIsCounted() {
        let recorder = LoopRecorder()
        let audit = ScriptedAudit(recorder: recorder)
        let clock = ManualTimeSource(wallNs: 1_800_000_000_000_000_000)
        let auditor = InterlockAuditor(audit: audit, node: "n", clock: clock, intervalMs: 1000)
        let write = InterlockEvent.writeRejected(client: "10.0.0.5:5000", unit: 1, function: 5, address: 0, count: 1)
        auditor.record(write)  // the first is written at once
        #expect(recorder.records.count == 1)
        for i in 0..<99 {
            auditor.record(.writeRejected(client: "10.0.0.5:\(5001 + i)", unit: 1, function: 5, address: 0, count: 1))
        }
        #expect(recorder.records.count == 1, "the rest of the second is folded")
        auditor.record(.clientRefused(client: "10.9.9.9:1", reason: "not_allowed"))
        #expect(recorder.records.count == 2, "another kind or client is written at once")
        clock.advance(milliseconds: 1001)
        auditor.flush()
        let records = recorder.records
        #expect(records.count == 3)
        let counted = records.filter { $0.action == .writeRejected }.compactMap { $0.erin["count"]?.intValue }.reduce(0, +)
        #expect(counted == 100, "every refused write is counted in the chain")
        #expect(records.first?.erin["client"]?.stringValue == "10.0.0.5:5000")
        #expect(records.first?.erin["function"]?.intValue == 5)
        #expect(records.contains { $0.action == .clientRefused && $0.erin["reason"]?.stringValue == "not_allowed" })
        #expect(InterlockAuditor.host(of: "[::1]:502") == "::1")
        #expect(InterlockAuditor.host(of: "10.0.0.5:502") == "10.0.0.5")
    }
}

/// The drop path's threads ask for `SCHED_FIFO` (`SafetyPriority`), else for nice −10; where the
/// process may do neither (no CAP_SYS_NICE, no RLIMIT_RTPRIO or RLIMIT_NICE), they keep the
/// normal priority and say so.
@Suite struct SafetyPriorityTests {
    /// How a thread is scheduled, from /proc/self/task/<tid>/stat.
    struct Scheduling: Equatable {
        var nice: Int
        var realtimePriority: Int
        var policy: Int
    }

    /// The scheduling of this process's threads named `name`.
    static func scheduling(ofThreadNamed name: String) -> [Scheduling] {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return [] }
        return tasks.compactMap { tid -> Scheduling? in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == name,
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            // Fields after the command, from field 3 (state): nice is field 19, rt_priority 40,
            // policy 41 (proc(5)).
            let f = stat[stat.index(after: close)...].split(separator: " ")
            guard f.count > 38, let nice = Int(f[16]), let rt = Int(f[37]), let policy = Int(f[38]) else { return nil }
            return Scheduling(nice: nice, realtimePriority: rt, policy: policy)
        }
    }

    /// RLIMIT_NICE is 13 and RLIMIT_RTPRIO 14 (linux/resource.h); Glibc does not export the names.
    static func limit(_ resource: Int32) -> rlim_t {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(UInt32(resource)), &limit)
        return limit.rlim_cur
    }

    static var mayBeRealtime: Bool { geteuid() == 0 || limit(14) >= rlim_t(SafetyPriority.realtimePriority) }
    static var mayRaise: Bool { geteuid() == 0 || limit(13) >= 30 }  // RLIMIT_NICE 30 allows nice -10

    /// Expects a thread named `name` at the drop path's priority where this process may have
    /// it: real-time, else nice −10, else neither.
    static func expectSafetyPriority(ofThreadNamed name: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) throws {
        let found = scheduling(ofThreadNamed: name)
        try #require(!found.isEmpty, "the thread \(name) is found in /proc", sourceLocation: sourceLocation)
        let fifo = 1
        if mayBeRealtime {
            #expect(found.contains { $0.policy == fifo && $0.realtimePriority == Int(SafetyPriority.realtimePriority) },
                    "\(found)", sourceLocation: sourceLocation)
        } else if mayRaise {
            #expect(found.contains { $0.policy == 0 && $0.nice == Int(SafetyPriority.nice) }, "\(found)", sourceLocation: sourceLocation)
        } else {
            #expect(!found.contains { $0.policy == fifo || $0.nice == Int(SafetyPriority.nice) }, "\(found)", sourceLocation: sourceLocation)
        }
    }

    @Test func theGuardLoopThreadRunsAtTheSafetyPriorityWhereAllowed() throws {
        let h = try LoopHarness(maps: [try loopMap()])
        try h.loop.start()
        defer { h.loop.stop() }
        let deadline = Date().addingTimeInterval(10)
        while !h.loop.isReady { try #require(Date() < deadline); usleep(1000) }
        try Self.expectSafetyPriority(ofThreadNamed: "tt-guard")
    }

    /// Runs `body` on a thread of its own (its scheduling changes, and goes with it) named
    /// `tt-prio-test`; returns what `body` returned and the thread's scheduling afterwards.
    static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) throws -> (T, Scheduling?) {
        let out = Mutex<(T, Scheduling?)?>(nil)
        let t = try OSThread(name: "tt-prio-test") {
            let r = body()
            let s = scheduling(ofThreadNamed: "tt-prio-test").first
            out.withLock { $0 = (r, s) }
        }
        t.join()
        return try #require(out.withLock { $0 })
    }

    /// Real-time refused (a stand-in refusal; the nice call is real): the thread runs at nice
    /// −10 instead, and the log says why and what allows real-time.
    @Test(.enabled(if: mayRaise)) func refusedRealtimeFallsBackToNice() throws {
        let logs = InMemoryLogHandler()
        let logger = Logger(label: "test.priority") { _ in logs }
        let (outcome, after) = try Self.onOwnThread {
            SafetyPriority.raiseCurrentThread("guard loop", logger: logger, realtime: { _ in Errno(EPERM) })
        }
        #expect(outcome == .nice(realtimeRefused: Errno(EPERM)))
        #expect(after == Scheduling(nice: Int(SafetyPriority.nice), realtimePriority: 0, policy: 0))
        let notices = logs.entries.map { "\($0.message)" }
        #expect(notices.count == 1)
        #expect(notices.first?.contains("guard loop runs at nice -10, not real-time") == true)
        #expect(notices.first?.contains("LimitRTPRIO=10") == true)
    }

    /// Without CAP_SYS_NICE (dropped from this thread's effective set) and with RLIMIT_RTPRIO
    /// and RLIMIT_NICE at 0, the kernel refuses both: the thread keeps its priority, and says so.
    @Test(.enabled(if: geteuid() == 0 && limit(13) == 0 && limit(14) == 0)) func refusedBothKeepsThePriority() throws {
        let logs = InMemoryLogHandler()
        let logger = Logger(label: "test.priority") { _ in logs }
        let (outcome, after) = try Self.onOwnThread { () -> SafetyPriority.Outcome? in
            guard CLinux_dropEffectiveCapability(23) == 0 else { return nil }  // CAP_SYS_NICE
            return SafetyPriority.raiseCurrentThread("interlock server", logger: logger)
        }
        #expect(outcome == .unchanged(realtimeRefused: Errno(EPERM), niceRefused: Errno(EACCES)))
        #expect(after?.policy == 0 && after?.realtimePriority == 0 && after?.nice == 0)
        let notices = logs.entries.map { "\($0.message)" }
        #expect(notices.count == 1)
        #expect(notices.first?.contains("interlock server keeps the normal priority") == true)
    }
}
