/// The checks of docs/decision-rule.md, in table order: the raw value is the position in the table, so the
/// first failing check of a set is its lowest bit.
///
/// Rows 1 and 3 have two outcomes each (`NO_PHYSICAL`/`COMMS`, `NO_TWIN`/`TWIN_STALE`), and
/// row 11 has two (re-arming after a block, latched until reset), so there are more checks than
/// rows; `code` is the reason code each one blocks with.
public enum GuardCheck: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Row 1: no physical state has arrived.
    case physical = 0
    /// Row 1: the last poll failed, or a mapped register, the status or a reading is not Good.
    case comms
    /// Row 2: the physical state is older than `max_age_ms`.
    case physicalAge
    /// Row 3: no twin state has arrived.
    case twin
    /// Row 3: the twin state is older than `max_age_ms`, or its `ts` is ahead of the wall clock
    /// by more than `max_skew_ms`.
    case twinAge
    /// Row 4: |physical time − twin `ts`| > `max_drift_ms`.
    case drift
    /// Row 5: statuses differ, or the status is not one the intent allows.
    case status
    /// Row 6: a value with a tolerance is absent on a side, NaN, or deviates beyond it.
    case values
    /// Row 7: identity registers, or the twin line's signature.
    case identity
    /// Row 8: the twin state is a prediction and the map does not allow predictions.
    case predicted
    /// Row 9: the intent's `requires` on physical values.
    case intent
    /// Row 10: the audit chain did not accept the last decision token.
    case audit
    /// Row 11: every check holds, but not yet for `rearm_ms` since the last block.
    case rearm
    /// Row 11: the intent is latched after a trip and waits for an operator reset.
    case latch

    /// The reason code this check blocks with (docs/decision-rule.md).
    @inlinable
    public var code: ReasonCode {
        switch self {
        case .physical: return .noPhysical
        case .comms: return .comms
        case .physicalAge: return .physicalStale
        case .twin: return .noTwin
        case .twinAge: return .twinStale
        case .drift: return .drift
        case .status: return .statusMismatch
        case .values: return .valueDeviation
        case .identity: return .identity
        case .predicted: return .predicted
        case .intent: return .intent
        case .audit: return .audit
        case .rearm, .latch: return .rearming
        }
    }

    /// The check's name in JSON output (`"check":"drift"`).
    public var name: String {
        switch self {
        case .physical: return "physical"
        case .comms: return "comms"
        case .physicalAge: return "physical_age"
        case .twin: return "twin"
        case .twinAge: return "twin_age"
        case .drift: return "drift"
        case .status: return "status"
        case .values: return "values"
        case .identity: return "identity"
        case .predicted: return "predicted"
        case .intent: return "intent"
        case .audit: return "audit"
        case .rearm: return "rearm"
        case .latch: return "latch"
        }
    }

    public var description: String { name }
}

/// A set of failing checks, one bit each. The first failing check in table order is the
/// lowest bit, so finding *the* reason costs one instruction.
public struct CheckMask: Sendable, Hashable, Sequence, ExpressibleByArrayLiteral, CustomStringConvertible {
    public var rawValue: UInt16

    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init() { rawValue = 0 }
    @inlinable public init(_ check: GuardCheck) { rawValue = 1 << UInt16(check.rawValue) }
    public init(arrayLiteral checks: GuardCheck...) { self.init(checks) }
    public init(_ checks: some Sequence<GuardCheck>) {
        rawValue = 0
        for c in checks { insert(c) }
    }

    @inlinable public var isEmpty: Bool { rawValue == 0 }
    @inlinable public mutating func insert(_ check: GuardCheck) { rawValue |= 1 << UInt16(check.rawValue) }
    @inlinable public mutating func remove(_ check: GuardCheck) { rawValue &= ~(1 << UInt16(check.rawValue)) }
    @inlinable public func contains(_ check: GuardCheck) -> Bool { rawValue & (1 << UInt16(check.rawValue)) != 0 }
    @inlinable public func union(_ other: CheckMask) -> CheckMask { CheckMask(rawValue: rawValue | other.rawValue) }
    @inlinable public func isSuperset(of other: CheckMask) -> Bool { rawValue & other.rawValue == other.rawValue }

    /// The first failing check in table order; `nil` when nothing fails.
    @inlinable
    public var first: GuardCheck? {
        rawValue == 0 ? nil : GuardCheck(rawValue: UInt8(rawValue.trailingZeroBitCount))
    }

    /// The reason code of the first failing check, `OK` when nothing fails.
    @inlinable
    public var reason: ReasonCode { first?.code ?? .ok }

    /// The checks in table order.
    public struct Iterator: IteratorProtocol {
        var bits: UInt16
        public mutating func next() -> GuardCheck? {
            guard bits != 0 else { return nil }
            let i = bits.trailingZeroBitCount
            bits &= bits - 1
            return GuardCheck(rawValue: UInt8(i))
        }
    }

    public func makeIterator() -> Iterator { Iterator(bits: rawValue) }

    public var description: String { "[" + map(\.name).joined(separator: ",") + "]" }
}

/// One failing check of a decision, as listed in `check --json` (`failing`).
public struct FailingCheck: Sendable, Hashable {
    public var check: GuardCheck
    /// What failed, in words: `status mismatch: physical=fault, twin=operational`.
    public var detail: String

    public init(check: GuardCheck, detail: String) {
        self.check = check
        self.detail = detail
    }

    /// The reason code this failure blocks with.
    public var code: ReasonCode { check.code }

    public var json: JSONValue {
        ["code": .int(Int64(code.rawValue)), "check": .string(check.name), "detail": .string(detail)]
    }
}

/// The evidence of a decision: how far apart the physical and twin states were.
///
/// `nil` means "not known" (a side is missing), never zero.
public struct StateDelta: Sendable, Hashable {
    /// |physical time − twin `ts`| in milliseconds.
    public var driftMs: Double?
    /// Monotonic now − arrival of the physical state, in milliseconds.
    public var physicalAgeMs: Double?
    /// Monotonic now − receipt of the twin state, in milliseconds.
    public var twinAgeMs: Double?
    /// |physical − twin| for every value both sides report as a number (physical Good only).
    public var values: [String: Double]
    /// The value with the largest deviation (ties: the first by name), and that deviation.
    public var maxSensor: String?
    public var maxValueDelta: Double?
    public var physicalStatus: String?
    /// The map has no status register: `physicalStatus` was derived from the poll. Shown as
    /// `"physical_status_derived": true` (the key is absent otherwise).
    public var physicalStatusDerived: Bool
    public var twinStatus: String?
    /// The quality the twin's source gave each value (OPC UA); nil for sources without it.
    /// Shown as `"twin_quality"` (the key is absent otherwise).
    public var twinQuality: TwinQuality?

    public init(driftMs: Double? = nil, physicalAgeMs: Double? = nil, twinAgeMs: Double? = nil,
                values: [String: Double] = [:], maxSensor: String? = nil, maxValueDelta: Double? = nil,
                physicalStatus: String? = nil, physicalStatusDerived: Bool = false, twinStatus: String? = nil) {
        self.physicalStatusDerived = physicalStatusDerived
        self.driftMs = driftMs
        self.physicalAgeMs = physicalAgeMs
        self.twinAgeMs = twinAgeMs
        self.values = values
        self.maxSensor = maxSensor
        self.maxValueDelta = maxValueDelta
        self.physicalStatus = physicalStatus
        self.twinStatus = twinStatus
    }

    /// The `delta` object of `check --json` (docs/cli.md).
    public var json: JSONValue {
        var v: [String: JSONValue] = [:]
        v.reserveCapacity(values.count)
        for (k, d) in values { v[k] = .double(d) }
        var o: [String: JSONValue] = [
            "drift_ms": driftMs.map { .double($0) } ?? .null,
            "physical_age_ms": physicalAgeMs.map { .double($0) } ?? .null,
            "twin_age_ms": twinAgeMs.map { .double($0) } ?? .null,
            "values": .object(v),
            "max_sensor": maxSensor.map { .string($0) } ?? .null,
            "max_value_delta": maxValueDelta.map { .double($0) } ?? .null,
            "physical_status": physicalStatus.map { .string($0) } ?? .null,
            "twin_status": twinStatus.map { .string($0) } ?? .null,
        ]
        if physicalStatusDerived { o["physical_status_derived"] = .bool(true) }
        if let twinQuality { o["twin_quality"] = twinQuality.json }
        return .object(o)
    }
}

/// The verdict for one device and intent, explained (docs/decision-rule.md): allowed or blocked, *the* reason
/// (the first failing check in table order), every failing check, and the evidence.
///
/// Built by `DeviceGuard.decision(intent:)`; `SyncGuard.check(device:intent:)` adds the token.
public struct SyncDecision: Sendable, Hashable {
    public var device: String
    public var intent: String
    public var allowed: Bool
    public var reasonCode: ReasonCode
    /// `Sync OK: drift=12ms, status match` or `BLOCKED: ` followed by every failing check's
    /// detail in table order, joined by `; ` (the original's form).
    public var reason: String
    /// Every failing check, in table order; empty when allowed.
    public var failing: [FailingCheck]
    public var delta: StateDelta
    /// The library's record of this check, from which `token` is built.
    var record: CheckRecord?

    /// The TIBET token recording this check (library API only; the appliance writes tokens for
    /// permit changes, not for every evaluation). Built on access from the compact record
    /// `SyncGuard` keeps; its `content_hash` and chain links were fixed when the check was made.
    public var token: TibetToken? { record?.token }

    public init(device: String, intent: String, allowed: Bool, reasonCode: ReasonCode, reason: String,
                failing: [FailingCheck], delta: StateDelta) {
        self.device = device
        self.intent = intent
        self.allowed = allowed
        self.reasonCode = reasonCode
        self.reason = reason
        self.failing = failing
        self.delta = delta
    }

    /// The action must not proceed.
    @inlinable public var blocked: Bool { !allowed }

    public static func == (a: SyncDecision, b: SyncDecision) -> Bool {
        a.device == b.device && a.intent == b.intent && a.allowed == b.allowed && a.reasonCode == b.reasonCode
            && a.reason == b.reason && a.failing == b.failing && a.delta == b.delta
            && a.record?.contentHash == b.record?.contentHash
    }

    public func hash(into h: inout Hasher) {
        h.combine(device)
        h.combine(intent)
        h.combine(allowed)
        h.combine(reasonCode)
        h.combine(reason)
        h.combine(record?.contentHash)
    }

    /// The `check --json` object (docs/cli.md), also the ERIN of decision tokens (docs/audit.md).
    public var json: JSONValue {
        .object([
            "device": .string(device),
            "intent": .string(intent),
            "allowed": .bool(allowed),
            "blocked": .bool(!allowed),
            "reason_code": .int(Int64(reasonCode.rawValue)),
            "reason_name": .string(reasonCode.name),
            "reason": .string(reason),
            "failing": .array(failing.map(\.json)),
            "delta": delta.json,
        ])
    }

    /// The ERIN of a token recording this decision: the same object as `json`.
    public var erin: JSONValue { json }
}

/// Number formatting for reason texts: integral values without a fraction (`200`), others
/// rounded to microseconds of a millisecond (`503.25`).
@usableFromInline
enum Fmt {
    static func num(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        let r = (d * 1000).rounded() / 1000
        if r == r.rounded(), Swift.abs(r) < 1e15 { return String(Int64(r)) }
        return r.description
    }

    /// Milliseconds from nanoseconds, rounded to the microsecond.
    static func ms(_ ns: Int64) -> Double { (Double(ns) / 1000).rounded() / 1000 }
    static func ms(_ ns: UInt64) -> Double { (Double(ns) / 1000).rounded() / 1000 }
}
