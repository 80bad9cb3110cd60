// What DeviceGuard keeps per intent and value between evaluations, and the two sinks its
// checks write to (a bit mask on the hot path, texts for explanations).

/// A value compared between the sides, with its tolerance.
struct ComparedValue: Sendable {
    let name: String
    let tolerance: Double
}

/// One intent's judgement parameters.
struct IntentPlan: Sendable {
    let name: String
    let allowedStatuses: [String]
    let requires: [Requirement]
    let latch: Bool

    init(_ spec: IntentSpec) {
        name = spec.name
        allowedStatuses = spec.allowedStatuses
        requires = spec.requires
        latch = spec.latch
    }
}

/// One intent's re-arm timer, latch and verdict.
@usableFromInline struct IntentRuntime: Sendable {
    @usableFromInline var verdict = IntentVerdict.initial
    /// Monotonic time of the first evaluation of the current unbroken run of passing checks.
    var healthySinceNs: Int64?
    /// How long the checks had held at the last evaluation (for the REARMING text).
    var heldNs: Int64 = 0
    var latched = false

    init() {}

    /// Applies one evaluation's failing checks (rows 1–10) and the re-arm rule (row 11).
    /// Returns whether the permit dropped.
    mutating func step(failing conditions: CheckMask, now: Int64, rearmNs: Int64, latch: Bool) -> Bool {
        let was = verdict
        var failing = conditions
        var permit = false
        var dropped = false
        if conditions.rawValue != 0 {
            if was.permit {
                dropped = true
                if latch { latched = true }
            }
            healthySinceNs = nil
            heldNs = 0
        } else if latched {
            failing.insert(.latch)
        } else {
            let since = healthySinceNs ?? now
            healthySinceNs = since
            let held = DeviceGuard.sub(now, since) ?? -1
            heldNs = held
            if was.permit || held >= rearmNs {
                permit = true
            } else {
                failing.insert(.rearm)
            }
        }
        let reason = failing.reason
        verdict = IntentVerdict(permit: permit, reason: reason, failing: failing,
                                changed: permit != was.permit || reason != was.reason,
                                permitChanged: permit != was.permit)
        return dropped
    }
}

/// Where the checks report failures: a bit mask on the hot path, texts for explanations.
protocol CheckSink {
    /// Whether the details are wanted; when not, a check may stop at its first failure.
    static var wantsDetail: Bool { get }
    mutating func fail(_ check: GuardCheck, _ detail: () -> String)
}

struct MaskSink: CheckSink {
    var mask = CheckMask()
    init() {}
    static var wantsDetail: Bool { false }
    @inline(__always)
    mutating func fail(_ check: GuardCheck, _ detail: () -> String) { mask.insert(check) }
}

struct TextSink: CheckSink {
    var details: [GuardCheck: [String]] = [:]
    init() {}
    static var wantsDetail: Bool { true }
    mutating func fail(_ check: GuardCheck, _ detail: () -> String) {
        details[check, default: []].append(detail())
    }

    /// One entry per failing check, in table order; several details of one check are joined,
    /// repeated prefixes (`comms: `, `value deviation: `) said once.
    var failing: [FailingCheck] {
        details.keys.sorted { $0.rawValue < $1.rawValue }.map { c in
            FailingCheck(check: c, detail: TextSink.join(details[c]!))
        }
    }

    static func join(_ parts: [String]) -> String {
        guard parts.count > 1 else { return parts.first ?? "" }
        for prefix in ["comms: ", "value deviation: ", "identity: ", "twin stale: "] where parts.allSatisfy({ $0.hasPrefix(prefix) }) {
            return prefix + parts.map { String($0.dropFirst(prefix.count)) }.joined(separator: ", ")
        }
        return parts.joined(separator: "; ")
    }
}
