import Testing
@testable import TibetTwin

/// One check of docs/decision-rule.md broken on its own: what to hand in, and the exact reason text expected.
struct RowCase: Sendable, CustomTestStringConvertible {
    let name: String
    let check: GuardCheck
    var intent = "move_left"
    var rearmMs: Double?
    var twinKey: String?
    let make: @Sendable (Fixture) -> (PhysicalState?, TwinState?, Bool)
    let reason: @Sendable (Fixture) -> String

    var testDescription: String { name }

    static func n(_ d: Double) -> String { Fmt.num(d) }

    static let all: [RowCase] = [
        RowCase(name: "no physical", check: .physical, make: { f in (nil, f.twin(), true) },
                reason: { _ in "BLOCKED: no physical state available — cannot verify sync" }),
        RowCase(name: "bad quality", check: .comms, make: { f in
            var p = f.physical()
            p.values["wind_speed"] = Reading(value: nil, quality: .badTimeout)
            return (p, f.twin(), true)
        }, reason: { _ in "BLOCKED: comms: wind_speed bad_timeout" }),
        RowCase(name: "register not read", check: .comms, make: { f in
            var p = f.physical()
            p.values["wind_speed"] = nil
            return (p, f.twin(), true)
        }, reason: { _ in "BLOCKED: comms: wind_speed not read" }),
        RowCase(name: "physical stale", check: .physicalAge, make: { f in
            let p = f.physical(ageMs: f.maxAgeMs + 1)
            return (p, f.twin(tsOffsetMs: 0, relativeTo: p), true)
        }, reason: { f in "BLOCKED: physical stale: age \(n(f.maxAgeMs + 1))ms > \(n(f.maxAgeMs))ms" }),
        RowCase(name: "no twin", check: .twin, make: { f in (f.physical(), nil, true) },
                reason: { _ in "BLOCKED: no twin state available — cannot verify sync" }),
        RowCase(name: "twin stale", check: .twinAge, make: { f in (f.physical(), f.twin(ageMs: f.maxAgeMs + 1), true) },
                reason: { f in "BLOCKED: twin stale: age \(n(f.maxAgeMs + 1))ms > \(n(f.maxAgeMs))ms" }),
        RowCase(name: "twin ts ahead of the wall clock", check: .twinAge, make: { f in
            // The PLC clock (mapped clock register) agrees with the twin: no drift, only skew.
            var p = f.physical()
            p.plcWallNs = f.now.wallNs + 1_500_000_000
            return (p, f.twin(tsOffsetMs: 0, relativeTo: p), true)
        }, reason: { _ in "BLOCKED: twin stale: ts ahead of the wall clock by 1500ms > 1000ms (max_skew_ms)" }),
        RowCase(name: "drift", check: .drift, make: { f in (f.physical(), f.twin(tsOffsetMs: -(f.maxDriftMs + 1)), true) },
                reason: { f in "BLOCKED: time drift \(n(f.maxDriftMs + 1))ms > \(n(f.maxDriftMs))ms" }),
        RowCase(name: "status mismatch", check: .status, make: { f in (f.physical(status: "fault"), f.twin(), true) },
                reason: { _ in "BLOCKED: status mismatch: physical=fault, twin=operational" }),
        RowCase(name: "status unreadable", check: .status, make: { f in (f.physical(status: nil), f.twin(), true) },
                reason: { _ in "BLOCKED: status mismatch: physical=unknown, twin=operational" }),
        RowCase(name: "status not allowed", check: .status, make: { f in
            (f.physical(status: "maintenance"), f.twin(status: "maintenance"), true)
        }, reason: { _ in "BLOCKED: status maintenance not allowed for move_left (allowed: operational)" }),
        RowCase(name: "value deviation", check: .values, make: { f in (f.physical(load: 2700), f.twin(), true) },
                reason: { _ in "BLOCKED: value deviation: load_kg=200 > 100" }),
        RowCase(name: "value missing on twin", check: .values, make: { f in
            (f.physical(), f.twin(values: ["position_x": 12.5]), true)
        }, reason: { _ in "BLOCKED: value deviation: load_kg missing on twin" }),
        RowCase(name: "value NaN on twin", check: .values, make: { f in
            (f.physical(), f.twin(values: ["position_x": .nan, "load_kg": 2500]), true)
        }, reason: { _ in "BLOCKED: value deviation: position_x=NaN > 0.5" }),
        RowCase(name: "identity mismatch", check: .identity, make: { f in
            var p = f.physical()
            p.identity = .mismatch(register: "serial", expected: "4711", got: "4712")
            return (p, f.twin(), true)
        }, reason: { _ in "BLOCKED: identity: mismatch: serial expected 4711, got 4712" }),
        RowCase(name: "identity unread", check: .identity, make: { f in
            var p = f.physical()
            p.identity = .unknown
            return (p, f.twin(), true)
        }, reason: { _ in "BLOCKED: identity: unknown" }),
        RowCase(name: "identity not checked", check: .identity, make: { f in
            var p = f.physical()
            p.identity = .notConfigured
            return (p, f.twin(), true)
        }, reason: { _ in "BLOCKED: identity: not checked although the map names identity registers" }),
        RowCase(name: "twin signature invalid", check: .identity, twinKey: "keys/crane-01.pub", make: { f in
            (f.physical(), f.twin(signature: .invalid), true)
        }, reason: { _ in "BLOCKED: identity: twin message signature invalid" }),
        RowCase(name: "twin signature missing", check: .identity, twinKey: "keys/crane-01.pub", make: { f in
            (f.physical(), f.twin(signature: .missing), true)
        }, reason: { _ in "BLOCKED: identity: twin message signature missing" }),
        RowCase(name: "twin signature not verified", check: .identity, twinKey: "keys/crane-01.pub", make: { f in
            (f.physical(), f.twin(signature: .notRequired), true)
        }, reason: { _ in "BLOCKED: identity: twin message signature not checked although the map has a twin_key" }),
        RowCase(name: "predicted", check: .predicted, make: { f in (f.physical(), f.twin(predicted: true), true) },
                reason: { _ in "BLOCKED: twin state is a prediction (predicted: true)" }),
        RowCase(name: "requires eq", check: .intent, intent: "hoist", make: { f in
            (f.physical(hoistLocked: true), f.twin(values: ["position_x": 12.5, "load_kg": 2500, "hoist_locked": 1]), true)
        }, reason: { _ in "BLOCKED: intent hoist requires hoist_locked == 0, got 1" }),
        RowCase(name: "requires max", check: .intent, intent: "hoist", make: { f in
            (f.physical(load: 45000), f.twin(values: ["position_x": 12.5, "load_kg": 45000]), true)
        }, reason: { _ in "BLOCKED: intent hoist requires load_kg <= 40000, got 45000" }),
        RowCase(name: "audit", check: .audit, make: { f in (f.physical(), f.twin(), false) },
                reason: { _ in "BLOCKED: audit chain did not accept the last decision token" }),
        RowCase(name: "rearming", check: .rearm, rearmMs: 100, make: { f in (f.physical(), f.twin(), true) },
                reason: { _ in "BLOCKED: rearming: all checks held for 0ms of 100ms" }),
    ]
}

@Suite("Decision rule: docs/decision-rule.md check by check")
struct DecisionRuleTests {
    @Test(arguments: ProfileID.allCases, RowCase.all)
    func onlyThisCheckFails(profile: ProfileID, row: RowCase) throws {
        let f = Fixture(profile, rearmMs: row.rearmMs, twinKey: row.twinKey)
        let (p, t, audit) = row.make(f)
        let g = f.evaluate(p, t, auditOK: audit)
        let i = try #require(g.intentIndex(named: row.intent))
        let v = g.verdict(intent: i)
        #expect(!v.permit)
        #expect(v.reason == row.check.code)
        #expect(v.failing == CheckMask(row.check))
        let d = g.decision(intent: i)
        #expect(d.blocked && !d.allowed)
        #expect(d.reasonCode == row.check.code)
        #expect(d.failing.map(\.check) == [row.check])
        #expect(d.reason == row.reason(f))
        #expect(d.json["reason_code"] == .int(Int64(row.check.code.rawValue)))
    }

    @Test(arguments: ProfileID.allCases)
    func allGoodPermitsEveryIntent(profile: ProfileID) {
        let f = Fixture(profile)
        let g = f.evaluate(f.physical(), f.twin())
        for (i, name) in g.intentNames.enumerated() {
            let v = g.verdict(intent: i)
            #expect(v.permit, "\(name)")
            #expect(v.reason == .ok)
            #expect(v.failing.isEmpty)
            let d = g.decision(intent: i)
            #expect(d.allowed)
            #expect(d.failing.isEmpty)
            #expect(d.reason == "Sync OK: drift=\(Fmt.num(f.maxDriftMs / 4))ms, status match")
            #expect(d.delta.driftMs == f.maxDriftMs / 4)
            #expect(d.delta.physicalAgeMs == f.maxAgeMs / 4)
            #expect(d.delta.twinAgeMs == f.maxAgeMs / 5)
        }
    }

    @Test(arguments: ProfileID.allCases)
    func limitsAreInclusive(profile: ProfileID) {
        // Exactly at max_drift_ms and max_age_ms still passes; one microsecond beyond blocks.
        let f = Fixture(profile)
        let p = f.physical(ageMs: f.maxAgeMs)
        let atLimit = f.evaluate(p, f.twin(tsOffsetMs: -f.maxDriftMs, ageMs: f.maxAgeMs, relativeTo: p))
        #expect(atLimit.verdict(intent: 0).permit)
        let p2 = f.physical(ageMs: f.maxAgeMs + 0.001)
        let beyond = f.evaluate(p2, f.twin(tsOffsetMs: -(f.maxDriftMs + 0.001), relativeTo: p2))
        #expect(beyond.verdict(intent: 0).failing == [.physicalAge, .drift])
    }

    @Test func theDeadlyScenarioBlocksWithEveryReason() {
        let d = DeadlyScenario.decision()
        #expect(d.blocked)
        #expect(d.reasonCode == .twinStale)
        #expect(d.failing.map(\.check) == [.twinAge, .drift, .status])
        #expect(d.reason == "BLOCKED: twin stale: age 503ms > 200ms; time drift 503ms > 200ms; status mismatch: physical=fault, twin=operational")
        #expect(d.delta.driftMs == 503)
    }

    @Test func everyFailingCheckIsListedInTableOrder() {
        let f = Fixture(.port)
        var p = f.physical(status: "fault", load: 2700, hoistLocked: true)
        p.identity = .unknown
        p.values["wind_speed"] = Reading(value: nil, quality: .badComm)
        let t = f.twin(tsOffsetMs: -500, ageMs: 300, predicted: true)
        let g = f.evaluate(p, t, auditOK: false)
        let hoist = g.decision(intent: 1)
        #expect(hoist.failing.map(\.check) == [.comms, .twinAge, .drift, .status, .values, .identity, .predicted, .intent, .audit])
        #expect(hoist.reasonCode == .comms)
        #expect(hoist.reason.hasPrefix("BLOCKED: comms: wind_speed bad_comm; twin stale: age 300ms > 200ms; time drift 500ms > 200ms; status mismatch"))
        #expect(g.verdict(intent: 1).failing == CheckMask(hoist.failing.map(\.check)))
    }

    @Test func severalValuesFailingAreNamedTogether() {
        let f = Fixture(.port)
        let g = f.evaluate(f.physical(load: 2700), f.twin(values: ["load_kg": 2500]))
        #expect(g.decision(intent: 0).reason == "BLOCKED: value deviation: position_x missing on twin, load_kg=200 > 100")
        let d = g.decision(intent: 0)
        #expect(d.delta.values["load_kg"] == 200)
        #expect(d.delta.maxSensor == "load_kg")
        #expect(d.delta.values["position_x"] == nil)
    }

    @Test func pollFailureBlocksWithComms() {
        let f = Fixture(.port)
        var p = f.physical()
        p.pollError = "timeout after 100 ms (ETIMEDOUT)"
        let g = f.evaluate(p, f.twin())
        #expect(g.verdict(intent: 0).reason == .comms)
        #expect(g.decision(intent: 0).failing.first?.detail == "comms: poll failed: timeout after 100 ms (ETIMEDOUT)")
    }

    @Test func nothingIsPermittedBeforeTheFirstEvaluation() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        g.updatePhysical(f.physical())
        g.updateTwin(f.twin())
        for i in g.intentNames.indices {
            #expect(!g.verdict(intent: i).permit)
            #expect(g.decision(intent: i).reason == "BLOCKED: not evaluated yet")
        }
    }

    @Test func aWithdrawnTwinBlocksAtOnceAsNoTwinUntilANewStateArrives() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        g.updatePhysical(f.physical())
        g.updateTwin(f.twin())
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).reason != .noTwin)
        g.withdrawTwin()
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).reason == .noTwin, "at once, not after max_age_ms")
        #expect(g.twin == nil)
        g.withdrawTwin()
        g.updateTwin(f.twin())
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.twin != nil, "a state handed in after the withdrawal wins")
    }

    @Test func statesOfAnotherDeviceAreIgnored() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        var p = f.physical()
        p.device = "crane-02"
        let accepted = g.updatePhysical(p)
        #expect(!accepted)
        g.updateTwin(f.twin())
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).reason == .noPhysical)
    }

    @Test func stateFromTheFutureIsNotFresh() {
        // A monotonic arrival later than now (beyond max_skew_ms) is an inconsistency: block.
        let f = Fixture(.port)
        let p = f.physical(ageMs: -1500)
        let g = f.evaluate(p, f.twin(tsOffsetMs: 0, relativeTo: p))
        #expect(g.verdict(intent: 0).failing.contains(.physicalAge))
    }

    @Test func absurdClocksFailClosedWithoutTrapping() {
        let f = Fixture(.port)
        var p = f.physical()
        p.time = ClockReading(monotonicNs: .min, wallNs: .min)
        var t = f.twin()
        t.tsNs = .max
        t.received = ClockReading(monotonicNs: .max, wallNs: .max)
        var g = DeviceGuard(map: f.map)
        g.updatePhysical(p)
        g.updateTwin(t)
        g.evaluate(now: ClockReading(monotonicNs: .max, wallNs: .min), auditOK: true)
        #expect(!g.verdict(intent: 0).permit)
        #expect(g.verdict(intent: 0).failing.isSuperset(of: [.physicalAge, .twinAge, .drift]))
        _ = g.decision(intent: 0).json.canonical
    }

    @Test func nanLimitsFailClosed() {
        let f = Fixture(.port)
        var broken = f
        broken.map.limits = Limits(maxDriftMs: .nan, maxAgeMs: .nan, maxSkewMs: .nan, rearmMs: .nan)
        var g = DeviceGuard(map: broken.map)
        g.updatePhysical(f.physical())
        g.updateTwin(f.twin())
        g.evaluate(now: f.now, auditOK: true)
        #expect(!g.verdict(intent: 0).permit)
        #expect(g.verdict(intent: 0).failing.isSuperset(of: [.physicalAge, .twinAge, .drift]))
    }

    @Test func predictionsPassWhereTheMapAllowsThem() {
        var f = Fixture(.port)
        f.map.allowPredicted = true
        #expect(f.evaluate(f.physical(), f.twin(predicted: true)).verdict(intent: 0).permit)
    }

    @Test func allowedStatusesPerIntent() {
        let f = Fixture(.port)
        let g = f.evaluate(f.physical(status: "maintenance"), f.twin(status: "maintenance"))
        #expect(!g.verdict(intent: 0).permit)
        #expect(g.verdict(intent: 2).permit)  // inspect allows maintenance
    }

    @Test func checkJSONHasTheShapeOfSpec6() throws {
        let f = Fixture(.port)
        let d = f.evaluate(f.physical(status: "fault", load: 2700), f.twin()).decision(intent: 0)
        let o = try #require(d.json.objectValue)
        #expect(o["device"] == "crane-01")
        #expect(o["intent"] == "move_left")
        #expect(o["allowed"] == false)
        #expect(o["blocked"] == true)
        #expect(o["reason_code"] == 6)
        #expect(o["reason"] == .string(d.reason))
        let failing = try #require(o["failing"]?.arrayValue)
        #expect(failing.count == 2)
        #expect(failing[0] == ["code": 6, "check": "status", "detail": "status mismatch: physical=fault, twin=operational"])
        #expect(failing[1] == ["code": 7, "check": "values", "detail": "value deviation: load_kg=200 > 100"])
        let delta = try #require(o["delta"]?.objectValue)
        #expect(delta["drift_ms"] == .double(50))
        #expect(delta["physical_age_ms"] == .double(50))
        #expect(delta["twin_age_ms"] == .double(40))
        #expect(delta["values"]?["load_kg"] == .double(200))
        #expect(delta["max_sensor"] == "load_kg")
        // Parses back to itself.
        #expect(try JSONParser.parse(d.json.canonical) == d.json)
    }
}

@Suite("Decision rule: re-arm and latch (docs/decision-rule.md)")
struct RearmTests {
    /// Fresh states as of `now`.
    static func feed(_ g: inout DeviceGuard, _ f: Fixture, good: Bool) {
        g.updatePhysical(f.physical(status: good ? "operational" : "fault"))
        g.updateTwin(f.twin())
    }

    @Test func flappingFasterThanRearmNeverPermits() {
        var f = Fixture(.port, rearmMs: 100)
        var g = DeviceGuard(map: f.map)
        // Good and bad alternate every 30 ms for 3 s, with a tick every 10 ms in between.
        for step in 0..<300 {
            if step % 3 == 0 { Self.feed(&g, f, good: (step / 3) % 2 == 0) }
            g.evaluate(now: f.now, auditOK: true)
            #expect(!g.verdict(intent: 0).permit, "permitted at step \(step)")
            f.now = f.now.adding(milliseconds: 10)
        }
        // Held good from now on: REARMING until rearm_ms has passed, then permit.
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).reason == .rearming)
        f.now = f.now.adding(milliseconds: 60)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.decision(intent: 0).reason == "BLOCKED: rearming: all checks held for 60ms of 100ms")
        f.now = f.now.adding(milliseconds: 40)
        Self.feed(&g, f, good: true)
        let changed = g.evaluate(now: f.now, auditOK: true)
        #expect(changed)
        #expect(g.verdict(intent: 0).permit)
        #expect(g.verdict(intent: 0).permitChanged)
    }

    @Test func blockIsImmediateAndCounted() {
        var f = Fixture(.port, rearmMs: 100)
        var g = DeviceGuard(map: f.map)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        f.now = f.now.adding(milliseconds: 100)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        f.now = f.now.adding(milliseconds: 1)
        Self.feed(&g, f, good: false)
        let dropped = g.evaluate(now: f.now, auditOK: true)
        #expect(dropped)
        let v = g.verdict(intent: 0)
        #expect(!v.permit && v.permitChanged && v.reason == .statusMismatch)
        #expect(g.blockCount == 3)  // all three intents dropped
        // Unchanged on the next tick.
        f.now = f.now.adding(milliseconds: 1)
        let again = g.evaluate(now: f.now, auditOK: true)
        #expect(!again)
        #expect(!g.verdict(intent: 0).changed)
    }

    @Test func silenceTripsOnTheTick() {
        var f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        // No new states: ticks alone must trip once max_age_ms has passed.
        var tripped = false
        for _ in 0..<40 {
            f.now = f.now.adding(milliseconds: f.map.limits.tickMs)
            g.evaluate(now: f.now, auditOK: true)
            if !g.verdict(intent: 0).permit { tripped = true; break }
        }
        #expect(tripped)
        #expect(g.verdict(intent: 0).reason == .physicalStale)
    }

    @Test func latchHoldsUntilReset() {
        var f = Fixture(.port, rearmMs: 50, latch: true)
        var g = DeviceGuard(map: f.map)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        f.now = f.now.adding(milliseconds: 50)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        // Trip.
        f.now = f.now.adding(milliseconds: 5)
        Self.feed(&g, f, good: false)
        g.evaluate(now: f.now, auditOK: true)
        #expect(!g.verdict(intent: 0).permit)
        #expect(g.isLatched(intent: 0))
        // Good again for a long time: stays blocked on the latch; the unlatched intent re-arms.
        for _ in 0..<20 {
            f.now = f.now.adding(milliseconds: 50)
            Self.feed(&g, f, good: true)
            g.evaluate(now: f.now, auditOK: true)
            #expect(!g.verdict(intent: 0).permit)
            #expect(g.verdict(intent: 0).failing == [.latch])
            #expect(g.verdict(intent: 0).reason == .rearming)
        }
        #expect(g.verdict(intent: 2).permit)
        #expect(g.decision(intent: 0).reason == "BLOCKED: latched after a trip: operator reset required (tibet-twin reset crane-01 move_left)")
        let notLatched = g.reset(intent: "hoist")
        let unknown = g.reset(intent: "nope")
        let wasLatched = g.reset(intent: "move_left")
        #expect(notLatched == false)
        #expect(unknown == nil)
        #expect(wasLatched == true)
        // After the reset the permit returns only after rearm_ms of health.
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).failing == [.rearm])
        f.now = f.now.adding(milliseconds: 50)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
    }

    @Test func latchDoesNotEngageBeforeTheFirstPermit() {
        var f = Fixture(.port, latch: true)
        var g = DeviceGuard(map: f.map)
        Self.feed(&g, f, good: false)
        g.evaluate(now: f.now, auditOK: true)
        f.now = f.now.adding(milliseconds: 10)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        #expect(!g.isLatched(intent: 0))
    }

    @Test func decisionExplainsWhatTheEvaluationSawNotLaterStates() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        Self.feed(&g, f, good: true)
        g.evaluate(now: f.now, auditOK: true)
        Self.feed(&g, f, good: false)  // not evaluated yet
        let d = g.decision(intent: 0)
        #expect(d.allowed)
        #expect(g.latestPhysical?.status == "fault")
        #expect(g.physical?.status == "operational")
    }
}
