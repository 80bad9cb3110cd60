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

    static let why: StaticString = "library check(device:intent:) before the action"

    init(tokenId: String, now: ClockReading, node: String, actor: String, host: String, decision: SyncDecision,
         mapSHA256: String?, twinSeq: UInt64?, safetyCritical: Bool, parentId: String?, prevHash: String?,
         scratch: ByteSink) {
        self.tokenId = tokenId
        timestamp = RFC3339.format(wallNs: now.wallNs, fractionDigits: 6)
        self.actor = actor
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
        scratch.reset()
        CheckRecord.writeHashed(tokenId: tokenId, timestamp: timestamp, actor: actor, decision: decision,
                                mapSHA256: mapSHA256, twinSeq: twinSeq, node: node, host: host, wallTime: timestamp,
                                monotonicNs: monotonicNs, safetyCritical: safetyCritical, parentId: parentId,
                                prevHash: prevHash, into: scratch)
        contentHash = Hex.encode(SHA256.hash(data: scratch.bytes))
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
        ["intent": .string(decision.intent), "why": .string(CheckRecord.why.description), "safety_critical": .bool(safetyCritical)]
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
                            into out: ByteSink) {
        let w = CanonicalWriter(out: out)
        w.raw("{\"action\":\"check\",\"actor\":"); w.string(actor)
        w.raw(",\"eraan\":{\"jis\":\"jis:"); w.out.appendEscaped(d.device); w.raw("\"")
        w.raw(",\"map_sha256\":"); w.string(mapSHA256)
        w.raw(",\"twin_seq\":"); if let twinSeq { w.int(Int64(clamping: twinSeq)) } else { w.raw("null") }
        w.raw("},\"erachter\":{\"intent\":"); w.string(d.intent)
        w.raw(",\"safety_critical\":"); w.bool(safetyCritical)
        w.raw(",\"why\":\""); w.raw(why); w.raw("\"")
        w.raw("},\"erin\":"); writeDecision(d, w)
        w.raw(",\"eromheen\":{\"host\":"); w.string(host)
        w.raw(",\"monotonic_ns\":"); w.int(monotonicNs)
        w.raw(",\"node\":"); w.string(node)
        w.raw(",\"version\":"); w.plain(TibetTwinLibrary.version)
        w.raw(",\"wall_time\":"); w.plain(wallTime)
        w.raw("},\"parent_id\":"); w.string(parentId)
        w.raw(",\"prev_hash\":"); if let prevHash { w.plain(prevHash) } else { w.raw("null") }
        w.raw(",\"timestamp\":"); w.plain(timestamp)
        w.raw(",\"token_id\":"); w.string(tokenId)
        w.raw("}")
    }

    /// `SyncDecision.json`, canonical.
    static func writeDecision(_ d: SyncDecision, _ w: CanonicalWriter) {
        w.raw("{\"allowed\":"); w.bool(d.allowed)
        w.raw(",\"blocked\":"); w.bool(!d.allowed)
        w.raw(",\"delta\":{\"drift_ms\":"); w.double(d.delta.driftMs)
        w.raw(",\"max_sensor\":"); w.string(d.delta.maxSensor)
        w.raw(",\"max_value_delta\":"); w.double(d.delta.maxValueDelta)
        w.raw(",\"physical_age_ms\":"); w.double(d.delta.physicalAgeMs)
        w.raw(",\"physical_status\":"); w.string(d.delta.physicalStatus)
        if d.delta.physicalStatusDerived { w.raw(",\"physical_status_derived\":true") }
        w.raw(",\"twin_age_ms\":"); w.double(d.delta.twinAgeMs)
        if let q = d.delta.twinQuality {
            w.raw(",\"twin_quality\":")
            let bytes = q.json.canonicalBytes
            bytes.withUnsafeBufferPointer { w.out.append($0) }
        }
        w.raw(",\"twin_status\":"); w.string(d.delta.twinStatus)
        w.raw(",\"values\":{")
        var first = true
        for (name, value) in d.delta.values.sorted(by: { JSONValue.utf8Precedes($0.key, $1.key) }) {
            if !first { w.raw(",") }
            first = false
            w.string(name)
            w.raw(":")
            w.double(value)
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
        w.raw(",\"reason_name\":"); w.plain(d.reasonCode.name)
        w.raw("}")
    }
}

/// Appends canonical JSON leaves exactly as `JSONValue.write(bytes:)` writes them, into a
/// reused `ByteSink`.
struct CanonicalWriter {
    let out: ByteSink

    @inline(__always) func raw(_ s: StaticString) { out.append(s) }

    func string(_ s: String?) {
        guard let s else { return raw("null") }
        out.append(0x22)
        out.appendEscaped(s)
        out.append(0x22)
    }

    /// A string of ours that never needs escaping (timestamps, hex digests, version, contract
    /// names): quoted, not scanned (asserted in debug builds, where the tests run).
    func plain(_ s: String) {
        assert(!s.utf8.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }, "plain text needs escaping: \(s)")
        out.append(0x22)
        out.appendUTF8(s)
        out.append(0x22)
    }

    func int(_ i: Int64) { out.appendInt(i) }

    func bool(_ b: Bool) { b ? raw("true") : raw("false") }

    func double(_ d: Double?) {
        if let d { out.appendDouble(d) } else { raw("null") }
    }
}
