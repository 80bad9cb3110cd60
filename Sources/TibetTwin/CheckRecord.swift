import Crypto

/// One library check as its audit token records it, kept compact: the token's fields as plain
/// values, its chain links, and its content hash, computed at check time over the canonical
/// bytes written straight from these values. `token` builds the `TibetToken` (JSON trees) only
/// when someone asks for it; a test holds `token.computeContentHash() == contentHash`.
final class CheckRecord: Sendable {
    let tokenId: String
    let timestamp: String
    let actor: String
    let decision: SyncDecision
    let mapSHA256: String?
    let twinSeq: UInt64?
    let node: String
    let host: String
    let wallTime: String
    let monotonicNs: Int64
    let safetyCritical: Bool
    let parentId: String?
    let prevHash: String?
    /// SHA-256 (hex) of the canonical JSON of every field but `content_hash` and `signature`.
    let contentHash: String

    static let why = "library check(device:intent:) before the action"

    init(tokenId: String, now: ClockReading, node: String, host: String, decision: SyncDecision,
         mapSHA256: String?, twinSeq: UInt64?, safetyCritical: Bool, parentId: String?, prevHash: String?) {
        self.tokenId = tokenId
        timestamp = RFC3339.format(wallNs: now.wallNs, fractionDigits: 6)
        actor = "jis:\(node)"
        self.decision = decision
        self.mapSHA256 = mapSHA256
        self.twinSeq = twinSeq
        self.node = node
        self.host = host
        wallTime = timestamp
        monotonicNs = now.monotonicNs
        self.safetyCritical = safetyCritical
        self.parentId = parentId
        self.prevHash = prevHash
        var bytes: [UInt8] = []
        bytes.reserveCapacity(1536)
        CheckRecord.writeHashed(tokenId: tokenId, timestamp: timestamp, actor: actor, decision: decision,
                                mapSHA256: mapSHA256, twinSeq: twinSeq, node: node, host: host, wallTime: timestamp,
                                monotonicNs: monotonicNs, safetyCritical: safetyCritical, parentId: parentId,
                                prevHash: prevHash, into: &bytes)
        contentHash = Hex.encode(SHA256.hash(data: bytes))
    }

    // MARK: - The token, as JSON trees

    var eraan: JSONValue {
        [
            "jis": .string("jis:\(decision.device)"),
            "map_sha256": mapSHA256.map { .string($0) } ?? .null,
            "twin_seq": twinSeq.map { .int(Int64(clamping: $0)) } ?? .null,
        ]
    }

    var eromheen: JSONValue {
        [
            "node": .string(node),
            "host": .string(host),
            "version": .string(TibetTwinLibrary.version),
            "wall_time": .string(wallTime),
            "monotonic_ns": .int(monotonicNs),
        ]
    }

    var erachter: JSONValue {
        ["intent": .string(decision.intent), "why": .string(CheckRecord.why), "safety_critical": .bool(safetyCritical)]
    }

    /// The TIBET token (docs/audit.md) of this check: action `check`, ERIN the decision's JSON.
    var token: TibetToken {
        var t = TibetToken(tokenId: tokenId, action: .check, timestamp: timestamp, actor: actor,
                           erin: decision.json, eraan: eraan, eromheen: eromheen, erachter: erachter,
                           parentId: parentId, prevHash: prevHash)
        // The stored hash is the one the chain links to (equal to the recomputed one; tested).
        t.contentHash = contentHash
        return t
    }

    // MARK: - Canonical bytes, written directly (keys in sorted order, as JSONValue.canonical)

    static func writeHashed(tokenId: String, timestamp: String, actor: String, decision d: SyncDecision,
                            mapSHA256: String?, twinSeq: UInt64?, node: String, host: String, wallTime: String,
                            monotonicNs: Int64, safetyCritical: Bool, parentId: String?, prevHash: String?,
                            into out: inout [UInt8]) {
        var w = CanonicalWriter(out: [])
        swap(&w.out, &out)
        w.raw("{\"action\":\"check\",\"actor\":"); w.string(actor)
        w.raw(",\"eraan\":{\"jis\":"); w.string("jis:\(d.device)")
        w.raw(",\"map_sha256\":"); w.string(mapSHA256)
        w.raw(",\"twin_seq\":"); if let twinSeq { w.int(Int64(clamping: twinSeq)) } else { w.raw("null") }
        w.raw("},\"erachter\":{\"intent\":"); w.string(d.intent)
        w.raw(",\"safety_critical\":"); w.bool(safetyCritical)
        w.raw(",\"why\":"); w.string(why)
        w.raw("},\"erin\":"); writeDecision(d, &w)
        w.raw(",\"eromheen\":{\"host\":"); w.string(host)
        w.raw(",\"monotonic_ns\":"); w.int(monotonicNs)
        w.raw(",\"node\":"); w.string(node)
        w.raw(",\"version\":"); w.string(TibetTwinLibrary.version)
        w.raw(",\"wall_time\":"); w.string(wallTime)
        w.raw("},\"parent_id\":"); w.string(parentId)
        w.raw(",\"prev_hash\":"); w.string(prevHash)
        w.raw(",\"timestamp\":"); w.string(timestamp)
        w.raw(",\"token_id\":"); w.string(tokenId)
        w.raw("}")
        out = w.out
    }

    /// `SyncDecision.json`, canonical.
    static func writeDecision(_ d: SyncDecision, _ w: inout CanonicalWriter) {
        w.raw("{\"allowed\":"); w.bool(d.allowed)
        w.raw(",\"blocked\":"); w.bool(!d.allowed)
        w.raw(",\"delta\":{\"drift_ms\":"); w.double(d.delta.driftMs)
        w.raw(",\"max_sensor\":"); w.string(d.delta.maxSensor)
        w.raw(",\"max_value_delta\":"); w.double(d.delta.maxValueDelta)
        w.raw(",\"physical_age_ms\":"); w.double(d.delta.physicalAgeMs)
        w.raw(",\"physical_status\":"); w.string(d.delta.physicalStatus)
        if d.delta.physicalStatusDerived { w.raw(",\"physical_status_derived\":true") }
        w.raw(",\"twin_age_ms\":"); w.double(d.delta.twinAgeMs)
        w.raw(",\"twin_status\":"); w.string(d.delta.twinStatus)
        w.raw(",\"values\":{")
        var first = true
        for name in d.delta.values.keys.sorted(by: JSONValue.utf8Precedes) {
            if !first { w.raw(",") }
            first = false
            w.string(name)
            w.raw(":")
            w.double(d.delta.values[name])
        }
        w.raw("}},\"device\":"); w.string(d.device)
        w.raw(",\"failing\":[")
        for (i, f) in d.failing.enumerated() {
            w.raw(i == 0 ? "{\"check\":" : ",{\"check\":"); w.string(f.check.name)
            w.raw(",\"code\":"); w.int(Int64(f.code.rawValue))
            w.raw(",\"detail\":"); w.string(f.detail)
            w.raw("}")
        }
        w.raw("],\"intent\":"); w.string(d.intent)
        w.raw(",\"reason\":"); w.string(d.reason)
        w.raw(",\"reason_code\":"); w.int(Int64(d.reasonCode.rawValue))
        w.raw(",\"reason_name\":"); w.string(d.reasonCode.name)
        w.raw("}")
    }
}

/// Appends canonical JSON leaves exactly as `JSONValue.write(bytes:)` writes them.
struct CanonicalWriter {
    var out: [UInt8]

    @inline(__always) mutating func raw(_ s: StaticString) {
        out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    mutating func string(_ s: String?) {
        if let s { JSONValue.writeString(s, bytes: &out) } else { raw("null") }
    }

    mutating func int(_ i: Int64) { out.append(contentsOf: String(i).utf8) }

    mutating func bool(_ b: Bool) { b ? raw("true") : raw("false") }

    mutating func double(_ d: Double?) {
        if let d { out.append(contentsOf: JSONValue.format(d).utf8) } else { raw("null") }
    }
}
