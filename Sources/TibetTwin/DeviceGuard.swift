/// The verdict for one intent after an evaluation: compact, so the guard loop can compare and
/// publish it without building texts.
public struct IntentVerdict: Sendable, Hashable {
    /// The permit coil: `true` only while every check passes and has held for `rearm_ms`.
    public var permit: Bool
    /// The first failing check's code (`OK` when permitted).
    public var reason: ReasonCode
    /// Every failing check.
    public var failing: CheckMask
    /// The permit or the reason code differs from the previous evaluation.
    public var changed: Bool
    /// The permit differs from the previous evaluation (a rise or a drop).
    public var permitChanged: Bool

    public init(permit: Bool, reason: ReasonCode, failing: CheckMask, changed: Bool = false,
                permitChanged: Bool = false) {
        self.permit = permit
        self.reason = reason
        self.failing = failing
        self.changed = changed
        self.permitChanged = permitChanged
    }

    /// Before the first evaluation: blocked, as if re-arming after a block (docs/interlock.md: at start
    /// every permit is 0 until a full evaluation passes).
    public static let initial = IntentVerdict(permit: false, reason: .rearming, failing: CheckMask(.rearm))
}

/// The decision rule of docs/decision-rule.md for one device: holds the latest physical and twin states, the
/// re-arm timers and latches of each intent, and evaluates every intent against a `now` it is
/// handed. The only place the rule lives: `check`, `SyncGuard` and the appliance's guard loop
/// all call it.
///
/// A value type with no locks: one owner (the guard loop thread) mutates it. `evaluate` does
/// not allocate when no state arrived since the last evaluation; texts and JSON are built only
/// by `decision(intent:)`, from exactly what the last evaluation saw.
public struct DeviceGuard: Sendable {
    /// The map this guard judges by (with intents added by `addIntent`).
    public private(set) var map: DeviceMap

    // Compiled from the map.
    var compared: [ComparedValue]
    /// The mapped registers' names (row 1 walks these, not the full specs).
    let registerNames: [String]
    var plans: [IntentPlan]
    let maxDriftNs: UInt64
    let maxAgeNs: Int64
    let maxSkewNs: Int64
    let rearmNs: Int64
    let requireSignature: Bool
    let requireIdentity: Bool

    /// The states the last evaluation judged (or will judge, before the first one).
    public private(set) var physical: PhysicalState?
    public private(set) var twin: TwinState?
    var pendingPhysical: PhysicalState?
    var pendingTwin: TwinState?
    var twinWithdrawn = false
    @usableFromInline var dirty = true

    // Results of the state-only checks for `physical` and `twin` (recomputed when dirty), and
    // their times, so the per-tick checks touch no strings or dictionaries.
    var staticMask = CheckMask()
    var physicalMonoNs: Int64?
    var twinMonoNs: Int64?
    var twinTsNs: Int64?
    var staticIntentMasks: [CheckMask]
    /// The masks were computed from the current states (by a full `absorbPending`).
    var masksCurrent = false
    /// The value deltas of `physical` and `twin` once `explain` has computed them (cleared when
    /// a state is absorbed).
    var deltaCache: ValueDeltas?

    @usableFromInline var runtime: [IntentRuntime]

    /// The `now` and audit health of the last evaluation; `nil` before the first.
    public private(set) var lastEvaluation: ClockReading?
    var lastAuditOK = true
    @usableFromInline var lastPhysicalAgeNs: Int64?
    @usableFromInline var lastTwinAgeNs: Int64?
    /// |physical time − twin `ts`| of the current states (set when they are absorbed).
    @usableFromInline var currentDriftNs: UInt64?
    /// Evaluations so far.
    public private(set) var evaluationCount: UInt64 = 0
    /// Permit drops (1 → 0) over all intents so far.
    public private(set) var blockCount: UInt64 = 0

    /// A guard for one device, judged by `map`; every intent starts blocked.
    public init(map: DeviceMap) {
        self.map = map
        compared = map.registers.compactMap { r in r.tolerance.map { ComparedValue(name: r.name, tolerance: $0) } }
        plans = map.intents.map(IntentPlan.init)
        registerNames = map.registers.map(\.name)
        maxDriftNs = UInt64(DeviceGuard.limitNs(map.limits.maxDriftMs))
        maxAgeNs = DeviceGuard.limitNs(map.limits.maxAgeMs)
        maxSkewNs = DeviceGuard.limitNs(map.limits.maxSkewMs)
        rearmNs = DeviceGuard.limitNs(map.limits.rearmMs)
        requireSignature = map.twinKey != nil
        requireIdentity = !map.identity.isEmpty
        staticIntentMasks = Array(repeating: CheckMask(), count: map.intents.count)
        runtime = Array(repeating: IntentRuntime(), count: map.intents.count)
    }

    /// A limit in ms as ns: NaN or negative counts as 0 (fail closed), absurdly large is capped.
    static func limitNs(_ ms: Double) -> Int64 {
        guard ms >= 0 else { return 0 }
        return Int64(Swift.min(ms, 1e12) * 1_000_000)
    }

    // MARK: - Input

    /// Hands in the latest physical state (a poll's answer, or its failure). It replaces the
    /// previous one at the next evaluation. States for another device are ignored (returns false).
    @discardableResult
    public mutating func updatePhysical(_ state: PhysicalState) -> Bool {
        guard state.device == map.device else { return false }
        pendingPhysical = state
        dirty = true
        return true
    }

    /// Hands in the latest twin state (a validated feed line). It replaces the previous one at
    /// the next evaluation. States for another device are ignored (returns false).
    @discardableResult
    public mutating func updateTwin(_ state: TwinState) -> Bool {
        guard state.device == map.device else { return false }
        pendingTwin = state
        twinWithdrawn = false
        dirty = true
        return true
    }

    /// Takes the twin state away: its source says there is none any more (a Sparkplug death, a
    /// broken birth sequence). From the next evaluation the device blocks on `NO_TWIN` — at
    /// once, not after `max_age_ms` — until a new twin state arrives.
    public mutating func withdrawTwin() {
        pendingTwin = nil
        twinWithdrawn = true
        dirty = true
    }

    /// Adds an intent not in the map (the library's ad-hoc intents); returns its index. An intent
    /// of that name already present is not added twice. The new intent starts blocked.
    @discardableResult
    public mutating func addIntent(_ spec: IntentSpec) -> Int {
        if let i = intentIndex(named: spec.name) { return i }
        map.intents.append(spec)
        plans.append(IntentPlan(spec))
        runtime.append(IntentRuntime())
        var mask = MaskSink()
        if let physical { intentChecks(plans.count - 1, physical, twin, &mask) }
        staticIntentMasks.append(mask.mask)
        return plans.count - 1
    }

    /// Clears the latch of one intent after a trip (operator reset, docs/decision-rule.md). The permit then
    /// returns only after every check has held for `rearm_ms` from the next evaluation on.
    /// Returns whether the intent was latched.
    @discardableResult
    public mutating func reset(intent index: Int) -> Bool {
        guard runtime.indices.contains(index), runtime[index].latched else { return false }
        runtime[index].latched = false
        runtime[index].healthySinceNs = nil
        return true
    }

    /// Clears the latch of the named intent; `nil` if the device has no such intent.
    @discardableResult
    public mutating func reset(intent name: String) -> Bool? {
        intentIndex(named: name).map { reset(intent: $0) }
    }

    /// Clears every latch of the device; returns the names of the intents that were latched.
    @discardableResult
    public mutating func resetAll() -> [String] {
        runtime.indices.filter { reset(intent: $0) }.map { plans[$0].name }
    }

    // MARK: - Output

    /// The intents' names, in map order (the order of `verdicts`).
    public var intentNames: [String] { plans.map(\.name) }

    /// A state was handed in (or the guard is new) since the last evaluation: the next one
    /// judges new states, not just a later `now`.
    @inlinable public var hasUnevaluatedState: Bool { dirty }

    /// The newest physical and twin states handed in, evaluated or not.
    public var latestPhysical: PhysicalState? { pendingPhysical ?? physical }
    public var latestTwin: TwinState? { pendingTwin ?? twin }

    /// The index of the named intent, for `verdicts`, `decision(intent:)` and `reset(intent:)`.
    public func intentIndex(named name: String) -> Int? {
        plans.firstIndex { $0.name == name }
    }

    /// The current verdict of every intent, in map order.
    public var verdicts: [IntentVerdict] { runtime.map(\.verdict) }

    /// The current verdict of one intent.
    @inlinable public func verdict(intent index: Int) -> IntentVerdict { runtime[index].verdict }

    /// Whether the intent is latched and waits for a reset.
    public func isLatched(intent index: Int) -> Bool { runtime[index].latched }

    /// Drift, physical age and twin age at the last evaluation, in ms; `nil` when unknown.
    ///
    /// Inlinable, like `verdict(intent:)`: the guard loop reads these for every device on every
    /// tick, and a call into this module from another one copied the whole guard (1.6 KB and
    /// its references) each time.
    @inlinable public var lastDriftMs: Double? { currentDriftNs.map { Double($0) / 1e6 } }
    @inlinable public var lastPhysicalAgeMs: Double? { lastPhysicalAgeNs.map { Double($0) / 1e6 } }
    @inlinable public var lastTwinAgeMs: Double? { lastTwinAgeNs.map { Double($0) / 1e6 } }

    // MARK: - Evaluation

    /// Evaluates every intent at `now` (docs/decision-rule.md, checks 1–11). `auditOK` is whether the audit
    /// chain accepted the last decision token (row 10, fail-closed). Returns whether any
    /// intent's verdict changed (permit or reason code); read them with `verdict(intent:)`.
    @discardableResult
    public mutating func evaluate(now: ClockReading, auditOK: Bool) -> Bool {
        if dirty { absorbPending() }
        recordAges(now)
        var time = MaskSink()
        Self.timeChecks(now, physicalMonoNs: physicalMonoNs, twinMonoNs: twinMonoNs, twinTsNs: twinTsNs,
                        maxAgeNs: maxAgeNs, maxSkewNs: maxSkewNs, &time)
        if !auditOK { time.mask.insert(.audit) }
        var anyChanged = false
        for i in runtime.indices {
            let failing = CheckMask(rawValue: staticMask.rawValue | staticIntentMasks[i].rawValue | time.mask.rawValue)
            if runtime[i].step(failing: failing, now: now.monotonicNs, rearmNs: rearmNs, latch: plans[i].latch) {
                blockCount &+= 1
            }
            anyChanged = anyChanged || runtime[i].verdict.changed
        }
        lastEvaluation = now
        lastAuditOK = auditOK
        evaluationCount &+= 1
        return anyChanged
    }

    /// Moves the pending states in and recomputes the state-only checks.
    ///
    /// A state that repeats the device's last one but for its time (a poll that read the same
    /// registers, a twin line that repeats its device's last one with a new `ts` and `seq`)
    /// changes only the drift among the state-only checks: the masks are kept and the drift bit
    /// alone is judged again. Debug builds recompute the masks in full and assert they agree.
    mutating func absorbPending() {
        // Both states present before and after, and neither changed but for its time. The
        // states are moved, not copied (each copy retains and releases every string and
        // dictionary in them).
        var sameContent = !twinWithdrawn && physical != nil && twin != nil
        if let p = pendingPhysical.take() {
            sameContent = sameContent && physicalRepeats(p)
            physical = consume p
        }
        if twinWithdrawn { twin = nil; twinWithdrawn = false }
        if let t = pendingTwin.take() {
            sameContent = sameContent && twinRepeats(t)
            twin = consume t
        }
        dirty = false
        deltaCache = nil
        physicalMonoNs = physical?.time.monotonicNs
        twinMonoNs = twin?.received.monotonicNs
        twinTsNs = twin?.tsNs
        currentDriftNs = driftNs(physical, twin)
        if sameContent && masksCurrent {
            // As `deviceChecks` judges drift, with both states present.
            if let d = currentDriftNs, d <= maxDriftNs { staticMask.remove(.drift) } else { staticMask.insert(.drift) }
            assert(staticMask == deviceMask() && staticIntentMasks.indices.allSatisfy { staticIntentMasks[$0] == intentMask($0) },
                   "the state-only checks of a repeated state differ")
            return
        }
        // Through non-mutating helpers: the states are then borrowed from `self`, not copied.
        staticMask = deviceMask()
        for i in staticIntentMasks.indices {
            staticIntentMasks[i] = intentMask(i)
        }
        masksCurrent = true
    }

    /// Whether `b` differs from the current physical state in its time alone (when read, the
    /// PLC's clock): every state-only check but drift judges them alike.
    func physicalRepeats(_ b: borrowing PhysicalState) -> Bool {
        guard let a = physical else { return false }
        return b.repeats(a)
    }

    /// Whether `b` differs from the current twin state in its time alone (`ts`, `seq`, when
    /// received). A repeated feed line shares its values' storage with the last one, so
    /// `values` compare without a lookup.
    func twinRepeats(_ b: borrowing TwinState) -> Bool {
        guard let a = twin else { return false }
        return b.repeats(a)
    }

    /// The state-only device checks (rows 1, 3–8) of the current states, as a mask.
    func deviceMask() -> CheckMask {
        var m = MaskSink()
        deviceChecks(physical, twin, &m)
        return m.mask
    }

    /// The state-only checks of one intent (rows 5, 9) of the current states, as a mask.
    func intentMask(_ i: Int) -> CheckMask {
        var m = MaskSink()
        if let physical { intentChecks(i, physical, twin, &m) }
        return m.mask
    }

    /// The last evaluation of one intent, explained: reason text, every failing check with its
    /// detail, the delta. Built from exactly the states, `now` and audit health that evaluation
    /// used, so it always agrees with `verdict(intent:)`.
    public func decision(intent index: Int) -> SyncDecision {
        decision(intent: index, deltas: nil)
    }

    /// `decision(intent:)`, keeping the per-value deltas of the current states for the next
    /// call: they change only when a state arrives, so a caller that explains after every
    /// evaluation (`SyncGuard.check`) computes them once per state, not once per check.
    mutating func explain(intent index: Int) -> SyncDecision {
        if deltaCache == nil {
            var d = StateDelta()
            fillValueDeltas(&d)
            deltaCache = ValueDeltas(values: d.values, maxSensor: d.maxSensor, maxValueDelta: d.maxValueDelta,
                                     okReason: DeviceGuard.okReason(driftMs: driftNs(physical, twin).map { Fmt.ms($0) }),
                                     sorted: d.values.sorted { JSONValue.utf8Precedes($0.key, $1.key) }.map { ($0.key, $0.value) })
        }
        return decision(intent: index, deltas: deltaCache)
    }

    /// The per-value part of a `StateDelta` and the permit's reason text, which depend on the
    /// states alone.
    struct ValueDeltas: Sendable {
        var values: [String: Double]
        var maxSensor: String?
        var maxValueDelta: Double?
        var okReason: String
        /// `values` in canonical key order, for the token's bytes.
        var sorted: [(String, Double)]
        /// The permitted decisions' canonical texts, by intent index, as `SyncGuard` keeps them.
        var erin: [Int: ErinText] = [:]
    }

    static func okReason(driftMs: Double?) -> String {
        "Sync OK: drift=\(driftMs.map(Fmt.num) ?? "?")ms, status match"
    }

    func decision(intent index: Int, deltas: ValueDeltas?) -> SyncDecision {
        let plan = plans[index]
        let verdict = runtime[index].verdict
        var sink = TextSink()
        var delta = StateDelta(driftMs: driftNs(physical, twin).map { Fmt.ms($0) },
                               physicalStatus: physical?.status, physicalStatusDerived: physical?.statusDerived ?? false,
                               twinStatus: twin?.status)
        delta.twinQuality = twin?.quality
        if let now = lastEvaluation {
            // A permit means every check passed at that evaluation: there is nothing to explain,
            // so the texts are only built (and the agreement asserted) in debug builds.
            if !verdict.permit || _isDebugAssertConfiguration() {
                deviceChecks(physical, twin, &sink)
                if let physical { intentChecks(index, physical, twin, &sink) }
                timeChecks(now, &sink)
                if !lastAuditOK { sink.fail(.audit) { "audit chain did not accept the last decision token" } }
            }
            delta.physicalAgeMs = lastPhysicalAgeNs.map { Fmt.ms($0) }
            delta.twinAgeMs = lastTwinAgeNs.map { Fmt.ms($0) }
        }
        if verdict.failing.contains(.latch) {
            sink.fail(.latch) { "latched after a trip: operator reset required (tibet-twin reset \(map.device) \(plan.name))" }
        }
        if verdict.failing.contains(.rearm) {
            if lastEvaluation == nil {
                sink.fail(.rearm) { "not evaluated yet" }
            } else {
                let held = runtime[index].heldNs
                sink.fail(.rearm) { "rearming: all checks held for \(Fmt.num(Fmt.ms(held)))ms of \(Fmt.num(Fmt.ms(rearmNs)))ms" }
            }
        }
        if let deltas {
            delta.values = deltas.values
            delta.maxSensor = deltas.maxSensor
            delta.maxValueDelta = deltas.maxValueDelta
        } else {
            fillValueDeltas(&delta)
        }
        let failing = sink.details.isEmpty ? [] : sink.failing
        assert(verdict.permit ? failing.isEmpty : CheckMask(failing.map(\.check)) == verdict.failing,
               "decision text disagrees with the verdict")
        let reason: String
        if verdict.permit {
            reason = deltas?.okReason ?? DeviceGuard.okReason(driftMs: delta.driftMs)
        } else {
            reason = "BLOCKED: " + failing.map(\.detail).joined(separator: "; ")
        }
        return SyncDecision(device: map.device, intent: plan.name, allowed: verdict.permit,
                            reasonCode: verdict.reason, reason: reason, failing: failing, delta: delta)
    }

    /// The last evaluation of the named intent, explained; `nil` if the device has no such intent.
    public func decision(intent name: String) -> SyncDecision? {
        intentIndex(named: name).map { decision(intent: $0) }
    }

    // MARK: - The checks (one implementation, two sinks: a bit mask, or texts)

    /// Rows 1, 3 (presence), 4, 5 (equality), 6, 7, 8: everything that depends on the states alone.
    func deviceChecks<S: CheckSink>(_ p: PhysicalState?, _ t: TwinState?, _ s: inout S) {
        if let p {
            commsCheck(p, &s)
            if !p.identity.passes || (requireIdentity && p.identity == .notConfigured) {
                s.fail(.identity) {
                    p.identity == .notConfigured ? "identity: not checked although the map names identity registers"
                        : "identity: \(p.identity)"
                }
            }
        } else {
            s.fail(.physical) { "no physical state available — cannot verify sync" }
        }
        guard let t else {
            s.fail(.twin) { "no twin state available — cannot verify sync" }
            return
        }
        let sigOK = requireSignature ? t.signature == .valid : (t.signature == .valid || t.signature == .notRequired)
        if !sigOK {
            s.fail(.identity) {
                switch t.signature {
                case .missing: return "identity: twin message signature missing"
                case .invalid: return "identity: twin message signature invalid"
                case .notRequired: return "identity: twin message signature not checked although the map has a twin_key"
                case .valid: return "identity: twin message signature"
                }
            }
        }
        if t.predicted && !map.allowPredicted {
            s.fail(.predicted) { "twin state is a prediction (predicted: true)" }
        }
        guard let p else { return }
        if let d = driftNs(p, t), d <= maxDriftNs {
        } else {
            s.fail(.drift) {
                guard let d = driftNs(p, t) else { return "time drift out of range" }
                return "time drift \(Fmt.num(Fmt.ms(d)))ms > \(Fmt.num(Fmt.ms(maxDriftNs)))ms"
            }
        }
        if p.status == nil || p.status != t.status {
            s.fail(.status) { "status mismatch: physical=\(p.status ?? "unknown"), twin=\(t.status)" }
        }
        valueChecks(p, t, &s)
    }

    /// Row 1: the poll succeeded and every mapped register, the status and every reading is Good.
    func commsCheck<S: CheckSink>(_ p: PhysicalState, _ s: inout S) {
        if let err = p.pollError {
            s.fail(.comms) { "comms: poll failed: \(err)" }
            if !S.wantsDetail { return }
        }
        if !p.statusQuality.isGood {
            s.fail(.comms) { "comms: status \(p.statusQuality)" }
            if !S.wantsDetail { return }
        }
        for name in registerNames {
            guard let reading = p.values[name] else {
                s.fail(.comms) { "comms: \(name) not read" }
                if !S.wantsDetail { return }
                continue
            }
            if !reading.quality.isGood {
                s.fail(.comms) { "comms: \(name) \(reading.quality)" }
                if !S.wantsDetail { return }
            }
        }
        if p.values.count > registerNames.count || S.wantsDetail {
            // Readings outside the map (library callers may hand in more): they must be Good too.
            for (name, reading) in p.values where !reading.quality.isGood && map.register(named: name) == nil {
                s.fail(.comms) { "comms: \(name) \(reading.quality)" }
                if !S.wantsDetail { return }
            }
        }
    }

    /// Row 6: every value with a tolerance is present on both sides and within it.
    func valueChecks<S: CheckSink>(_ p: PhysicalState, _ t: TwinState, _ s: inout S) {
        for c in compared {
            let pv: Double? = p.values[c.name].flatMap { $0.quality.isGood ? $0.value?.number : nil }
            let tv = t.values[c.name]
            guard let pv, let tv else {
                s.fail(.values) {
                    pv == nil ? "value deviation: \(c.name) missing on physical" : "value deviation: \(c.name) missing on twin"
                }
                if !S.wantsDetail { return }
                continue
            }
            let d = Swift.abs(pv - tv)
            if !(d <= c.tolerance) {  // NaN never passes
                s.fail(.values) { "value deviation: \(c.name)=\(Fmt.num(d)) > \(Fmt.num(c.tolerance))" }
                if !S.wantsDetail { return }
            }
        }
    }

    /// Rows 5 (the intent's statuses) and 9 (`requires`) for one intent.
    func intentChecks<S: CheckSink>(_ i: Int, _ p: PhysicalState, _ t: TwinState?, _ s: inout S) {
        // A status mismatch is already reported by the device checks; only judge an agreed status.
        if let st = p.status, t == nil || t!.status == st, !plans[i].allowedStatuses.contains(st) {
            s.fail(.status) {
                "status \(st) not allowed for \(plans[i].name) (allowed: \(plans[i].allowedStatuses.joined(separator: ", ")))"
            }
        }
        for r in plans[i].requires {
            let v: Double? = p.values[r.name].flatMap { $0.quality.isGood ? $0.value?.number : nil }
            guard let v, r.isSatisfied(by: v) else {
                s.fail(.intent) {
                    "intent \(plans[i].name) requires \(r.name) \(Self.describe(r)), got \(v.map(Fmt.num) ?? "no value")"
                }
                if !S.wantsDetail { return }
                continue
            }
        }
    }

    /// Rows 2 and 3 (ages, skew): what changes with `now` alone.
    func timeChecks<S: CheckSink>(_ now: ClockReading, _ s: inout S) {
        Self.timeChecks(now, physicalMonoNs: physicalMonoNs, twinMonoNs: twinMonoNs, twinTsNs: twinTsNs,
                        maxAgeNs: maxAgeNs, maxSkewNs: maxSkewNs, &s)
    }

    /// `timeChecks` from the values it reads: `evaluate` (mutating) calls this one, because
    /// calling the method made every evaluation copy the whole guard (1.6 KB) first.
    static func timeChecks<S: CheckSink>(_ now: ClockReading, physicalMonoNs: Int64?, twinMonoNs: Int64?, twinTsNs: Int64?,
                                         maxAgeNs: Int64, maxSkewNs: Int64, _ s: inout S) {
        if let arrived = physicalMonoNs {
            let age = Self.sub(now.monotonicNs, arrived)
            if let age, age <= maxAgeNs, age >= -maxSkewNs {
            } else {
                s.fail(.physicalAge) {
                    guard let age else { return "physical stale: age out of range" }
                    if age < 0 { return "physical stale: arrival \(Fmt.num(-Fmt.ms(age)))ms after now" }
                    return "physical stale: age \(Fmt.num(Fmt.ms(age)))ms > \(Fmt.num(Fmt.ms(maxAgeNs)))ms"
                }
            }
        }
        if let received = twinMonoNs, let ts = twinTsNs {
            let age = Self.sub(now.monotonicNs, received)
            if let age, age <= maxAgeNs, age >= -maxSkewNs {
            } else {
                s.fail(.twinAge) {
                    guard let age else { return "twin stale: age out of range" }
                    if age < 0 { return "twin stale: receipt \(Fmt.num(-Fmt.ms(age)))ms after now" }
                    return "twin stale: age \(Fmt.num(Fmt.ms(age)))ms > \(Fmt.num(Fmt.ms(maxAgeNs)))ms"
                }
            }
            let ahead = Self.sub(ts, now.wallNs)
            if let ahead, ahead <= maxSkewNs {
            } else {
                s.fail(.twinAge) {
                    guard let ahead else { return "twin stale: ts out of range" }
                    return "twin stale: ts ahead of the wall clock by \(Fmt.num(Fmt.ms(ahead)))ms > \(Fmt.num(Fmt.ms(maxSkewNs)))ms (max_skew_ms)"
                }
            }
        }
    }

    /// Records the ages of the last evaluation (kept apart from `timeChecks` so the text path
    /// stays read-only).
    mutating func recordAges(_ now: ClockReading) {
        lastPhysicalAgeNs = physicalMonoNs.flatMap { Self.sub(now.monotonicNs, $0) }
        lastTwinAgeNs = twinMonoNs.flatMap { Self.sub(now.monotonicNs, $0) }
    }

    /// |physical time − twin ts| in ns; `nil` when a side is missing.
    func driftNs(_ p: PhysicalState?, _ t: TwinState?) -> UInt64? {
        guard let p, let t else { return nil }
        let a = p.physicalWallNs, b = t.tsNs
        return a >= b ? UInt64(bitPattern: a &- b) : UInt64(bitPattern: b &- a)
    }

    /// a − b, or `nil` on overflow (which then fails its check).
    static func sub(_ a: Int64, _ b: Int64) -> Int64? {
        let (r, o) = a.subtractingReportingOverflow(b)
        return o ? nil : r
    }

    static func describe(_ r: Requirement) -> String {
        var parts: [String] = []
        if let min = r.min { parts.append(">= \(Fmt.num(min))") }
        if let max = r.max { parts.append("<= \(Fmt.num(max))") }
        if let eq = r.eq { parts.append("== \(Fmt.num(eq))") }
        if let oneOf = r.oneOf { parts.append("in [\(oneOf.map(Fmt.num).joined(separator: ", "))]") }
        return parts.joined(separator: " and ")
    }

    /// Per-value deltas over every value both sides report as a number.
    func fillValueDeltas(_ delta: inout StateDelta) {
        guard let p = physical, let t = twin else { return }
        var best: (String, Double)?
        delta.values.reserveCapacity(p.values.count)
        for (name, reading) in p.values {
            guard reading.quality.isGood, let pv = reading.value?.number, let tv = t.values[name] else { continue }
            let d = Swift.abs(pv - tv)
            delta.values[name] = d
            if let b = best {
                if d > b.1 || (d == b.1 && name < b.0) { best = (name, d) }
            } else if !d.isNaN {
                best = (name, d)
            }
        }
        delta.maxSensor = best?.0
        delta.maxValueDelta = best?.1
    }
}
