/// A JSON syntax error in a twin line: where and what.
struct TwinSyntaxError: Error, CustomStringConvertible {
    var offset: Int
    var message: String
    var description: String { "byte \(offset): \(message)" }
}

/// A string member's content: the bytes between its quotes, and the decoded text when it held
/// escapes (decoded once, at scan time, which is also where escapes are validated).
struct TwinStringRef {
    /// Index of the first content byte.
    var lowerBound: Int
    /// Index of the closing quote.
    var upperBound: Int
    var decoded: String?
}

/// What the scan of one line found. Semantic problems are recorded, not thrown, so a syntax
/// error anywhere in the line still wins (`not_json`), and the caller can order its checks.
struct TwinFields {
    var device: TwinStringRef?
    var deviceWrongType = false
    var ts: TwinStringRef?
    var status: TwinStringRef?
    var modelVersion: TwinStringRef?
    var sig: TwinStringRef?
    var sigWrongType = false
    /// Index of the comma that precedes the `sig` member (nil when `sig` is the first member).
    var sigMemberStart: Int?
    var sigIsLast = false
    var seq: UInt64?
    /// Where `seq`'s digits are, when it was accepted as an integer.
    var seqRange: Range<Int>?
    /// A `seq` that is an integer but above `TwinState.maxSeq` (the digits, for the log).
    var seqOutOfRange: String?
    var predicted: Bool?
    var hasValues = false
    /// The members of `values`, in line order (names not yet checked against a map, nor for
    /// duplicates: `TwinLineParser` does both in one pass).
    var values: [(name: TwinStringRef, value: Double)] = []
    /// The first duplicated top-level member.
    var duplicate: String?
    /// The first top-level member the format does not define.
    var unknownField: String?
    /// The first wrong-type problem, as a log detail.
    var wrongType: String?
}

/// The one-pass scanner behind `TwinLineParser`. Strict RFC 8259 syntax; the line must be one
/// object with nothing but whitespace after it.
struct TwinScanner {
    static let maxDepth = 32

    let b: UnsafeBufferPointer<UInt8>
    var i = 0
    var fields = TwinFields()

    init(b: UnsafeBufferPointer<UInt8>) { self.b = b }

    private enum Member { case device, ts, seq, status, values, predicted, modelVersion, sig, unknown }

    // MARK: The line

    mutating func scanLine() throws(TwinSyntaxError) {
        skipWS()
        guard i < b.count, b[i] == UInt8(ascii: "{") else { throw err(i < b.count ? "not a JSON object" : "empty") }
        i += 1
        skipWS()
        var seen: UInt16 = 0
        var index = 0
        var sigIndex = -1
        var comma: Int? = nil
        if i < b.count, b[i] == UInt8(ascii: "}") {
            i += 1
        } else {
            while true {
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw err("expected a member name") }
                let key = try scanString()
                let member = identify(key)
                if member != .unknown {
                    let bit: UInt16 = 1 << Self.bitIndex(member)
                    if seen & bit != 0, fields.duplicate == nil { fields.duplicate = text(key) }
                    seen |= bit
                }
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw err("expected ':'") }
                i += 1
                skipWS()
                guard i < b.count else { throw err("unexpected end of line") }
                let c = b[i]
                switch member {
                case .device:
                    if c == UInt8(ascii: "\"") { fields.device = try scanString() } else { fields.deviceWrongType = true; try skipValue(depth: 1) }
                case .ts:
                    if c == UInt8(ascii: "\"") { fields.ts = try scanString() } else { wrong("ts: expected an RFC 3339 string"); try skipValue(depth: 1) }
                case .status:
                    if c == UInt8(ascii: "\"") { fields.status = try scanString() } else { wrong("status: expected a string"); try skipValue(depth: 1) }
                case .modelVersion:
                    if c == UInt8(ascii: "\"") { fields.modelVersion = try scanString() } else { wrong("model_version: expected a string"); try skipValue(depth: 1) }
                case .sig:
                    if c == UInt8(ascii: "\"") {
                        fields.sig = try scanString()
                        fields.sigMemberStart = comma
                        sigIndex = index
                    } else {
                        // Keyed devices fail their signature check on this; for the others it
                        // is a wrong type like any other, never silently ignored.
                        fields.sigWrongType = true
                        wrong("sig: expected a string (the base64 Ed25519 signature)")
                        try skipValue(depth: 1)
                    }
                case .seq:
                    let start = i
                    if c == UInt8(ascii: "-") || (c >= 48 && c <= 57) {
                        let isInt = try scanNumber()
                        if isInt, b[start] != UInt8(ascii: "-") {
                            // Above 2^53 (or above UInt64) a JSON number is no longer exact in
                            // most twins' JSON libraries, and a seq that high would leave no room
                            // to count on: a drop of its own (`seq_out_of_range`), never accepted.
                            if let v = Self.uint64(b, start, i), v <= TwinState.maxSeq {
                                fields.seq = v
                                fields.seqRange = start..<i
                            } else if fields.seqOutOfRange == nil {
                                fields.seqOutOfRange = String(decoding: UnsafeBufferPointer(rebasing: b[start..<min(i, start + 24)]), as: UTF8.self)
                            }
                        } else {
                            wrong("seq: expected an integer 0 … \(TwinState.maxSeq)")
                        }
                    } else {
                        wrong("seq: expected an integer")
                        try skipValue(depth: 1)
                    }
                case .predicted:
                    if c == UInt8(ascii: "t") { try literal("true"); fields.predicted = true }
                    else if c == UInt8(ascii: "f") { try literal("false"); fields.predicted = false }
                    else { wrong("predicted: expected true or false"); try skipValue(depth: 1) }
                case .values:
                    if c == UInt8(ascii: "{") { fields.hasValues = true; try scanValues() } else { wrong("values: expected an object"); try skipValue(depth: 1) }
                case .unknown:
                    if fields.unknownField == nil { fields.unknownField = text(key) }
                    try skipValue(depth: 1)
                }
                skipWS()
                guard i < b.count else { throw err("unexpected end of line") }
                if b[i] == UInt8(ascii: ",") {
                    comma = i
                    i += 1
                    skipWS()
                    index += 1
                    continue
                }
                if b[i] == UInt8(ascii: "}") { i += 1; break }
                throw err("expected ',' or '}'")
            }
        }
        skipWS()
        guard i == b.count else { throw err("trailing characters after the object") }
        fields.sigIsLast = sigIndex >= 0 && sigIndex == index
    }

    private static func bitIndex(_ m: Member) -> UInt16 {
        switch m {
        case .device: return 0
        case .ts: return 1
        case .seq: return 2
        case .status: return 3
        case .values: return 4
        case .predicted: return 5
        case .modelVersion: return 6
        case .sig: return 7
        case .unknown: return 8
        }
    }

    private mutating func wrong(_ detail: String) {
        if fields.wrongType == nil { fields.wrongType = detail }
    }

    private func identify(_ key: TwinStringRef) -> Member {
        if let d = key.decoded {
            switch d {
            case "device": return .device
            case "ts": return .ts
            case "seq": return .seq
            case "status": return .status
            case "values": return .values
            case "predicted": return .predicted
            case "model_version": return .modelVersion
            case "sig": return .sig
            default: return .unknown
            }
        }
        let n = key.upperBound - key.lowerBound
        switch n {
        case 2: return matches(key, "ts") ? .ts : .unknown
        case 3: return matches(key, "seq") ? .seq : matches(key, "sig") ? .sig : .unknown
        case 6: return matches(key, "device") ? .device : matches(key, "status") ? .status : matches(key, "values") ? .values : .unknown
        case 9: return matches(key, "predicted") ? .predicted : .unknown
        case 13: return matches(key, "model_version") ? .modelVersion : .unknown
        default: return .unknown
        }
    }

    private func matches(_ r: TwinStringRef, _ word: StaticString) -> Bool {
        let w = word.utf8Start
        for k in 0..<word.utf8CodeUnitCount where b[r.lowerBound + k] != w[k] { return false }
        return true
    }

    // MARK: values

    private mutating func scanValues() throws(TwinSyntaxError) {
        i += 1  // {
        skipWS()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return }
        while true {
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw err("expected a value name") }
            let key = try scanString()
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw err("expected ':'") }
            i += 1
            skipWS()
            guard i < b.count else { throw err("unexpected end of line") }
            let c = b[i]
            var v: Double?
            if c == UInt8(ascii: "-") || (c >= 48 && c <= 57) {
                let start = i
                _ = try scanNumber()
                v = Self.double(b, start, i)
                if v == nil { wrong("values.\(TwinLineParser.clip(text(key))): number out of range") }
            } else if c == UInt8(ascii: "t") {
                try literal("true"); v = 1
            } else if c == UInt8(ascii: "f") {
                try literal("false"); v = 0
            } else {
                wrong("values.\(TwinLineParser.clip(text(key))): expected a number")
                try skipValue(depth: 2)
            }
            if let v {
                if fields.values.isEmpty { fields.values.reserveCapacity(8) }
                fields.values.append((key, v))
            }
            skipWS()
            guard i < b.count else { throw err("unexpected end of line") }
            if b[i] == UInt8(ascii: ",") { i += 1; skipWS(); continue }
            if b[i] == UInt8(ascii: "}") { i += 1; return }
            throw err("expected ',' or '}'")
        }
    }

    // MARK: Syntax

    @inline(__always)
    private mutating func skipWS() {
        while i < b.count {
            let c = b[i]
            guard c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D else { return }
            i += 1
        }
    }

    private func err(_ m: String) -> TwinSyntaxError { TwinSyntaxError(offset: i, message: m) }

    private mutating func skipValue(depth: Int) throws(TwinSyntaxError) {
        guard depth <= Self.maxDepth else { throw err("nested too deeply") }
        guard i < b.count else { throw err("unexpected end of line") }
        switch b[i] {
        case UInt8(ascii: "\""):
            _ = try scanString()
        case UInt8(ascii: "{"):
            i += 1
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return }
            while true {
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw err("expected a member name") }
                _ = try scanString()
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw err("expected ':'") }
                i += 1
                skipWS()
                try skipValue(depth: depth + 1)
                skipWS()
                guard i < b.count else { throw err("unexpected end of line") }
                if b[i] == UInt8(ascii: ",") { i += 1; skipWS(); continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return }
                throw err("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return }
            while true {
                try skipValue(depth: depth + 1)
                skipWS()
                guard i < b.count else { throw err("unexpected end of line") }
                if b[i] == UInt8(ascii: ",") { i += 1; skipWS(); continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return }
                throw err("expected ',' or ']'")
            }
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default: _ = try scanNumber()
        }
    }

    private mutating func literal(_ word: StaticString) throws(TwinSyntaxError) {
        try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.literal(word) }
    }

    /// Runs one step of the shared `JSONLexer` from here; its errors as `TwinSyntaxError`.
    private mutating func lex<R>(_ step: (inout JSONLexer) throws(JSONParseError) -> R) throws(TwinSyntaxError) -> R {
        var l = JSONLexer(b: b, i: i)
        defer { i = l.i }
        do { return try step(&l) } catch { throw TwinSyntaxError(offset: error.offset, message: error.message) }
    }

    /// Scans a JSON number; returns whether it is an integer (no fraction, no exponent).
    private mutating func scanNumber() throws(TwinSyntaxError) -> Bool {
        try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.number() }
    }

    /// Scans a string starting at its opening quote; validates escapes (decoding them once).
    private mutating func scanString() throws(TwinSyntaxError) -> TwinStringRef {
        let (content, decoded) = try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.string() }
        // The line was checked to be UTF-8 before scanning, and escapes decode to valid UTF-8.
        return TwinStringRef(lowerBound: content.lowerBound, upperBound: content.upperBound,
                             decoded: decoded.map { String(decoding: $0, as: UTF8.self) })
    }

    // MARK: Values out of the line

    /// The text of a scanned string (the line was checked to be UTF-8 before scanning).
    func text(_ r: TwinStringRef) -> String {
        if let d = r.decoded { return d }
        return String(decoding: UnsafeBufferPointer(rebasing: b[r.lowerBound..<r.upperBound]), as: UTF8.self)
    }

    func string(_ r: TwinStringRef) -> String { text(r) }

    /// A scanned string as an RFC 3339 time in ns since the epoch.
    func timestamp(_ r: TwinStringRef) -> Int64? {
        if let d = r.decoded { return RFC3339.parse(d) }
        return RFC3339.parse(bytes: UnsafeBufferPointer(rebasing: b[r.lowerBound..<r.upperBound]))
    }

    static func uint64(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> UInt64? {
        var v: UInt64 = 0
        for k in start..<end {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(b[k] &- 48))
            if o1 || o2 { return nil }
            v = s
        }
        return v
    }

    static let powersOf10: [Double] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
                                       1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]

    /// A syntactically valid JSON number as a finite `Double`, correctly rounded; `nil` when it
    /// overflows. Up to 15 significant digits and a decimal exponent within ±22 take the exact
    /// fast path (both operands exact, one IEEE operation); anything else goes to the standard
    /// library's parser.
    static func double(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
        var k = start
        let negative = b[k] == UInt8(ascii: "-")
        if negative { k += 1 }
        var m: UInt64 = 0
        var sig = 0
        var e = 0
        while k < end, b[k] >= 48, b[k] <= 57 {
            let d = b[k] &- 48
            if sig > 0 || d != 0 { m = m &* 10 &+ UInt64(d); sig += 1 }
            k += 1
        }
        if k < end, b[k] == UInt8(ascii: ".") {
            k += 1
            while k < end, b[k] >= 48, b[k] <= 57 {
                let d = b[k] &- 48
                if sig > 0 || d != 0 { m = m &* 10 &+ UInt64(d); sig += 1 }
                e -= 1
                k += 1
            }
        }
        var fast = sig <= 15
        if k < end {  // exponent
            k += 1
            var expNeg = false
            if b[k] == UInt8(ascii: "+") { k += 1 } else if b[k] == UInt8(ascii: "-") { expNeg = true; k += 1 }
            var x = 0
            while k < end {
                if x < 100_000 { x = x * 10 + Int(b[k] &- 48) } else { fast = false }
                k += 1
            }
            e += expNeg ? -x : x
        }
        if fast {
            if m == 0 { return negative ? -0.0 : 0.0 }
            if e >= -22, e <= 22 {
                let d = Double(m)
                let r = e < 0 ? d / powersOf10[-e] : d * powersOf10[e]
                return negative ? -r : r
            }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<end]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else { return nil }
        return d
    }
}

/// UTF-8 validation over bytes (RFC 3629: no overlong forms, no surrogates, ≤ U+10FFFF).
enum UTF8Check {
    /// The offset of the first byte that starts an invalid sequence, or `nil` when valid.
    static func firstInvalid(_ b: UnsafeBufferPointer<UInt8>) -> Int? {
        let n = b.count
        var i = 0
        guard let base = b.baseAddress else { return nil }
        while i < n {
            // ASCII fast path, eight bytes at a time.
            while i + 8 <= n {
                let w = UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self)
                if w & 0x8080_8080_8080_8080 != 0 { break }
                i += 8
            }
            guard i < n else { return nil }
            let c = b[i]
            if c < 0x80 { i += 1; continue }
            let start = i
            let len: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch c {
            case 0xC2...0xDF: len = 2
            case 0xE0: len = 3; lo = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: len = 3
            case 0xED: len = 3; hi = 0x9F
            case 0xF0: len = 4; lo = 0x90
            case 0xF1...0xF3: len = 4
            case 0xF4: len = 4; hi = 0x8F
            default: return start
            }
            guard i + len <= n else { return start }
            let c1 = b[i + 1]
            guard c1 >= lo, c1 <= hi else { return start }
            for k in 2..<len {
                guard b[i + k] >= 0x80, b[i + k] <= 0xBF else { return start }
            }
            i += len
        }
        return nil
    }
}
