/// Why an input of `tibet-twin check` was refused: the file, the field, the problem.
public struct CheckInputError: Error, Sendable, Hashable, CustomStringConvertible {
    public var file: String
    /// The key path in the file (`values.load_kg`), empty for the file as a whole.
    public var field: String
    public var problem: String

    public init(file: String, field: String, problem: String) {
        self.file = file
        self.field = field
        self.problem = problem
    }

    public var description: String { field.isEmpty ? "\(file): \(problem)" : "\(file): \(field): \(problem)" }
}

/// The offline inputs of `tibet-twin check` (docs/cli.md), parsed into the states the guard judges.
///
/// Offline, the monotonic clock is the wall clock: a state "arrived" at its own time (physical
/// `time`, twin `ts`), and ages are measured from `--now`.
///
/// The twin line is read by the feeds' own `TwinLineParser` (docs/twin-feed.md), signature included.
public enum CheckInput {
    /// A physical state file: `{"device":…,"time":"<RFC 3339>","status":"operational",
    /// "values":{"position_x":12.5,…}}`, where a value may also be `{"value":…,"quality":…}`
    /// (the output of `read --json` is accepted as is). Optional: `"identity"` (`ok`,
    /// `unknown`, `mismatch…`; otherwise judged from identity registers among the values) and
    /// `"error"` (the poll failed). Mapped registers left out count as not read.
    public static func physical(json text: String, file: String, map: DeviceMap) throws(CheckInputError) -> PhysicalState {
        func fail(_ field: String, _ problem: String) -> CheckInputError {
            CheckInputError(file: file, field: field, problem: problem)
        }
        let root: JSONValue
        do { root = try JSONParser.parse(text) } catch { throw fail("", "not JSON: \(error)") }
        guard case .object(let o) = root else { throw fail("", "expected a JSON object") }
        let device = try string(o, "device", fail)
        guard device == map.device else { throw fail("device", "\"\(device)\" is not the map's device \"\(map.device)\"") }
        let timeText = try string(o, "time", fail)
        guard let wallNs = RFC3339.parse(timeText) else {
            throw fail("time", "not an RFC 3339 time with offset: \"\(timeText)\"")
        }
        var status: String?
        var statusQuality = Quality.good
        switch o["status"] {
        case .some(.string(let s)):
            status = s
            if let spec = map.status {
                if !spec.values.isEmpty, !spec.values.values.contains(s) {
                    throw fail("status", "\"\(s)\" is not a status of the map (\(spec.values.sorted { $0.key < $1.key }.map(\.value).joined(separator: ", ")))")
                }
            } else if s != "operational" {
                throw fail("status", "\"\(s)\" is not a status of the map (it has no status register: its status is derived, operational or null)")
            }
        case .some(.null): statusQuality = .badDecode
        case .none: throw fail("status", "missing")
        default: throw fail("status", "expected a string or null")
        }
        if let q = o["status_quality"] {
            guard let text = q.stringValue, let parsed = Quality(text: text) else {
                throw fail("status_quality", "expected a quality (good, bad_comm, bad_timeout, bad_exception(n), bad_decode, uncertain_stale)")
            }
            statusQuality = parsed
        }
        guard case .object(let vals) = o["values"] else {
            throw fail("values", o["values"] == nil ? "missing" : "expected an object")
        }
        var readings: [String: Reading] = [:]
        var identityValues: [String: Value] = [:]
        for (name, v) in vals {
            let field = "values.\(name)"
            let reading = try reading(v, field, fail)
            if map.register(named: name) != nil {
                readings[name] = reading
            } else if map.identity.contains(where: { $0.register.name == name }) {
                if let value = reading.value, reading.quality.isGood { identityValues[name] = value }
            } else {
                throw fail(field, "not a register of \(map.device) (registers: \(map.registers.map(\.name).joined(separator: ", ")))")
            }
        }
        var identity = IdentityResult.notConfigured
        if !map.identity.isEmpty {
            switch o["identity"] {
            case .some(.string(let s)):
                switch s {
                case "ok": identity = .ok
                case "unknown": identity = .unknown
                case "not_configured": identity = .notConfigured
                default:
                    guard s.hasPrefix("mismatch") else {
                        throw fail("identity", "expected ok, unknown, not_configured or mismatch…")
                    }
                    identity = .mismatch(register: "", expected: "", got: s)
                }
            case .none:
                identity = .ok
                for spec in map.identity {
                    guard let got = identityValues[spec.register.name] else { identity = .unknown; break }
                    if !same(got, spec.expect) {
                        identity = .mismatch(register: spec.register.name, expected: spec.expect.description,
                                             got: got.description)
                        break
                    }
                }
            default: throw fail("identity", "expected a string")
            }
        }
        var pollError: String?
        switch o["error"] {
        case .none, .some(.null): break
        case .some(.string(let e)): pollError = e
        default: throw fail("error", "expected a string or null")
        }
        return PhysicalState(device: device, status: status, statusQuality: statusQuality, values: readings,
                             identity: identity, pollError: pollError,
                             time: ClockReading(monotonicNs: wallNs, wallNs: wallNs), statusDerived: map.status == nil)
    }

    /// One twin feed line (docs/twin-feed.md), read by the appliance's own `TwinLineParser`, so `check`
    /// and a running appliance accept exactly the same lines. Where `twinKey` is given (the map
    /// has `twin_key`), the signature is verified: a missing, misplaced or wrong `sig` is not an
    /// input error but a state flagged `.missing`/`.invalid`, which blocks on IDENTITY.
    ///
    /// Two differences from a feed, both because one line is judged alone: a `ts` ahead of
    /// `--now` is not dropped but handed to the guard, which blocks it as TWIN_STALE and says
    /// by how much; and `seq` ordering (replay) needs a history, so it does not apply. The line
    /// "arrived" at its own `ts` (a line whose signature fails before its `ts` could be read is
    /// dated `now`). Value names the map does not know are returned in `unknownValues` (a feed
    /// reports and skips them as well).
    public static func twin(line raw: String, file: String, map: DeviceMap, twinKey: TwinPublicKey?,
                            now: ClockReading) throws(CheckInputError) -> (state: TwinState, unknownValues: [String]) {
        var bytes = Array(raw.utf8)
        // One line with its line end, as a feed splits it (`\n`, a preceding `\r` dropped too).
        if bytes.last == 0x0A { bytes.removeLast() }
        if bytes.last == 0x0D { bytes.removeLast() }
        guard !bytes.contains(0x0A) else {
            throw CheckInputError(file: file, field: "", problem: "expected one feed line, found several")
        }
        // Skew is left to the guard (max_skew_ms = ∞ here): it explains the block.
        let rules = TwinDeviceRules(device: map.device, valueNames: Set(map.registers.map(\.name)),
                                    maxSkewMs: .infinity, key: twinKey)
        let outcome = TwinLineParser(rules: [rules]).parse(bytes, received: now)
        var state: TwinState
        var unknown: [String] = []
        switch outcome {
        case .accepted(let s, let u):
            state = s
            unknown = u
        case .identityFailure(let s, _):
            state = s
        case .dropped(let drop):
            throw inputError(drop, file: file, map: map)
        }
        state.received = ClockReading(monotonicNs: state.tsNs, wallNs: state.tsNs)
        return (state, unknown)
    }

    /// A dropped line as `check`'s one-line error: the file, the field the drop names, why.
    static func inputError(_ drop: TwinDrop, file: String, map: DeviceMap) -> CheckInputError {
        let detail = drop.detail
        func fail(_ field: String, _ problem: String) -> CheckInputError {
            CheckInputError(file: file, field: field, problem: problem)
        }
        /// The text between `prefix` and the next quote.
        func quoted(after prefix: String) -> String? {
            guard detail.hasPrefix(prefix) else { return nil }
            let rest = detail.dropFirst(prefix.count)
            return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
        }
        switch drop.reason {
        case .unknownDevice:
            return fail("device", "\(detail) (the map's device is \"\(map.device)\")")
        case .badTimestamp, .futureTimestamp:
            return fail("ts", detail)
        case .missingField:
            // "ts, status missing" / "device is missing"
            if detail.hasSuffix(" is missing") { return fail(String(detail.dropLast(11)), "missing") }
            if detail.hasSuffix(" missing") { return fail(String(detail.dropLast(8)), "missing") }
            return fail("", detail)
        case .wrongType:
            // "values.load_kg: expected a number"
            guard let colon = detail.firstRange(of: ": ") else { return fail("", detail) }
            return fail(String(detail[..<colon.lowerBound]), String(detail[colon.upperBound...]))
        case .duplicateKey:
            // `member "x" appears twice` / `values.x appears twice`
            if let name = quoted(after: "member \"") { return fail(name, "appears twice") }
            if detail.hasSuffix(" appears twice") { return fail(String(detail.dropLast(14)), "appears twice") }
            return fail("", detail)
        case .unknownField:
            guard let name = quoted(after: "unknown member \"") else { return fail("", detail) }
            return fail(name, "not a member of a feed line (device, ts, seq, status, values, predicted, model_version, sig)")
        case .notJSON:
            return fail("", "not JSON: \(detail)")
        case .tooLong:
            return fail("", "line longer than 64 KiB (\(detail))")
        default:
            return fail("", "\(drop.reason): \(detail)")
        }
    }

    /// `--now`: an RFC 3339 time as an offline clock reading.
    public static func now(_ text: String) -> ClockReading? {
        RFC3339.parse(text).map { ClockReading(monotonicNs: $0, wallNs: $0) }
    }

    static func string(_ o: [String: JSONValue], _ key: String,
                       _ fail: (String, String) -> CheckInputError) throws(CheckInputError) -> String {
        switch o[key] {
        case .some(.string(let s)): return s
        case .none: throw fail(key, "missing")
        default: throw fail(key, "expected a string")
        }
    }

    static func reading(_ v: JSONValue, _ field: String,
                        _ fail: (String, String) -> CheckInputError) throws(CheckInputError) -> Reading {
        switch v {
        case .int(let i): return Reading(value: .int(i), quality: .good)
        case .double(let d): return Reading(value: .double(d), quality: .good)
        case .bool(let b): return Reading(value: .bool(b), quality: .good)
        case .string(let s): return Reading(value: .string(s), quality: .good)
        case .object(let o):
            var quality = Quality.good
            if let q = o["quality"] {
                guard let text = q.stringValue, let parsed = Quality(text: text) else {
                    throw fail("\(field).quality", "expected a quality (good, bad_comm, bad_timeout, bad_exception(n), bad_decode, uncertain_stale)")
                }
                quality = parsed
            }
            let value: Value?
            switch o["value"] {
            case .some(.int(let i)): value = .int(i)
            case .some(.double(let d)): value = .double(d)
            case .some(.bool(let b)): value = .bool(b)
            case .some(.string(let s)): value = .string(s)
            case .some(.null), .none: value = nil
            default: throw fail("\(field).value", "expected a number, boolean, string or null")
            }
            if value == nil, quality.isGood { throw fail("\(field).value", "missing, with quality good") }
            return Reading(value: value, quality: quality)
        default:
            throw fail(field, "expected a number, boolean, string or {\"value\":…,\"quality\":…}")
        }
    }

    /// Identity comparison: numerically where both are numbers, else by text.
    static func same(_ a: Value, _ b: Value) -> Bool {
        if let x = a.number, let y = b.number { return x == y }
        return a.description == b.description
    }
}
