import Platform
import TibetTwin

/// What the running appliance shows an operator: the published permits (what the interlock
/// serves, not a verdict still waiting for its audit token), each with its reason, and per
/// device the ages, the drift and the last values. Built by the guard loop on request.
package struct StatusSnapshot: Sendable, Hashable {
    package var node: String
    /// Guard running and audit writable: the value of input register 1.
    package var healthy: Bool
    package var auditHealthy: Bool
    /// The heartbeat served in input register 0.
    package var heartbeat: UInt16
    /// Wall clock of the snapshot, ns since the epoch.
    package var wallNs: Int64
    package var devices: [DeviceStatus]

    package init(node: String, healthy: Bool, auditHealthy: Bool, heartbeat: UInt16, wallNs: Int64,
                devices: [DeviceStatus]) {
        self.node = node
        self.healthy = healthy
        self.auditHealthy = auditHealthy
        self.heartbeat = heartbeat
        self.wallNs = wallNs
        self.devices = devices
    }

    /// Permits that are 1 right now, over all devices.
    package var permitCount: Int { devices.reduce(0) { $0 + $1.intents.filter(\.permit).count } }
    /// Intents over all devices.
    package var intentCount: Int { devices.reduce(0) { $0 + $1.intents.count } }
    /// Devices whose inputs are failing (`/readyz`).
    package var failingDevices: [DeviceStatus] { devices.filter { !$0.inputProblems.isEmpty } }
}

/// One device in a `StatusSnapshot`.
package struct DeviceStatus: Sendable, Hashable {
    package var device: String
    package var intents: [IntentStatus]
    package var driftMs: Double?
    package var physicalAgeMs: Double?
    package var twinAgeMs: Double?
    package var physicalStatus: String?
    package var twinStatus: String?
    /// Identity as last read (`ok`, `not_configured`, `mismatch: …`, `unknown`).
    package var identity: String?
    package var twinSeq: UInt64?
    /// Per-value quality and the timestamp used, where the twin's source reports them (OPC UA).
    package var twinQuality: TwinQuality?
    /// Permit drops since start (or since the device's map was last replaced).
    package var blockCount: UInt64
    package var values: [ValueStatus]
    /// The device's reason code (what the interlock serves in its reason register); `nil`
    /// before its first evaluation.
    package var reasonCode: ReasonCode?
    /// Why every intent of the device is blocked, in words, once for the device (the failing
    /// checks all its intents share); `nil` when no check blocks them all.
    package var reason: String?
    /// The last poll's error (`connect: ECONNREFUSED …`), `nil` when it was good: the physical
    /// side then has no data, whatever its age.
    package var physicalError: String?
    /// What is wrong with the device's inputs (PLC, twin, identity), in words; empty when they
    /// are good. Drives `/readyz`.
    package var inputProblems: [String]
    /// The limits the ages and the drift are judged by (`max_age_ms`, `max_drift_ms`).
    package var maxAgeMs: Double?
    package var maxDriftMs: Double?

    package init(device: String, intents: [IntentStatus], driftMs: Double? = nil, physicalAgeMs: Double? = nil,
                twinAgeMs: Double? = nil, physicalStatus: String? = nil, twinStatus: String? = nil,
                identity: String? = nil, twinSeq: UInt64? = nil, blockCount: UInt64 = 0, values: [ValueStatus] = [],
                reasonCode: ReasonCode? = nil, reason: String? = nil, physicalError: String? = nil,
                inputProblems: [String] = [], maxAgeMs: Double? = nil, maxDriftMs: Double? = nil) {
        self.reasonCode = reasonCode
        self.reason = reason
        self.physicalError = physicalError
        self.inputProblems = inputProblems
        self.maxAgeMs = maxAgeMs
        self.maxDriftMs = maxDriftMs
        self.device = device
        self.intents = intents
        self.driftMs = driftMs
        self.physicalAgeMs = physicalAgeMs
        self.twinAgeMs = twinAgeMs
        self.physicalStatus = physicalStatus
        self.twinStatus = twinStatus
        self.identity = identity
        self.twinSeq = twinSeq
        self.blockCount = blockCount
        self.values = values
    }
}

/// One intent's published permit and why.
package struct IntentStatus: Sendable, Hashable {
    package var intent: String
    package var coil: UInt16
    package var permit: Bool
    package var reasonCode: ReasonCode
    /// In words, as the decision says it (`BLOCKED: status mismatch: physical=fault, twin=operational`).
    package var reason: String
    package var latched: Bool
    /// The failing checks of this intent that are not the device's shared `reason` (its own
    /// `requires`, its allowed statuses, its latch), in words.
    package var conditions: [String]

    package init(intent: String, coil: UInt16, permit: Bool, reasonCode: ReasonCode, reason: String, latched: Bool = false,
                 conditions: [String] = []) {
        self.conditions = conditions
        self.intent = intent
        self.coil = coil
        self.permit = permit
        self.reasonCode = reasonCode
        self.reason = reason
        self.latched = latched
    }
}

/// One mapped value: the physical reading with its quality beside the twin's value.
package struct ValueStatus: Sendable, Hashable {
    package var name: String
    package var physical: Value?
    package var quality: Quality?
    package var twin: Double?
    /// The twin value's quality where its source reports one (OPC UA); nil otherwise.
    package var twinQuality: TwinQuality.Value?
    package var unit: String?
    package var tolerance: Double?
    /// The physical value's precision (the register's type and scale), for printing it.
    package var precision: ValuePrecision

    package init(name: String, physical: Value?, quality: Quality?, twin: Double?, unit: String? = nil,
                tolerance: Double? = nil, precision: ValuePrecision = .float64) {
        self.precision = precision
        self.name = name
        self.physical = physical
        self.quality = quality
        self.twin = twin
        self.unit = unit
        self.tolerance = tolerance
    }
}

extension StatusSnapshot {
    /// The JSON of `GET /status` and `tibet-twin status --json` (docs/cli.md): `node`, `healthy`,
    /// `heartbeat`, `devices` by name with `intents` (`permit`, `reason_code`, `reason`), `drift_ms`,
    /// `physical_age_ms`, `twin_age_ms`; plus `audit_healthy`, `time`, and per device the statuses,
    /// identity, twin seq, block count and `values` (`value`, `quality`, `twin`, `unit`).
    package var json: JSONValue {
        var devs: [String: JSONValue] = [:]
        for d in devices {
            var intents: [String: JSONValue] = [:]
            for i in d.intents {
                intents[i.intent] = .object([
                    "permit": .bool(i.permit), "reason_code": .int(Int64(i.reasonCode.rawValue)),
                    "reason_name": .string(i.reasonCode.name), "reason": .string(i.reason),
                    "coil": .int(Int64(i.coil)), "latched": .bool(i.latched),
                    "conditions": .array(i.conditions.map { .string($0) }),
                ])
            }
            var values: [String: JSONValue] = [:]
            for v in d.values {
                var vo: [String: JSONValue] = [
                    "value": v.physical.map { ReadReport.jsonValue($0, precision: v.precision) } ?? .null,
                    "quality": v.quality.map { .string($0.description) } ?? .null,
                    "twin": v.twin.map { .double($0) } ?? .null,
                    "unit": v.unit.map { .string($0) } ?? .null,
                    "tolerance": v.tolerance.map { .double($0) } ?? .null,
                ]
                // Only where the twin's source reports quality (OPC UA): `good`, `uncertain: REASON`, `bad: REASON`.
                if let q = v.twinQuality { vo["twin_quality"] = .string(q.reason.map { "\(q.level.rawValue): \($0)" } ?? q.level.rawValue) }
                values[v.name] = .object(vo)
            }
            var o: [String: JSONValue] = [
                "intents": .object(intents),
                "drift_ms": Self.ms(d.driftMs),
                "physical_age_ms": Self.ms(d.physicalAgeMs),
                "twin_age_ms": Self.ms(d.twinAgeMs),
                "physical_status": d.physicalStatus.map { .string($0) } ?? .null,
                "twin_status": d.twinStatus.map { .string($0) } ?? .null,
                "identity": d.identity.map { .string($0) } ?? .null,
                "twin_seq": TwinState.seqJSON(d.twinSeq),
                "block_count": .int(Int64(truncatingIfNeeded: d.blockCount)),
                "values": .object(values),
            ]
            if let q = d.twinQuality { o["twin_quality"] = q.json }
            o.merge(Self.diagnosisJSON(d)) { a, _ in a }
            devs[d.device] = .object(o)
        }
        return .object([
            "node": .string(node),
            "healthy": .bool(healthy),
            "audit_healthy": .bool(auditHealthy),
            "heartbeat": .int(Int64(heartbeat)),
            "time": .string(RFC3339.format(wallNs: wallNs)),
            "devices": .object(devs),
        ])
    }

    /// The device's reason, poll error, input problems and limits.
    static func diagnosisJSON(_ d: DeviceStatus) -> [String: JSONValue] {
        var o: [String: JSONValue] = [:]
        o["reason_code"] = d.reasonCode.map { JSONValue.int(Int64($0.rawValue)) } ?? .null
        o["reason_name"] = d.reasonCode.map { JSONValue.string($0.name) } ?? .null
        o["reason"] = d.reason.map(JSONValue.string) ?? .null
        o["poll_error"] = d.physicalError.map(JSONValue.string) ?? .null
        o["input_problems"] = .array(d.inputProblems.map(JSONValue.string))
        o["max_age_ms"] = d.maxAgeMs.map(JSONValue.double) ?? .null
        o["max_drift_ms"] = d.maxDriftMs.map(JSONValue.double) ?? .null
        return o
    }

    /// Milliseconds rounded to 0.1 ms; unknown is `null`.
    static func ms(_ v: Double?) -> JSONValue {
        guard let v, v.isFinite else { return .null }
        return .double((v * 10).rounded() / 10)
    }
}
