import PropertyBased
import Testing
@testable import TibetTwin

/// A random situation of one device, decoded from a vector of numbers so the generator can
/// shrink it, and an independent model of which checks must fail.
struct Situation: CustomStringConvertible {
    var profile: ProfileID
    var physical: Bool
    var badQuality: Bool
    var physicalAgeMs: Int
    var twin: Bool
    var twinAgeMs: Int
    var driftMs: Int  // physical time − twin ts
    var physicalStatus: String
    var twinStatus: String
    var loadDelta: Int
    var loadMissingOnTwin: Bool
    var identity: IdentityResult
    var predicted: Bool
    var hoistLocked: Bool
    var heavyLoad: Bool
    var auditOK: Bool
    var intent: Int

    static let statuses = ["operational", "fault", "maintenance", "emergency"]

    init(_ v: [Int]) {
        profile = ProfileID.allCases[v[15] % 6]
        let p = IndustryProfile.named(profile)
        let maxMs = Double(p.maxDriftMs)
        physical = v[0] % 10 != 0
        badQuality = v[1] % 10 == 0
        physicalAgeMs = Int(Double(v[2]) / 999 * 1.3 * maxMs)
        twin = v[3] % 10 != 0
        twinAgeMs = Int(Double(v[4]) / 999 * 1.3 * maxMs)
        driftMs = Int((Double(v[5]) - 500) / 500 * 1.3 * maxMs)
        physicalStatus = v[6] % 3 == 0 ? Self.statuses[v[6] % 4] : "operational"
        twinStatus = v[7] % 4 == 0 ? Self.statuses[(v[7] / 4) % 4] : physicalStatus
        loadDelta = v[8] * 130 / 999
        loadMissingOnTwin = v[9] % 15 == 0
        identity = v[10] % 12 == 0 ? .mismatch(register: "serial", expected: "4711", got: "1") : v[10] % 12 == 1 ? .unknown : .ok
        predicted = v[11] % 10 == 0
        hoistLocked = v[12] % 5 == 0
        heavyLoad = v[12] % 7 == 0
        auditOK = v[13] % 10 != 0
        intent = v[14] % 3
    }

    var description: String {
        "\(profile) phys=\(physical) bad=\(badQuality) pAge=\(physicalAgeMs) twin=\(twin) tAge=\(twinAgeMs) drift=\(driftMs) \(physicalStatus)/\(twinStatus) dLoad=\(loadDelta) missing=\(loadMissingOnTwin) id=\(identity) pred=\(predicted) locked=\(hoistLocked) heavy=\(heavyLoad) audit=\(auditOK) intent=\(intent)"
    }

    /// The states for this situation.
    func states(_ f: Fixture) -> (PhysicalState?, TwinState?) {
        let load: Double = heavyLoad ? 45_000 : 2_500
        var p = f.physical(status: physicalStatus, load: load + Double(loadDelta), hoistLocked: hoistLocked,
                           ageMs: Double(physicalAgeMs))
        p.identity = identity
        if badQuality { p.values["wind_speed"] = Reading(value: nil, quality: .badComm) }
        var values: [String: Double] = ["position_x": 12.5, "load_kg": load]
        if loadMissingOnTwin { values["load_kg"] = nil }
        let t = f.twin(status: twinStatus, values: values, tsOffsetMs: Double(-driftMs), ageMs: Double(twinAgeMs),
                       predicted: predicted, relativeTo: p)
        return (physical ? p : nil, twin ? t : nil)
    }

    /// Which checks must fail, computed here without the guard's code.
    func expectedFailing(_ f: Fixture) -> Set<GuardCheck> {
        let maxMs = Int(f.maxDriftMs)
        var e = Set<GuardCheck>()
        let intentName = ["move_left", "hoist", "inspect"][intent]
        let allowed = intentName == "inspect" ? ["operational", "maintenance"] : ["operational"]
        if !physical {
            e.insert(.physical)
        } else {
            if badQuality { e.insert(.comms) }
            if physicalAgeMs > maxMs { e.insert(.physicalAge) }
            if identity != .ok { e.insert(.identity) }
            if twin && physicalStatus != twinStatus {
                e.insert(.status)
            } else if !allowed.contains(physicalStatus) {
                e.insert(.status)
            }
            if intentName == "hoist" && (hoistLocked || heavyLoad) { e.insert(.intent) }
        }
        if !twin {
            e.insert(.twin)
        } else {
            // ts ahead of the wall clock: ts = now − physical age − drift.
            if twinAgeMs > maxMs || -physicalAgeMs - driftMs > 1000 { e.insert(.twinAge) }
            if predicted { e.insert(.predicted) }
        }
        if physical && twin {
            if abs(driftMs) > maxMs { e.insert(.drift) }
            if loadMissingOnTwin || loadDelta > 100 { e.insert(.values) }
        }
        if !auditOK { e.insert(.audit) }
        return e
    }
}

@Suite("Decision rule: properties")
struct DecisionPropertyTests {
    static let vector = Gen.int(in: 0...999).array(of: 16)

    @Test func verdictMatchesAnIndependentModel() async {
        var permits = 0, blocks = 0
        await propertyCheck(count: 600, input: Self.vector) { v in
            let s = Situation(v)
            let f = Fixture(s.profile)
            let (p, t) = s.states(f)
            let g = f.evaluate(p, t, auditOK: s.auditOK)
            let verdict = g.verdict(intent: s.intent)
            let expected = s.expectedFailing(f)
            #expect(Set(verdict.failing) == expected, "\(s)")
            // allowed ⇔ every check passes.
            #expect(verdict.permit == expected.isEmpty, "\(s)")
            if verdict.permit { #expect(verdict.failing.isEmpty && verdict.reason == .ok) }
            // The explanation agrees with the verdict.
            let d = g.decision(intent: s.intent)
            #expect(d.allowed == verdict.permit)
            #expect(Set(d.failing.map(\.check)) == expected)
            #expect(d.reasonCode == verdict.reason)
            if verdict.permit { permits += 1 } else { blocks += 1 }
        }
        // Not vacuous: both outcomes occur.
        #expect(permits > 10 && blocks > 10, "\(permits) permits, \(blocks) blocks")
    }

    /// Each way of making one input worse.
    static let worsenings: [(String, @Sendable (inout Situation) -> Void)] = [
        ("drop physical", { $0.physical = false }),
        ("drop twin", { $0.twin = false }),
        ("bad quality", { $0.badQuality = true }),
        ("older physical", { $0.physicalAgeMs += 97 }),
        ("older twin", { $0.twinAgeMs += 97 }),
        ("more drift", { $0.driftMs += $0.driftMs >= 0 ? 97 : -97 }),
        ("status differs", { $0.twinStatus = $0.physicalStatus == "fault" ? "operational" : "fault" }),
        ("more load deviation", { $0.loadDelta += 37 }),
        ("value missing", { $0.loadMissingOnTwin = true }),
        ("identity unknown", { $0.identity = .unknown }),
        ("predicted", { $0.predicted = true }),
        ("hoist locked", { $0.hoistLocked = true }),
        ("audit fails", { $0.auditOK = false }),
    ]

    @Test func blockingIsMonotonicInEachCheck() async {
        await propertyCheck(count: 300, input: Self.vector, Gen.int(in: 0...(Self.worsenings.count - 1))) { v, w in
            let s = Situation(v)
            let f = Fixture(s.profile)
            let (p, t) = s.states(f)
            let before = f.evaluate(p, t, auditOK: s.auditOK).verdict(intent: s.intent)
            var worse = s
            Self.worsenings[w].1(&worse)
            let (p2, t2) = worse.states(f)
            let after = f.evaluate(p2, t2, auditOK: worse.auditOK).verdict(intent: s.intent)
            if !before.permit {
                #expect(!after.permit, "\(Self.worsenings[w].0) unblocked: \(s)")
            }
        }
    }

    @Test func permitOnlyAfterAnUnbrokenHealthyRearmWindow() async {
        // Random sequences of (milliseconds later, good?) evaluations against a model of §4.3.
        let steps = zip(Gen.int(in: 0...60), Gen.bool(0.7)).array(of: 1...60)
        await propertyCheck(count: 200, input: steps) { seq in
            var f = Fixture(.port, rearmMs: 100)
            var g = DeviceGuard(map: f.map)
            var healthySince: Int64?
            var permitted = false
            var elapsed: Int64 = 0
            for (dt, good) in seq {
                f.now = f.now.adding(milliseconds: Double(dt))
                elapsed += Int64(dt)
                g.updatePhysical(f.physical(status: good ? "operational" : "fault"))
                g.updateTwin(f.twin())
                g.evaluate(now: f.now, auditOK: true)
                if good {
                    let since = healthySince ?? elapsed
                    healthySince = since
                    permitted = permitted || elapsed - since >= 100
                } else {
                    healthySince = nil
                    permitted = false
                }
                #expect(g.verdict(intent: 0).permit == permitted, "\(seq)")
            }
        }
    }
}
