import Crypto
import Synchronization

/// Why a twin feed line was not applied (docs/twin-feed.md). The raw value is the stable label used in
/// metrics and logs (`tibet_twin_lines_dropped_total{reason="replay"}`).
public enum TwinDropReason: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Longer than `TwinLineParser.maxLineBytes` (64 KiB) before its newline.
    case tooLong = "too_long"
    /// Not valid UTF-8.
    case invalidUTF8 = "invalid_utf8"
    /// Not one well-formed JSON object.
    case notJSON = "not_json"
    /// The same member twice (at the top level or in `values`): ambiguous, so never guessed.
    case duplicateKey = "duplicate_key"
    /// `device`, `ts`, `status` or `values` absent.
    case missingField = "missing_field"
    /// A member of the wrong JSON type (e.g. `seq` a string, a value not a number).
    case wrongType = "wrong_type"
    /// A top-level member the format does not define. Strict on purpose: a misspelt
    /// `predicted` must not be silently ignored.
    case unknownField = "unknown_field"
    /// `ts` is not RFC 3339 with a time zone.
    case badTimestamp = "bad_timestamp"
    /// `device` names no loaded map.
    case unknownDevice = "unknown_device"
    /// `ts` is ahead of the receiving wall clock by more than the device's `max_skew_ms`.
    case futureTimestamp = "future_ts"
    /// `seq` not greater than the last accepted for the device (replay or reorder); or, for a
    /// line without `seq`, a `ts` older than the last accepted.
    case replay = "replay"
    /// `seq` is an integer above `TwinState.maxSeq` (2^53): a twin counting that high has a
    /// broken counter, and accepting it would make every later line a replay.
    case seqOutOfRange = "seq_out_of_range"
    /// The device has a `twin_key` and the line has no `sig` (an identity failure).
    case missingSignature = "missing_sig"
    /// The signature is not base64 of 64 bytes or does not verify (an identity failure).
    case badSignature = "bad_sig"
    /// `sig` is not the last member (an identity failure: the signed bytes are undefined).
    case signatureNotLast = "sig_not_last"
    /// A source lost the start or end of a line (a rotated or truncated file ended mid-line,
    /// a client disconnected mid-line).
    case incompleteLine = "incomplete_line"
    /// The line came on an MQTT topic that names another device than the line's `device`
    /// (an `mqtt` feed with `topic_names_device`).
    case topicMismatch = "topic_mismatch"
    /// A message on a Sparkplug B topic that is not a Sparkplug B payload (protobuf).
    case notSparkplug = "not_sparkplug"
    /// A Sparkplug B message that broke the host's view of its edge node: a `seq` gap, a DATA
    /// before its BIRTH, an unknown alias. Every device of that node blocks until a new NBIRTH.
    case sparkplugSequence = "sparkplug_sequence"

    public var description: String { rawValue }

    /// Whether this drop is a failed signature check, which blocks the device on `IDENTITY`.
    public var isIdentityFailure: Bool {
        self == .missingSignature || self == .badSignature || self == .signatureNotLast
    }
}

/// One dropped line: why, for which device (when it could be told), and a short detail for
/// the log (`seq 12 <= last accepted 40`). Never contains the line itself.
public struct TwinDrop: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: TwinDropReason
    public var device: String?
    public var detail: String

    public init(reason: TwinDropReason, device: String? = nil, detail: String) {
        self.reason = reason
        self.device = device
        self.detail = detail
    }

    public var description: String {
        if let device { return "\(reason) (\(device)): \(detail)" }
        return "\(reason): \(detail)"
    }
}

/// What became of one feed line.
///
/// - `accepted`: well-formed, authentic where a key is configured, current; `unknownValues`
///   lists value names the map does not know — they are reported, not applied, and the rest
///   of the line is applied (a name the map does not know is never compared, so ignoring it
///   cannot raise a permit; a misspelt name leaves the real one absent, which blocks).
/// - `identityFailure`: the device has a `twin_key` and the line's signature is missing, not
///   last, or invalid. The state carries `signature` `.missing`/`.invalid` and, where the
///   line parsed, its unverified content (else an empty status and no values, `ts` = receipt):
///   handing it to the guard blocks the device on `IDENTITY` until a valid line arrives. It
///   must only ever be used to block, and is never counted as accepted.
/// - `dropped`: nothing changes.
public enum TwinLineOutcome: Sendable, Hashable {
    case accepted(TwinState, unknownValues: [String])
    case identityFailure(TwinState, TwinDrop)
    case dropped(TwinDrop)
}

extension TwinState {
    /// Whether this state reports a failed signature check (see `TwinLineOutcome.identityFailure`):
    /// its content is unverified and it may only block.
    public var isIdentityFailure: Bool { signature == .missing || signature == .invalid }
}

/// An Ed25519 public key a twin signs its lines with.
///
/// `@unchecked Sendable`: `Curve25519.Signing.PublicKey` is an immutable value (32 bytes) that
/// swift-crypto does not mark `Sendable`; nothing here mutates it.
public struct TwinPublicKey: @unchecked Sendable {
    public let key: Curve25519.Signing.PublicKey

    public init(_ key: Curve25519.Signing.PublicKey) { self.key = key }

    /// Parses the project's key text (one base64 line of 32 bytes, `KeyText`).
    public init(text: String) throws(KeyText.Invalid) { key = try KeyText.publicKey(from: text) }
}

/// What the parser needs to know about one device.
public struct TwinDeviceRules: Sendable {
    public var device: String
    /// Value names the map declares (its registers).
    public var valueNames: Set<String>
    public var maxSkewMs: Double
    /// Set where the map names a `twin_key`: lines must then carry a valid `sig`.
    public var key: TwinPublicKey?
    /// How long the device must have had no accepted line before a line whose `seq` is not
    /// above the last accepted one may restart the count (`TwinValidator`, a twin restart or a
    /// `seq` that jumped ahead); `nil`: never (such a line is always a replay). From a map:
    /// `seqResetSilenceMs(maxAgeMs:)`.
    public var seqResetAfterMs: Double?

    public init(device: String, valueNames: Set<String>, maxSkewMs: Double, key: TwinPublicKey?,
                seqResetAfterMs: Double? = nil) {
        self.device = device
        self.valueNames = valueNames
        self.maxSkewMs = maxSkewMs
        self.key = key
        self.seqResetAfterMs = seqResetAfterMs
    }

    /// The silence after which a device's `seq` may restart (docs/twin-feed.md): twice its
    /// `max_age_ms`, at least one second. By then the device has blocked as `TWIN_STALE` for at
    /// least `max_age_ms`, so a restart never carries a permit over from the old count.
    public static func seqResetSilenceMs(maxAgeMs: Double) -> Double { Swift.max(1000, 2 * maxAgeMs) }
}

/// A map names a `twin_key` but no key was supplied for it.
public struct TwinKeyMissing: Error, Sendable, Hashable, CustomStringConvertible {
    public var device: String
    public var keyPath: String
    public var description: String { "device \(device): twin_key \(keyPath) was not loaded" }
}

/// Parses one twin feed line (docs/twin-feed.md) into a `TwinState`, or says why not. Pure and
/// stateless: `seq` ordering is `TwinValidator`'s job. Safe to call from several threads.
///
/// A hand-written scanner over the line's bytes: no generic JSON tree, one pass, numbers
/// parsed in place (the benchmark `TwinFeedBench` compares it with Foundation's `JSONDecoder`).
/// Checks, in this order: length, UTF-8, JSON syntax (one object, no trailing bytes), duplicate
/// top-level members, `device` (present, a string, known), the signature where the device has
/// a key (before anything else in the line is believed), unknown or mistyped members, required
/// members, `ts` (RFC 3339 with offset, not ahead by more than `max_skew_ms`).
public struct TwinLineParser: Sendable {
    /// The longest line accepted, newline excluded (docs/twin-feed.md: 64 KiB).
    public static let maxLineBytes = 65_536

    public let devices: [String: TwinDeviceRules]
    /// Tells parsers apart (a `TwinLineMemo` holds the lines of one).
    package let generation: UInt64
    private static let generations = Atomic<UInt64>(0)

    public init(rules: [TwinDeviceRules]) {
        var d: [String: TwinDeviceRules] = [:]
        for r in rules { d[r.device] = r }
        devices = d
        generation = Self.generations.add(1, ordering: .relaxed).newValue
    }

    /// Rules from loaded maps; `keys` maps device name to its twin key. Every map that names a
    /// `twin_key` must have a key here: a device whose key is missing is refused, never run unsigned.
    public init(maps: [DeviceMap], keys: [String: TwinPublicKey]) throws(TwinKeyMissing) {
        var rules: [TwinDeviceRules] = []
        for m in maps {
            var key: TwinPublicKey?
            if let path = m.twinKey {
                guard let k = keys[m.device] else { throw TwinKeyMissing(device: m.device, keyPath: path) }
                key = k
            }
            rules.append(TwinDeviceRules(device: m.device, valueNames: Set(m.registers.map(\.name)),
                                         maxSkewMs: m.limits.maxSkewMs, key: key,
                                         seqResetAfterMs: TwinDeviceRules.seqResetSilenceMs(maxAgeMs: m.limits.maxAgeMs)))
        }
        self.init(rules: rules)
    }

    /// Parses a line (without its newline) received at `received`.
    public func parse(_ line: some Collection<UInt8>, received: ClockReading) -> TwinLineOutcome {
        if let r = line.withContiguousStorageIfAvailable({ parse(buffer: $0, received: received) }) { return r }
        let copy = Array(line)
        return copy.withUnsafeBufferPointer { parse(buffer: $0, received: received) }
    }

    /// Parses a line held in raw memory; see `parse(_:received:)`.
    public func parse(bytes: UnsafeRawBufferPointer, received: ClockReading) -> TwinLineOutcome {
        parse(buffer: bytes.bindMemory(to: UInt8.self), received: received)
    }

    /// Parses a line held in a buffer; see `parse(_:received:)`.
    public func parse(buffer b: UnsafeBufferPointer<UInt8>, received: ClockReading) -> TwinLineOutcome {
        var spans: TwinLineMemo.Spans?
        return parse(buffer: b, received: received, spans: &spans)
    }

    /// Parses a line as `parse(buffer:received:)` does, unless it repeats its device's last
    /// accepted line in `memo` but for `ts` and `seq` (see `TwinLineMemo`): then the
    /// remembered state with the new `ts` and `seq`. Accepted lines are remembered.
    public func parse(buffer b: UnsafeBufferPointer<UInt8>, received: ClockReading, memo: inout TwinLineMemo) -> TwinLineOutcome {
        memo.start(generation: generation)
        if let repeated = memo.repeatOf(b, received: received) {
            assert(repeated == parse(buffer: b, received: received), "a remembered line parsed differently")
            return repeated
        }
        memo.countParsed()
        var spans: TwinLineMemo.Spans?
        let outcome = parse(buffer: b, received: received, spans: &spans)
        if let spans, case .accepted(let state, let unknown) = outcome {
            memo.remember(b, spans: spans, state: state, unknownValues: unknown)
        }
        return outcome
    }

    func parse(buffer b: UnsafeBufferPointer<UInt8>, received: ClockReading, spans: inout TwinLineMemo.Spans?) -> TwinLineOutcome {
        guard b.count <= Self.maxLineBytes else {
            return .dropped(TwinDrop(reason: .tooLong, detail: "\(b.count) bytes > \(Self.maxLineBytes)"))
        }
        if let bad = UTF8Check.firstInvalid(b) {
            return .dropped(TwinDrop(reason: .invalidUTF8, detail: "invalid UTF-8 at byte \(bad)"))
        }
        var s = TwinScanner(b: b)
        do {
            try s.scanLine()
        } catch {
            return .dropped(TwinDrop(reason: .notJSON, detail: error.description))
        }
        let f = s.fields
        if let dup = f.duplicate {
            return .dropped(TwinDrop(reason: .duplicateKey, detail: "member \"\(dup)\" appears twice"))
        }
        // The device first: it says which rules (and key) apply.
        guard let devRange = f.device else {
            if f.deviceWrongType { return .dropped(TwinDrop(reason: .wrongType, detail: "device: expected a string")) }
            return .dropped(TwinDrop(reason: .missingField, detail: "device is missing"))
        }
        let device = s.string(devRange)
        guard let rules = devices[device] else {
            return .dropped(TwinDrop(reason: .unknownDevice, detail: "no map for device \"\(Self.clip(device))\""))
        }
        var signature = SignatureCheck.notRequired
        if let key = rules.key {
            if let failure = verify(s: s, key: key, device: device) {
                return .identityFailure(identityState(s: s, rules: rules, check: failure.reason == .missingSignature ? .missing : .invalid,
                                                      received: received), failure)
            }
            signature = .valid
        }
        let (values, unknown, duplicateValue) = Self.values(s, rules)
        if let dup = duplicateValue {
            return .dropped(TwinDrop(reason: .duplicateKey, device: device, detail: "values.\(Self.clip(dup)) appears twice"))
        }
        if let u = f.unknownField {
            return .dropped(TwinDrop(reason: .unknownField, device: device, detail: "unknown member \"\(Self.clip(u))\""))
        }
        if let w = f.wrongType {
            return .dropped(TwinDrop(reason: .wrongType, device: device, detail: w))
        }
        if let big = f.seqOutOfRange {
            return .dropped(TwinDrop(reason: .seqOutOfRange, device: device,
                                     detail: "seq \(big) is above \(TwinState.maxSeq) (2^53, the largest exact JSON integer)"))
        }
        var missing: [String] = []
        if f.ts == nil { missing.append("ts") }
        if f.status == nil { missing.append("status") }
        if !f.hasValues { missing.append("values") }
        if !missing.isEmpty {
            return .dropped(TwinDrop(reason: .missingField, device: device, detail: missing.joined(separator: ", ") + " missing"))
        }
        guard let tsNs = s.timestamp(f.ts!) else {
            return .dropped(TwinDrop(reason: .badTimestamp, device: device,
                                     detail: "ts \"\(Self.clip(s.string(f.ts!)))\" is not RFC 3339 with a time zone"))
        }
        let aheadMs = Double(tsNs &- received.wallNs) / 1_000_000
        if tsNs > received.wallNs, aheadMs > rules.maxSkewMs {
            return .dropped(TwinDrop(reason: .futureTimestamp, device: device,
                                     detail: "ts is \(Int(aheadMs)) ms ahead of this clock (max_skew_ms \(Int(rules.maxSkewMs)))"))
        }
        let state = TwinState(device: device, tsNs: tsNs, seq: f.seq, status: s.string(f.status!), values: values,
                              predicted: f.predicted ?? false, modelVersion: f.modelVersion.map { s.string($0) },
                              signature: signature, received: received)
        // A line a memo may remember: unsigned, `{"device":"name",…` without escapes in the name
        // or the `ts`.
        if rules.key == nil, devRange.decoded == nil, devRange.lowerBound == TwinLineMemo.prefix.count,
           let ts = f.ts, ts.decoded == nil {
            spans = TwinLineMemo.Spans(ts: ts.lowerBound..<ts.upperBound, seq: f.seqRange, maxSkewMs: rules.maxSkewMs)
        }
        return .accepted(state, unknownValues: unknown)
    }

    /// The line's values the map knows, the names it does not, and the first name that appears
    /// twice (known or not).
    static func values(_ s: TwinScanner, _ rules: TwinDeviceRules) -> ([String: Double], [String], String?) {
        var values = [String: Double](minimumCapacity: s.fields.values.count)
        var unknown: [String] = []
        var unknownSet = Set<String>()
        var duplicate: String?
        for (ref, v) in s.fields.values {
            let name = s.text(ref)
            if rules.valueNames.contains(name) {
                if values.updateValue(v, forKey: name) != nil, duplicate == nil { duplicate = name }
            } else if unknownSet.insert(name).inserted {
                unknown.append(name)
            } else if duplicate == nil {
                duplicate = name
            }
        }
        return (values, unknown, duplicate)
    }

    /// Checks the `sig` of a line for a keyed device; `nil` when it verifies.
    func verify(s: TwinScanner, key: TwinPublicKey, device: String) -> TwinDrop? {
        let f = s.fields
        guard let sig = f.sig else {
            if f.sigWrongType { return TwinDrop(reason: .badSignature, device: device, detail: "sig is not a string") }
            return TwinDrop(reason: .missingSignature, device: device, detail: "the device has a twin_key and the line has no sig")
        }
        guard f.sigIsLast, let comma = f.sigMemberStart else {
            return TwinDrop(reason: .signatureNotLast, device: device, detail: "sig must be the last member")
        }
        guard let raw = Base64.decode(s.string(sig)), raw.count == 64 else {
            return TwinDrop(reason: .badSignature, device: device, detail: "sig is not base64 of 64 bytes")
        }
        // The signed bytes: the line with `,"sig":"…"` taken out (docs/twin-feed.md).
        let b = s.b
        let end = sig.upperBound + 1  // past the closing quote
        var message = [UInt8]()
        message.reserveCapacity(b.count - (end - comma))
        message.append(contentsOf: UnsafeBufferPointer(rebasing: b[0..<comma]))
        message.append(contentsOf: UnsafeBufferPointer(rebasing: b[end..<b.count]))
        guard key.key.isValidSignature(raw, for: message) else {
            return TwinDrop(reason: .badSignature, device: device, detail: "signature does not verify with the device's twin_key")
        }
        return nil
    }

    /// The blocking state handed on for an identity failure: what parsed of the line, flagged.
    func identityState(s: TwinScanner, rules: TwinDeviceRules, check: SignatureCheck, received: ClockReading) -> TwinState {
        let f = s.fields
        let ts = f.ts.flatMap { s.timestamp($0) } ?? received.wallNs
        return TwinState(device: rules.device, tsNs: ts, seq: f.seq, status: f.status.map { s.string($0) } ?? "",
                         values: Self.values(s, rules).0,
                         predicted: f.predicted ?? false, modelVersion: f.modelVersion.map { s.string($0) },
                         signature: check, received: received)
    }

    /// Bounds a quoted piece of input in a log detail.
    static func clip(_ s: String) -> String {
        s.utf8.count <= 64 ? s : String(s.prefix(60)) + "…"
    }
}

/// A device's `seq` count restarted (`TwinValidator.admit(_:seqReset:)`): a line whose `seq` is
/// not above the last accepted one was accepted because the device had been silent long enough
/// and the line is newer (`ts`) than anything accepted before. Goes on the audit chain as a
/// `twin_seq_reset` token before the line's state reaches the guard.
public struct TwinSeqReset: Sendable, Hashable {
    public var device: String
    /// The last accepted `seq` (the count given up) and the new line's `seq`.
    public var fromSeq: UInt64
    public var toSeq: UInt64
    /// How long no line had been accepted for the device, and the bound it passed.
    public var silentMs: Double
    public var afterMs: Double
    /// The last accepted line's `ts` and the new line's (ns since epoch; the new one is later).
    public var lastTsNs: Int64
    public var tsNs: Int64
    /// When the new line was received.
    public var received: ClockReading

    public init(device: String, fromSeq: UInt64, toSeq: UInt64, silentMs: Double, afterMs: Double,
                lastTsNs: Int64, tsNs: Int64, received: ClockReading) {
        self.device = device
        self.fromSeq = fromSeq
        self.toSeq = toSeq
        self.silentMs = silentMs
        self.afterMs = afterMs
        self.lastTsNs = lastTsNs
        self.tsNs = tsNs
        self.received = received
    }
}

/// Orders accepted lines per device: `seq` must increase (an older or repeated `seq` is a
/// replay or reorder and is dropped, docs/twin-feed.md); where the line or the last accepted one has no
/// `seq`, the line's `ts` must not be older than the last accepted `ts` of its device.
///
/// One way back from a `seq` that went ahead of the twin (a twin restarted at 1, or a counter
/// that jumped): a line whose `seq` is not above the last accepted one restarts the count only
/// when all of these hold (docs/twin-feed.md#seq):
///
/// - the device's rules have `seqResetAfterMs` and no line has been accepted for the device
///   for at least that long (by the monotonic receipt clock): the device has long blocked as
///   `TWIN_STALE`, so nothing permitted by the old count is carried over;
/// - the line's `ts` is later than the last accepted `ts`: a line sent before the last accepted
///   one (a recorded line replayed) never passes, however long the twin was silent;
/// - the caller's `seqReset` closure puts the restart on the record and answers true (the
///   appliance queues a `twin_seq_reset` audit token, and refuses while the audit chain is
///   unhealthy). Without it, the line is a replay.
///
/// A value type holding per-device state. It is not internally synchronised: whoever owns it
/// confines it to one thread or guards it with a lock (the appliance's feed pipeline holds it
/// in a `Mutex` shared by all sources, so a replay through another source is caught too).
/// `seq` state lives as long as the validator.
public struct TwinValidator: Sendable {
    public let parser: TwinLineParser
    /// What the validator keeps of a device's last accepted line.
    struct Last {
        var seq: UInt64?
        var tsNs: Int64
        var receivedNs: Int64
    }
    /// Per device slot (never removed, so a slot number a caller kept stays the device's):
    /// the name, the last accepted line (nil before the first and after `forget`) and the
    /// caller's source mark (`admit(_:source:slot:seqReset:)`).
    private var names: [String] = []
    private var lasts: [Last?] = []
    private var sources: [UInt64] = []
    private var slotOf: [String: Int] = [:]

    public init(parser: TwinLineParser) {
        self.parser = parser
    }

    /// The last accepted `seq` and `ts` per device, and when that line was received (monotonic ns).
    public var last: [String: (seq: UInt64?, tsNs: Int64, receivedNs: Int64)] {
        var out: [String: (seq: UInt64?, tsNs: Int64, receivedNs: Int64)] = [:]
        for (k, l) in lasts.enumerated() { if let l { out[names[k]] = (l.seq, l.tsNs, l.receivedNs) } }
        return out
    }

    /// Parses, checks and orders one line: `parser.parse` followed by `admit`.
    public mutating func validate(_ line: some Collection<UInt8>, received: ClockReading,
                                  seqReset: (TwinSeqReset) -> Bool = { _ in false }) -> TwinLineOutcome {
        admit(parser.parse(line, received: received), seqReset: seqReset)
    }

    /// The ordering step alone, for callers that parse (and verify signatures) outside a lock
    /// and take it only for this. Accepting moves the device's last `seq`/`ts`; identity
    /// failures and drops pass through and change nothing. `seqReset` is asked (and must put
    /// it on the record) before a line restarts the device's `seq` count (see the type's
    /// documentation); answering false drops the line as a replay.
    public mutating func admit(_ outcome: TwinLineOutcome,
                               seqReset: (TwinSeqReset) -> Bool = { _ in false }) -> TwinLineOutcome {
        var slot = -1
        return admit(outcome, slot: &slot, seqReset: seqReset)
    }

    /// `admit(_:seqReset:)` for a caller that keeps the device's slot number between lines
    /// (`slot`: -1 or a number this validator gave out; it is checked against the device's name,
    /// so a wrong one costs a lookup, never another device's state). On return it holds the
    /// slot of the line's device (-1 when the line was dropped before ordering).
    public mutating func admit(_ outcome: TwinLineOutcome, slot: inout Int,
                               seqReset: (TwinSeqReset) -> Bool = { _ in false }) -> TwinLineOutcome {
        guard case .accepted(let state, _) = outcome else { return outcome }
        let at = self.slot(of: state.device, hint: slot)
        slot = at
        if let prev = lasts[at] {
            if let seq = state.seq, let lastSeq = prev.seq {
                if seq <= lastSeq {
                    let silentMs = Double(state.received.monotonicNs &- prev.receivedNs) / 1_000_000
                    let afterMs = parser.devices[state.device]?.seqResetAfterMs
                    var why: String
                    if let afterMs {
                        if silentMs < afterMs {
                            why = "; a lower seq restarts the count only after \(Int(afterMs)) ms without an accepted line (\(Int(silentMs)) ms)"
                        } else if state.tsNs <= prev.tsNs {
                            why = "; not a restart: ts is not later than the last accepted"
                        } else if seqReset(TwinSeqReset(device: state.device, fromSeq: lastSeq, toSeq: seq, silentMs: silentMs,
                                                        afterMs: afterMs, lastTsNs: prev.tsNs, tsNs: state.tsNs,
                                                        received: state.received)) {
                            lasts[at] = Last(seq: seq, tsNs: state.tsNs, receivedNs: state.received.monotonicNs)
                            return outcome
                        } else {
                            why = "; a seq restart could not be put on the audit record"
                        }
                    } else {
                        why = ""
                    }
                    return .dropped(TwinDrop(reason: .replay, device: state.device,
                                             detail: "seq \(seq) <= last accepted \(lastSeq)" + why))
                }
            } else if state.tsNs < prev.tsNs {
                return .dropped(TwinDrop(reason: .replay, device: state.device,
                                         detail: "ts \(RFC3339.format(wallNs: state.tsNs)) older than the last accepted \(RFC3339.format(wallNs: prev.tsNs)) (no seq to order by)"))
            }
        }
        lasts[at] = Last(seq: state.seq ?? lasts[at]?.seq, tsNs: state.tsNs, receivedNs: state.received.monotonicNs)
        return outcome
    }

    /// Marks `device`'s slot with `source` and answers the mark it had (0 at first): the feed
    /// pipeline records there which source's line the guard got last. `slot` as in `admit`.
    public mutating func exchangeSource(device: String, slot: inout Int, _ source: UInt64) -> UInt64 {
        let at = self.slot(of: device, hint: slot)
        slot = at
        defer { sources[at] = source }
        return sources[at]
    }

    /// Forgets a device's ordering state (for example when its map changed on reload).
    public mutating func forget(device: String) {
        if let at = slotOf[device] { lasts[at] = nil }
    }

    /// The device's slot: `hint` when it is the device's, else found (or made) by name.
    private mutating func slot(of device: String, hint: Int) -> Int {
        if hint >= 0, hint < names.count, names[hint] == device { return hint }
        if let at = slotOf[device] { return at }
        names.append(device)
        lasts.append(nil)
        sources.append(0)
        slotOf[device] = names.count - 1
        return names.count - 1
    }
}
