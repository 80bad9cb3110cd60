import Testing
@testable import TibetTwin

@Suite("SyncGuard: the library API (docs/library.md)")
struct SyncGuardTests {
    /// The quick start of docs/library.md, verbatim (keep the two in step).
    @Test func readmeQuickStart() {
        let syncGuard = SyncGuard(maxDriftMs: 200,
                                  valueTolerances: ["crane-01": ["position_x": 0.5, "load_kg": 100]])
        syncGuard.updatePhysical(device: "crane-01", status: "fault",
                                 values: ["position_x": 12.5, "load_kg": 2500])
        syncGuard.updateTwin(device: "crane-01", status: "operational",
                             values: ["position_x": 12.5, "load_kg": 2500])

        let decision = syncGuard.check(device: "crane-01", intent: "move_left")
        if decision.blocked {
            print(decision.reason)  // BLOCKED: status mismatch: physical=fault, twin=operational
        }
        print(decision.token!.line)  // the decision as a hash-linked TIBET token (docs/audit.md)
        print(syncGuard.status().blockRate)  // 100.0

        #expect(decision.blocked)
        #expect(decision.reason == "BLOCKED: status mismatch: physical=fault, twin=operational")
        #expect(syncGuard.status().blockRate == 100)
    }

    static func adHoc(_ clock: ManualTimeSource, capacity: Int = 4096) -> SyncGuard {
        SyncGuard(maxDriftMs: 200, valueTolerances: ["crane-01": ["position_x": 0.5, "load_kg": 100]],
                  node: "guard-test", host: "host-a", clock: clock, auditCapacity: capacity)
    }

    static func feed(_ g: SyncGuard, physical: [String: Double] = ["position_x": 12.5, "load_kg": 2500],
                     twin: [String: Double] = ["position_x": 12.5, "load_kg": 2500],
                     status: String = "operational", predicted: Bool = false) {
        g.updatePhysical(device: "crane-01", status: status, values: physical)
        g.updateTwin(device: "crane-01", status: "operational", values: twin, predicted: predicted)
    }

    @Test func inSyncPermits() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        Self.feed(g)
        clock.advance(milliseconds: 20)
        let d = g.check(device: "crane-01", intent: "move_left")
        #expect(d.allowed)
        #expect(d.reason == "Sync OK: drift=0ms, status match")
        #expect(d.delta.physicalAgeMs == 20)
        #expect(d.delta.twinAgeMs == 20)
    }

    // The seed's holes (tibet-twin 0.1.1), each as a regression test.

    @Test func seedHoleStaleButMatchingStatesBlock() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        Self.feed(g)
        clock.advance(milliseconds: 60_000)  // the seed compared only the two timestamps
        let d = g.check(device: "crane-01", intent: "move_left")
        #expect(d.blocked)
        #expect(d.reasonCode == .physicalStale)
        #expect(d.failing.map(\.check) == [.physicalAge, .twinAge])
    }

    @Test func seedHoleMissingValueBlocks() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        // The seed read an absent value as 0: physical load 0 and no twin load passed.
        Self.feed(g, physical: ["position_x": 12.5, "load_kg": 0], twin: ["position_x": 12.5])
        let d = g.check(device: "crane-01", intent: "move_left")
        #expect(d.blocked)
        #expect(d.reasonCode == .valueDeviation)
        #expect(d.reason == "BLOCKED: value deviation: load_kg missing on twin")
        // And on the physical side.
        Self.feed(g, physical: ["position_x": 12.5], twin: ["position_x": 12.5, "load_kg": 0])
        let d2 = g.check(device: "crane-01", intent: "move_left")
        #expect(d2.blocked)
        #expect(d2.failing.map(\.check) == [.comms, .values])
        #expect(d2.reason == "BLOCKED: comms: load_kg not read; value deviation: load_kg missing on physical")
    }

    @Test func seedHolePredictionBlocks() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        Self.feed(g, predicted: true)
        let d = g.check(device: "crane-01", intent: "move_left")
        #expect(d.blocked)
        #expect(d.reasonCode == .predicted)
    }

    @Test func seedHoleIntentConditionsAreJudgedPerIntent() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let f = Fixture(.port)
        let g = try SyncGuard(maps: [f.map], clock: clock)
        let p = PhysicalState(device: "crane-01", status: "operational", values: [
            "position_x": Reading(value: .double(12.5), quality: .good),
            "load_kg": Reading(value: .uint(2500), quality: .good),
            "hoist_locked": Reading(value: .bool(true), quality: .good),
            "wind_speed": Reading(value: .double(3), quality: .good),
        ], identity: .ok, time: clock.now())
        #expect(g.updatePhysical(p))
        g.updateTwin(device: "crane-01", status: "operational", values: ["position_x": 12.5, "load_kg": 2500])
        let hoist = g.check(device: "crane-01", intent: "hoist")
        #expect(hoist.blocked)
        #expect(hoist.reasonCode == .intent)
        #expect(hoist.reason == "BLOCKED: intent hoist requires hoist_locked == 0, got 1")
        let move = g.check(device: "crane-01", intent: "move_left")
        #expect(move.allowed)
    }

    @Test func mapGuardRefusesUnknownDevicesAndIntents() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = try SyncGuard(maps: [Fixture(.port).map], clock: clock)
        #expect(!g.updateTwin(device: "crane-99", status: "operational", values: [:]))
        let unknownDevice = g.check(device: "crane-99", intent: "move_left")
        #expect(unknownDevice.blocked && unknownDevice.reasonCode == .noPhysical)
        let unknownIntent = g.check(device: "crane-01", intent: "fly")
        #expect(unknownIntent.blocked && unknownIntent.reasonCode == .intent)
        #expect(unknownIntent.reason == "BLOCKED: intent fly is not defined for crane-01")
        let s = g.status()
        #expect(s.ignoredUpdates == 1)
        #expect(s.checks == 2 && s.blocked == 2)
        #expect(s.tibetTokens == 2)
    }

    @Test func mapGuardHonoursRearm() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let f = Fixture(.port, rearmMs: 100)
        let g = try SyncGuard(maps: [f.map], clock: clock)
        func feed() {
            let now = clock.now()
            g.updatePhysical(PhysicalState(device: "crane-01", status: "operational", values: [
                "position_x": Reading(value: .double(12.5), quality: .good),
                "load_kg": Reading(value: .uint(2500), quality: .good),
                "hoist_locked": Reading(value: .bool(false), quality: .good),
                "wind_speed": Reading(value: .double(3), quality: .good),
            ], identity: .ok, time: now))
            g.updateTwin(device: "crane-01", status: "operational", values: ["position_x": 12.5, "load_kg": 2500])
        }
        feed()
        #expect(g.check(device: "crane-01", intent: "move_left").reasonCode == .rearming)
        clock.advance(milliseconds: 100)
        feed()
        #expect(g.check(device: "crane-01", intent: "move_left").allowed)
    }

    @Test func tokensAreHashLinkedWithTheFieldsOfSpec5() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        Self.feed(g)
        var decisions: [SyncDecision] = []
        for i in 0..<5 {
            clock.advance(milliseconds: 10)
            decisions.append(g.check(device: "crane-01", intent: i % 2 == 0 ? "move_left" : "hoist"))
        }
        let tokens = g.exportAudit()
        #expect(tokens.count == 5)
        #expect(tokens == decisions.map { $0.token! })
        #expect(tokens[0].parentId == nil && tokens[0].prevHash == nil)
        for (a, b) in zip(tokens, tokens.dropFirst()) {
            #expect(b.parentId == a.tokenId)
            #expect(b.prevHash == a.contentHash)
        }
        for t in tokens {
            #expect(t.contentHash == t.computeContentHash())
            #expect(t.contentHash.count == 64)
            #expect(t.action == .check)
            #expect(t.actor == "jis:guard-test")
            #expect(try TibetToken(json: JSONParser.parse(t.line)) == t)
        }
        let t = tokens[1]
        #expect(t.erin == decisions[1].json)
        #expect(t.erin["intent"] == "hoist")
        #expect(t.eraan["jis"] == "jis:crane-01")
        #expect(t.eromheen["node"] == "guard-test")
        #expect(t.eromheen["host"] == "host-a")
        #expect(t.eromheen["version"] == .string(TibetTwinLibrary.version))
        #expect(t.eromheen["wall_time"] == .string(RFC3339.format(wallNs: Fixture.t0 + 20_000_000, fractionDigits: 6)))
        #expect(t.erachter["intent"] == "hoist")
        #expect(t.erachter["safety_critical"] == true)
        #expect(t.timestamp == "2026-11-26T14:32:00.020000Z")
    }

    /// A permit's decision text is kept between checks while the states stay; every token must
    /// still carry exactly its own decision, across new states, blocks and permits again.
    @Test func keptDecisionTextsFollowEveryChange() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        var decisions: [SyncDecision] = []
        for step in 0..<120 {
            switch step % 10 {
            case 0: Self.feed(g, physical: ["position_x": 12.5 + Double(step) / 100, "load_kg": 2500])
            case 3: Self.feed(g, status: "fault")
            case 5: Self.feed(g, twin: ["position_x": 12.5, "load_kg": 2500 + Double(step)])
            case 7: clock.advance(milliseconds: 300)  // past the drift limit and max age: blocked
            default: break
            }
            clock.advance(milliseconds: Double(step % 4) + 0.001 * Double(step))
            decisions.append(g.check(device: "crane-01", intent: step % 3 == 0 ? "hoist" : "move_left"))
        }
        #expect(decisions.contains { $0.allowed } && decisions.contains { !$0.allowed })
        let tokens = g.exportAudit()
        #expect(tokens == decisions.map { $0.token! })
        for (t, d) in zip(tokens, decisions) {
            #expect(t.erin == d.json)
            #expect(t.contentHash == t.computeContentHash())
            #expect(try TibetToken(json: JSONParser.parse(t.line)) == t)
        }
        for (a, b) in zip(tokens, tokens.dropFirst()) { #expect(b.prevHash == a.contentHash) }
    }

    @Test func tokenRingIsBoundedAndKeepsTheNewest() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock, capacity: 10)
        Self.feed(g)
        var last: [TibetToken] = []
        for _ in 0..<25 {
            last.append(g.check(device: "crane-01", intent: "move_left").token!)
        }
        let kept = g.exportAudit()
        #expect(kept == Array(last.suffix(10)))
        for (a, b) in zip(kept, kept.dropFirst()) { #expect(b.prevHash == a.contentHash) }
        let s = g.status()
        #expect(s.tibetTokens == 25)
        #expect(s.tokensKept == 10)
    }

    @Test func statusCountsInTheOriginalsShape() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        #expect(g.status().blockRate == 0)
        Self.feed(g)
        _ = g.check(device: "crane-01", intent: "move_left")
        _ = g.check(device: "crane-01", intent: "move_left")
        g.updatePhysical(device: "crane-02", status: "operational", values: [:])
        _ = g.check(device: "crane-02", intent: "move_left")
        let s = g.status()
        #expect(s.monitoredDevices == 2)
        #expect(s.physicalStates == 2)
        #expect(s.twinStates == 1)
        #expect(s.checks == 3 && s.allowed == 2 && s.blocked == 1)
        #expect(s.blockRate == 33.3)
        #expect(s.maxDriftMs == 200)
        #expect(s.json["block_rate"] == .double(33.3))
    }

    @Test func physicalTimestampSetsItsAge() {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let g = Self.adHoc(clock)
        g.updatePhysical(device: "crane-01", status: "operational", values: ["position_x": 12.5, "load_kg": 2500],
                         timestamp: Fixture.t0 - 150_000_000)
        g.updateTwin(device: "crane-01", status: "operational", values: ["position_x": 12.5, "load_kg": 2500],
                     timestamp: Fixture.t0 - 150_000_000)
        let d = g.check(device: "crane-01", intent: "move_left")
        #expect(d.allowed)
        #expect(d.delta.physicalAgeMs == 150)
        clock.advance(milliseconds: 51)
        #expect(g.check(device: "crane-01", intent: "move_left").reasonCode == .physicalStale)
    }

    @Test func latchAndResetThroughTheLibrary() throws {
        let clock = ManualTimeSource(wallNs: Fixture.t0)
        let f = Fixture(.port, latch: true)
        let g = try SyncGuard(maps: [f.map], clock: clock)
        func feed(_ status: String) {
            var p = f.physical(status: status)
            p.time = clock.now()
            g.updatePhysical(p)
            g.updateTwin(device: "crane-01", status: "operational", values: ["position_x": 12.5, "load_kg": 2500])
        }
        feed("operational")
        #expect(g.check(device: "crane-01", intent: "move_left").allowed)
        feed("fault")
        #expect(g.check(device: "crane-01", intent: "move_left").blocked)
        feed("operational")
        #expect(g.check(device: "crane-01", intent: "move_left").failing.map(\.check) == [.latch])
        #expect(g.reset(device: "crane-01", intent: "move_left"))
        #expect(g.check(device: "crane-01", intent: "move_left").allowed)
    }

    @Test func concurrentCallersAreSafe() async {
        let g = SyncGuard(maxDriftMs: 200, auditCapacity: 100)
        await withTaskGroup(of: Void.self) { group in
            for k in 0..<4 {
                group.addTask {
                    for _ in 0..<500 {
                        g.updatePhysical(device: "d\(k)", status: "operational", values: ["v": 1])
                        g.updateTwin(device: "d\(k)", status: "operational", values: ["v": 1])
                        _ = g.check(device: "d\(k)", intent: "go")
                    }
                }
            }
        }
        let tokens = g.exportAudit()
        #expect(tokens.count == 100)
        for (a, b) in zip(tokens, tokens.dropFirst()) { #expect(b.prevHash == a.contentHash) }
        #expect(g.status().checks == 2000)
    }
}
