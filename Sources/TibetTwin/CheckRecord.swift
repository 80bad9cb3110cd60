import Crypto

/// A SHA-256 digest held inline (32 bytes, no allocation), as a check record keeps its hash.
struct Digest256: Sendable, Hashable {
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    init(_ digest: SHA256Digest) {
        withUnsafeMutableBytes(of: &words) { dst in digest.withUnsafeBytes { dst.copyMemory(from: $0) } }
    }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: words, body)
    }

    static func == (a: Digest256, b: Digest256) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    func hash(into h: inout Hasher) { h.combine(words.0); h.combine(words.1); h.combine(words.2); h.combine(words.3) }
}

/// What every check token of one `SyncGuard` shares: the id prefix, node, actor and host, with
/// their escaped JSON made once, so a check copies bytes instead of scanning texts.
final class CheckChain: Sendable {
    let idPrefix: String
    let node: String
    let actor: String
    let host: String
    /// `"<actor>"`, `"<host>"`, `"<node>"`, escaped and quoted.
    let actorJSON: [UInt8]
    let hostJSON: [UInt8]
    let nodeJSON: [UInt8]
    /// The id prefix escaped, unquoted (an id is `"<prefix>-<serial>"`).
    let idPrefixEscaped: [UInt8]

    init(idPrefix: String, node: String, actor: String, host: String) {
        self.idPrefix = idPrefix
        self.node = node
        self.actor = actor
        self.host = host
        actorJSON = JSONValue.string(actor).canonicalBytes
        hostJSON = JSONValue.string(host).canonicalBytes
        nodeJSON = JSONValue.string(node).canonicalBytes
        idPrefixEscaped = Array(JSONValue.string(idPrefix).canonicalBytes.dropFirst().dropLast())
    }

    /// Token ids are `<idPrefix>-<serial>`, as `TokenChain` makes them.
    func tokenId(_ serial: UInt64) -> String { "\(idPrefix)-\(serial)" }
}

/// One library check as its audit token records it, kept compact: the decision, the numbers the
/// token's texts are made from (serial, clock reading), and the raw SHA-256 of the canonical bytes,
/// written straight from these values at check time. Its texts (`tokenId`, `timestamp`, the hex
/// hashes) and the `TibetToken` (JSON trees) are only built when someone asks; a test holds
/// `token.computeContentHash() == contentHash`.
///
/// A record's parent is the chain's previous token: `<prefix>-<serial − 1>` with `prevDigest`, or
/// none for the first (`prevDigest` nil).
final class CheckRecord: Sendable {
    let chain: CheckChain
    let serial: UInt64
    let wallNs: Int64
    let monotonicNs: Int64
    let decision: SyncDecision
    let mapSHA256: String?
    let twinSeq: UInt64?
    let safetyCritical: Bool
    /// SHA-256 of the canonical JSON of every field but `content_hash` and `signature`.
    let digest: Digest256
    let prevDigest: Digest256?

    static let why: StaticString = "library check(device:intent:) before the action"

    /// `erin`, when given, is the decision's canonical text kept from an earlier check (see `ErinText`).
    init(chain: CheckChain, serial: UInt64, now: ClockReading, decision: SyncDecision, sortedValues: [(String, Double)]?,
         erin: ErinText? = nil, mapSHA256: String?, twinSeq: UInt64?, safetyCritical: Bool, prevDigest: Digest256?,
         scratch: ByteSink) {
        self.chain = chain
        self.serial = serial
        wallNs = now.wallNs
        monotonicNs = now.monotonicNs
        self.decision = decision
        self.mapSHA256 = mapSHA256
        self.twinSeq = twinSeq
        self.safetyCritical = safetyCritical
        self.prevDigest = prevDigest
        scratch.reset()
        CheckRecord.writeHashed(chain: chain, serial: serial, wallNs: wallNs, monotonicNs: monotonicNs, decision: decision,
                                sortedValues: sortedValues, erin: erin, mapSHA256: mapSHA256, twinSeq: twinSeq,
                                safetyCritical: safetyCritical, prevDigest: prevDigest, into: scratch)
        digest = Digest256(SHA256.hash(data: scratch.bytes))
    }

    var tokenId: String { chain.tokenId(serial) }
    var parentId: String? { prevDigest == nil ? nil : chain.tokenId(serial &- 1) }
    /// `timestamp` and `eromheen.wall_time`: the wall clock of the check, to the microsecond.
    var timestamp: String { RFC3339.format(wallNs: wallNs, fractionDigits: 6) }
    var contentHash: String { digest.withUnsafeBytes { Hex.encode($0) } }
    var prevHash: String? { prevDigest.map { d in d.withUnsafeBytes { Hex.encode($0) } } }

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
            "node": .string(chain.node),
            "host": .string(chain.host),
            "version": .string(TibetTwinLibrary.version),
            "wall_time": .string(timestamp),
            "monotonic_ns": .int(monotonicNs),
        ]
    }

    var erachter: JSONValue {
        ["intent": .string(decision.intent), "why": .string(CheckRecord.why.description), "safety_critical": .bool(safetyCritical)]
    }

    /// The TIBET token (docs/audit.md) of this check: action `check`, ERIN the decision's JSON.
    var token: TibetToken {
        var t = TibetToken(tokenId: tokenId, action: .check, timestamp: timestamp, actor: chain.actor,
                           erin: decision.json, eraan: eraan, eromheen: eromheen, erachter: erachter,
                           parentId: parentId, prevHash: prevHash)
        // The stored hash is the one the chain links to (equal to the recomputed one; tested).
        t.contentHash = contentHash
        return t
    }

    // MARK: - Canonical bytes, written directly (keys in sorted order, as JSONValue.canonical)

    static func writeHashed(chain: CheckChain, serial: UInt64, wallNs: Int64, monotonicNs: Int64, decision d: SyncDecision,
                            sortedValues: [(String, Double)]?, erin: ErinText? = nil, mapSHA256: String?, twinSeq: UInt64?,
                            safetyCritical: Bool, prevDigest: Digest256?, into out: ByteSink) {
        let w = CanonicalWriter(out: out)
        w.raw("{\"action\":\"check\",\"actor\":"); w.bytes(chain.actorJSON)
        w.raw(",\"eraan\":{\"jis\":\"jis:"); w.out.appendEscaped(d.device); w.raw("\"")
        w.raw(",\"map_sha256\":"); w.string(mapSHA256)
        w.raw(",\"twin_seq\":"); if let twinSeq { w.int(Int64(clamping: twinSeq)) } else { w.raw("null") }
        w.raw("},\"erachter\":{\"intent\":"); w.string(d.intent)
        w.raw(",\"safety_critical\":"); w.bool(safetyCritical)
        w.raw(",\"why\":\""); w.raw(why); w.raw("\"")
        w.raw("},\"erin\":")
        if let erin {
            erin.write(d, w)
        } else {
            writeDecision(d, sortedValues: sortedValues, w)
        }
        w.raw(",\"eromheen\":{\"host\":"); w.bytes(chain.hostJSON)
        w.raw(",\"monotonic_ns\":"); w.int(monotonicNs)
        w.raw(",\"node\":"); w.bytes(chain.nodeJSON)
        w.raw(",\"version\":"); w.plain(TibetTwinLibrary.version)
        w.raw(",\"wall_time\":")
        let stampAt = out.count
        w.timestamp(wallNs)
        let stampLength = out.count - stampAt
        w.raw("},\"parent_id\":")
        if prevDigest != nil { w.tokenId(chain, serial &- 1) } else { w.raw("null") }
        w.raw(",\"prev_hash\":"); if let prevDigest { w.hex(prevDigest) } else { w.raw("null") }
        w.raw(",\"timestamp\":"); out.appendCopy(offset: stampAt, length: stampLength)  // the same text
        w.raw(",\"token_id\":"); w.tokenId(chain, serial)
        w.raw("}")
    }

    /// `SyncDecision.json`, canonical.
    /// `sortedValues`, when given, are `d.delta.values` in canonical key order (the guard keeps
    /// them sorted beside its cached deltas); otherwise they are sorted here.
    static func writeDecision(_ d: SyncDecision, sortedValues: [(String, Double)]? = nil, _ w: CanonicalWriter) {
        var ages = (0, 0, 0, 0)
        writeDecision(d, sortedValues: sortedValues, w, ages: &ages)
    }

    /// Writes the decision, noting where the two ages start and end (offsets into `w.out`).
    static func writeDecision(_ d: SyncDecision, sortedValues: [(String, Double)]?, _ w: CanonicalWriter,
                              ages: inout (Int, Int, Int, Int)) {
        w.raw("{\"allowed\":"); w.bool(d.allowed)
        w.raw(",\"blocked\":"); w.bool(!d.allowed)
        w.raw(",\"delta\":{\"drift_ms\":"); w.double(d.delta.driftMs)
        w.raw(",\"max_sensor\":"); w.string(d.delta.maxSensor)
        w.raw(",\"max_value_delta\":"); w.double(d.delta.maxValueDelta)
        w.raw(",\"physical_age_ms\":")
        ages.0 = w.out.count
        w.double(d.delta.physicalAgeMs)
        ages.1 = w.out.count
        w.raw(",\"physical_status\":"); w.string(d.delta.physicalStatus)
        if d.delta.physicalStatusDerived { w.raw(",\"physical_status_derived\":true") }
        w.raw(",\"twin_age_ms\":")
        ages.2 = w.out.count
        w.double(d.delta.twinAgeMs)
        ages.3 = w.out.count
        if let q = d.delta.twinQuality {
            w.raw(",\"twin_quality\":")
            let bytes = q.json.canonicalBytes
            bytes.withUnsafeBufferPointer { w.out.append($0) }
        }
        w.raw(",\"twin_status\":"); w.string(d.delta.twinStatus)
        w.raw(",\"values\":{")
        // The same value: equal, or both NaN (a PLC's float register can hold one; NaN ≠ NaN).
        assert(sortedValues.map {
            $0.count == d.delta.values.count
                && $0.allSatisfy { v in d.delta.values[v.0].map { $0 == v.1 || ($0.isNaN && v.1.isNaN) } ?? false }
        } ?? true, "sorted values disagree with the decision's")
        var first = true
        for (name, value) in sortedValues ?? d.delta.values.sorted(by: { JSONValue.utf8Precedes($0.key, $1.key) }).map({ ($0.key, $0.value) }) {
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

/// The canonical ERIN (the decision's JSON) of a permitted intent, kept between checks: while the
/// device's states stay the same, such a decision differs from one check to the next only in its
/// two ages, so the text around them is written once and copied after (the guard drops it with its
/// value deltas when a state arrives). `write` refuses a decision it was not made for (another
/// device, intent, verdict or reason), and in debug builds, where the tests run, compares every
/// use with a fresh writing.
final class ErinText: Sendable {
    let device: String
    let intent: String
    let reasonCode: ReasonCode
    /// Up to the physical age, between the ages, after the twin age.
    let head: [UInt8]
    let middle: [UInt8]
    let tail: [UInt8]

    /// The text of `d`, a permitted decision; nil for a blocked one (its texts vary with time).
    init?(_ d: SyncDecision, sortedValues: [(String, Double)]?, scratch: ByteSink) {
        guard d.allowed else { return nil }
        scratch.reset()
        var ages = (0, 0, 0, 0)
        CheckRecord.writeDecision(d, sortedValues: sortedValues, CanonicalWriter(out: scratch), ages: &ages)
        let b = scratch.bytes
        head = Array(b[..<ages.0])
        middle = Array(b[ages.1..<ages.2])
        tail = Array(b[ages.3...])
        device = d.device
        intent = d.intent
        reasonCode = d.reasonCode
    }

    /// Whether this is the text of `d` once its ages are filled in.
    func fits(_ d: SyncDecision) -> Bool {
        d.allowed && d.reasonCode == reasonCode && d.device == device && d.intent == intent
    }

    func write(_ d: SyncDecision, _ w: CanonicalWriter) {
        precondition(fits(d), "kept decision text used for another decision")
        w.bytes(head)
        w.double(d.delta.physicalAgeMs)
        w.bytes(middle)
        w.double(d.delta.twinAgeMs)
        w.bytes(tail)
        // Debug builds only (an assertion's condition is not evaluated in release builds).
        assert(Self.endsWithFreshWriting(of: d, w.out), "kept decision text differs from the decision")
    }

    /// Whether `out` ends with the decision's text as written afresh.
    static func endsWithFreshWriting(of d: SyncDecision, _ out: ByteSink) -> Bool {
        let fresh = ByteSink()
        CheckRecord.writeDecision(d, CanonicalWriter(out: fresh))
        let start = out.count - fresh.count
        return start >= 0 && Array(UnsafeRawBufferPointer(rebasing: out.bytes[start...])) == Array(fresh.bytes)
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

    /// Bytes already in canonical form (a `CheckChain`'s escaped texts).
    func bytes(_ b: [UInt8]) { b.withUnsafeBufferPointer { out.append($0) } }

    /// `"<prefix>-<serial>"`: the prefix escaped once by the chain, the rest digits.
    func tokenId(_ chain: CheckChain, _ serial: UInt64) {
        out.append(0x22)
        bytes(chain.idPrefixEscaped)
        out.append(0x2D)
        out.appendUInt(serial)
        out.append(0x22)
    }

    /// A digest as quoted lowercase hex.
    func hex(_ digest: Digest256) {
        out.append(0x22)
        digest.withUnsafeBytes { out.appendHex($0) }
        out.append(0x22)
    }

    /// `RFC3339.format(wallNs:fractionDigits: 6)`, quoted, without a string.
    func timestamp(_ wallNs: Int64) {
        out.append(0x22)
        out.appendTimestamp(wallNs: wallNs)
        out.append(0x22)
    }

    func bool(_ b: Bool) { b ? raw("true") : raw("false") }

    func double(_ d: Double?) {
        if let d { out.appendDouble(d) } else { raw("null") }
    }
}
