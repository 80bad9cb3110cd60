import Crypto

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

/// The offline inputs of `tibet-twin check` (SPEC §6), parsed into the states the guard judges.
///
/// Offline, the monotonic clock is the wall clock: a state "arrived" at its own time (physical
/// `time`, twin `ts`), and ages are measured from `--now`.
///
/// The twin line is parsed minimally here, with its signature verified honestly (SPEC §3.3);
/// the appliance's feeds use the full validating parser.
public enum CheckInput {
    /// The Ed25519 public key a device's twin signs its lines with (the map's `twin_key`).
    public struct TwinKey: Sendable {
        let raw: [UInt8]

        /// Reads the key's text form (`KeyText`: one base64 line of the 32 raw bytes).
        public init(text: String) throws(KeyText.Invalid) {
            raw = Array(try KeyText.publicKey(from: text).rawRepresentation)
        }

        var key: Curve25519.Signing.PublicKey? { try? Curve25519.Signing.PublicKey(rawRepresentation: raw) }
    }

    /// The largest twin line accepted (SPEC §3.3).
    public static let maxLineBytes = 64 * 1024

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
            if !map.status.values.isEmpty, !map.status.values.values.contains(s) {
                throw fail("status", "\"\(s)\" is not a status of the map (\(map.status.values.sorted { $0.key < $1.key }.map(\.value).joined(separator: ", ")))")
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
                             time: ClockReading(monotonicNs: wallNs, wallNs: wallNs))
    }

    /// One twin feed line (SPEC §3.3). Where `twinKey` is given (the map has `twin_key`), the
    /// signature is verified: a missing, misplaced or wrong `sig` is not an input error but a
    /// state flagged `.missing`/`.invalid`, which blocks on IDENTITY.
    public static func twin(line raw: String, file: String, map: DeviceMap,
                            twinKey: TwinKey?) throws(CheckInputError) -> TwinState {
        func fail(_ field: String, _ problem: String) -> CheckInputError {
            CheckInputError(file: file, field: field, problem: problem)
        }
        var line = Substring(raw)
        while let last = line.last, last == "\n" || last == "\r\n" || last == "\r" { line = line.dropLast() }
        guard line.utf8.count <= maxLineBytes else { throw fail("", "line longer than 64 KiB") }
        guard !line.contains("\n") else { throw fail("", "expected one feed line, found several") }
        let root: JSONValue
        do { root = try JSONParser.parse(String(line)) } catch { throw fail("", "not JSON: \(error)") }
        guard case .object(let o) = root else { throw fail("", "expected a JSON object") }
        let device = try string(o, "device", fail)
        guard device == map.device else { throw fail("device", "\"\(device)\" is not the map's device \"\(map.device)\"") }
        let tsText = try string(o, "ts", fail)
        guard let tsNs = RFC3339.parse(tsText) else { throw fail("ts", "not an RFC 3339 time with offset: \"\(tsText)\"") }
        let status = try string(o, "status", fail)
        guard case .object(let vals) = o["values"] else {
            throw fail("values", o["values"] == nil ? "missing" : "expected an object")
        }
        var values: [String: Double] = [:]
        for (name, v) in vals {
            switch v {
            case .int(let i): values[name] = Double(i)
            case .double(let d): values[name] = d
            case .bool(let b): values[name] = b ? 1 : 0
            default: throw fail("values.\(name)", "expected a number or a boolean")
            }
        }
        var seq: UInt64?
        switch o["seq"] {
        case .none, .some(.null): break
        case .some(.int(let i)) where i >= 0: seq = UInt64(i)
        default: throw fail("seq", "expected a non-negative integer")
        }
        var predicted = false
        switch o["predicted"] {
        case .none, .some(.null): break
        case .some(.bool(let b)): predicted = b
        default: throw fail("predicted", "expected true or false")
        }
        var modelVersion: String?
        switch o["model_version"] {
        case .none, .some(.null): break
        case .some(.string(let s)): modelVersion = s
        default: throw fail("model_version", "expected a string")
        }
        let sig: String?
        switch o["sig"] {
        case .none: sig = nil
        case .some(.string(let s)): sig = s
        default: throw fail("sig", "expected a base64 string")
        }
        var signature = SignatureCheck.notRequired
        if let twinKey {
            signature = verify(line: line, sig: sig, key: twinKey.key)
        }
        return TwinState(device: device, tsNs: tsNs, seq: seq, status: status, values: values,
                         predicted: predicted, modelVersion: modelVersion, signature: signature,
                         received: ClockReading(monotonicNs: tsNs, wallNs: tsNs))
    }

    /// Ed25519 over the line's bytes with the final `,"sig":"…"` member taken out (SPEC §3.3).
    static func verify(line: Substring, sig: String?, key: Curve25519.Signing.PublicKey?) -> SignatureCheck {
        guard let sig else { return .missing }
        guard let key else { return .invalid }
        guard let signed = signedBytes(of: line, sig: sig), let raw = Base64.decode(sig) else { return .invalid }
        return key.isValidSignature(raw, for: signed) ? .valid : .invalid
    }

    /// The signed bytes: the line without its last member `,"sig":"<sig>"`, which must be
    /// written exactly so and be followed only by the closing brace (and blanks). `nil` if not.
    static func signedBytes(of line: Substring, sig: String) -> [UInt8]? {
        let bytes = Array(line.utf8)
        let member = Array(",\"sig\":\"\(sig)\"".utf8)
        var end = bytes.count
        while end > 0, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
        guard end > 0, bytes[end - 1] == UInt8(ascii: "}") else { return nil }
        var close = end - 1
        while close > 0, bytes[close - 1] == 0x20 || bytes[close - 1] == 0x09 { close -= 1 }
        let start = close - member.count
        guard start > 0, Array(bytes[start..<close]) == member else { return nil }
        return Array(bytes[..<start]) + Array(bytes[close...])
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
