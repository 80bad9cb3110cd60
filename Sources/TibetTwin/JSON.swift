#if canImport(Glibc)
import Glibc
#endif

/// A JSON value with a canonical serialisation (keys sorted by their UTF-8 bytes, no
/// whitespace), the form TIBET hashes cover (docs/audit.md). Integers and doubles stay apart so a
/// parsed token serialises back to the same bytes.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    /// Integers and doubles as a `Double`.
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9e18: return Int64(d)
        default: return nil
        }
    }

    /// The canonical form: sorted keys, no whitespace, UTF-8 unescaped except what JSON requires.
    /// It is byte for byte Python's `json.dumps(v, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)`: keys in code point order, `\"` `\\` `\b` `\f` `\n` `\r` `\t`
    /// escaped, other controls as `\u00xx`, doubles as `repr(float)`. Non-finite doubles
    /// serialise as `null` (JSON has no NaN; Python would write `NaN`).
    public var canonical: String { String(decoding: canonicalBytes, as: UTF8.self) }

    /// The canonical form as UTF-8 bytes (what content hashes cover).
    public var canonicalBytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(bytes: &out)
        return out
    }

    /// Appends the canonical form to a string.
    public func write(into out: inout String) {
        out += canonical
    }

    /// Appends the canonical form as UTF-8 bytes.
    public func write(bytes out: inout [UInt8]) {
        switch self {
        case .null: JSONValue.append("null", to: &out)
        case .bool(let b): JSONValue.append(b ? "true" : "false", to: &out)
        case .int(let i): JSONValue.appendInteger(i, to: &out)
        case .double(let d): out.append(contentsOf: JSONValue.format(d).utf8)
        case .string(let s): JSONValue.writeString(s, bytes: &out)
        case .array(let a):
            out.append(0x5B)  // [
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(0x2C) }
                v.write(bytes: &out)
            }
            out.append(0x5D)
        case .object(let o):
            out.append(0x7B)  // {
            var first = true
            for k in o.keys.sorted(by: JSONValue.utf8Precedes) {
                if !first { out.append(0x2C) }
                first = false
                JSONValue.writeString(k, bytes: &out)
                out.append(0x3A)  // :
                o[k]!.write(bytes: &out)
            }
            out.append(0x7D)
        }
    }

    /// Key order of the canonical form: by UTF-8 bytes (= code points, Python's order).
    public static func utf8Precedes(_ a: String, _ b: String) -> Bool {
        // memcmp over contiguous UTF-8 where both are native (nearly always), else the generic walk.
        let fast: Bool?? = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in
                let n = Swift.min(x.count, y.count)
                let c = n == 0 ? 0 : memcmp(x.baseAddress!, y.baseAddress!, n)
                return c != 0 ? c < 0 : x.count < y.count
            }
        }
        if let f = fast ?? nil { return f }
        return a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    static func append(_ s: StaticString, to out: inout [UInt8]) {
        out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    static func appendInteger(_ v: Int64, to out: inout [UInt8]) {
        out.append(contentsOf: String(v).utf8)
    }

    /// Shortest round-trip digits laid out exactly as Python's `repr(float)` does (so the
    /// canonical form equals `json.dumps(v, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)` and an inspector can recompute hashes with stock tools): plain
    /// notation with a `.0` for integral values when the decimal exponent is in -4 ..< 16,
    /// otherwise `1.5e-07` / `1e+16` (sign and at least two exponent digits).
    public static func format(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        // Fast paths, equal to the general layout below (a test compares them): integral values
        // below 1e16 are the integer and ".0"; Swift's plain (exponent-free) description has
        // Python's digits and layout from 1e-4 up.
        if d == d.rounded(.towardZero), Swift.abs(d) < 1e16 {
            if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
            return String(Int64(d)) + ".0"
        }
        var scratch: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        let short = withUnsafeMutableBytes(of: &scratch) { raw -> String? in
            let buf = raw.bindMemory(to: UInt8.self)
            return shortDecimal(d, into: buf).map { String(decoding: UnsafeBufferPointer(rebasing: buf[..<$0]), as: UTF8.self) }
        }
        return short ?? formatLong(d)
    }

    /// `format` for a finite, non-integral `d` that `shortDecimal` does not take.
    static func formatLong(_ d: Double) -> String {
        let plain = d.description
        if Swift.abs(d) >= 1e-4, !plain.utf8.contains(UInt8(ascii: "e")) { return plain }
        return formatGeneral(d)
    }

    /// Powers of ten exact as doubles, for `shortDecimal`.
    static let powersOfTen: [Double] = [1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15]

    /// The shortest round-trip text of a non-integral `d` of magnitude 1e-4 ..< 2^48 with at most
    /// 15 digits after the point (ages and deltas rounded to the microsecond, register values),
    /// written into `out` (32 bytes at least) without the general digit search; `nil` when `d` is
    /// outside that case. Returns the byte count.
    ///
    /// Why it is exact: with `k` digits after the point, decimals are spaced 10^-k apart. While
    /// |d|·10^k < 2^48, that spacing is over 16 times the gap between neighbouring doubles at `d`
    /// (ulp(d) ≤ |d|·2^-52), so at most one `k`-digit decimal reads back as `d`, and the rounded
    /// product names it (its distance from the exact product is below 1/32 + 1/64). The first `k`
    /// whose decimal reads back (a correctly rounded division decides) gives the fewest digits:
    /// a decimal with more digits after the point has at least as many significant digits, and
    /// the same number only across a power of ten, which would put two decimals 10^-(k+1) apart
    /// within one ulp (ruled out: 10^(k+1)·ulp < 10/16). A test compares it with the general path.
    static func shortDecimal(_ d: Double, into out: UnsafeMutableBufferPointer<UInt8>) -> Int? {
        let magnitude = Swift.abs(d)
        guard magnitude >= 1e-4, magnitude < 0x1p48, d != d.rounded(.towardZero) else { return nil }
        for k in 1..<powersOfTen.count {
            let p = powersOfTen[k]
            let scaled = magnitude * p
            guard scaled < 0x1p48 else { return nil }
            let n = scaled.rounded()
            guard n / p == magnitude else { continue }
            // n has k digits after the point: integer part, ".", k digits (leading zeros kept).
            var m = UInt64(n)
            var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0)
            return withUnsafeMutableBytes(of: &tmp) { digits -> Int in
                var at = digits.count
                var written = 0
                repeat {
                    at -= 1
                    digits[at] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: m % 10)
                    m /= 10
                    written += 1
                } while m > 0 || written <= k
                var i = 0
                if d < 0 { out[i] = UInt8(ascii: "-"); i += 1 }
                let intDigits = digits.count - at - k
                for j in 0..<intDigits { out[i] = digits[at + j]; i += 1 }
                out[i] = UInt8(ascii: "."); i += 1
                for j in 0..<k { out[i] = digits[at + intDigits + j]; i += 1 }
                return i
            }
        }
        return nil
    }

    /// Python's `repr(float)` layout from Swift's shortest digits, for every finite value.
    static func formatGeneral(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        // Swift's description holds the shortest round-trip digits; only the layout differs
        // from Python's (Swift writes 1e+15 where Python writes 1000000000000000.0).
        var text = Substring(d.description)
        var out = ""
        if text.first == "-" { out = "-"; text = text.dropFirst() }
        var exp10 = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exp10 = Int(text[text.index(after: e)...]) ?? 0
            text = text[..<e]
        }
        // mantissa "d.ddd" or "ddd.ddd" → digit string and decimal point position.
        var digits = ""
        var decpt = 0
        var seenPoint = false
        for c in text {
            if c == "." { seenPoint = true; continue }
            digits.append(c)
            if !seenPoint { decpt += 1 }
        }
        decpt += exp10
        // Strip leading zeros (each moves the point left) and trailing zeros.
        while digits.count > 1, digits.first == "0" { digits.removeFirst(); decpt -= 1 }
        while digits.count > 1, digits.last == "0" { digits.removeLast() }
        if digits == "0" { return out + "0.0" }
        let n = digits.count
        if decpt > -4 && decpt <= 16 {
            if decpt <= 0 {
                out += "0." + String(repeating: "0", count: -decpt) + digits
            } else if decpt < n {
                out += digits.prefix(decpt) + "." + digits.dropFirst(decpt)
            } else {
                out += digits + String(repeating: "0", count: decpt - n) + ".0"
            }
        } else {
            out += String(digits.first!)
            if n > 1 { out += "." + digits.dropFirst() }
            let e = decpt - 1
            out += e < 0 ? "e-" : "e+"
            let mag = String(abs(e))
            out += (mag.count < 2 ? "0" : "") + mag
        }
        return out
    }

    /// Appends `s` as a canonical JSON string.
    public static func writeString(_ s: String, into out: inout String) {
        var bytes: [UInt8] = []
        writeString(s, bytes: &bytes)
        out += String(decoding: bytes, as: UTF8.self)
    }

    /// Appends `s` as a canonical JSON string, as UTF-8 bytes. Escaping works on bytes: every
    /// byte that needs it is ASCII, and no byte of a multi-byte UTF-8 sequence is.
    public static func writeString(_ s: String, bytes out: inout [UInt8]) {
        out.append(0x22)
        writeStringBody(s, bytes: &out)
        out.append(0x22)
    }

    /// Appends the escaped content of `s` without the quotes (for a string written in parts).
    static func writeStringBody(_ s: String, bytes out: inout [UInt8]) {
        // Native strings are contiguous UTF-8: no copy, and one append when nothing needs escaping
        // (the common case for names and texts).
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { buf in
            writeEscaped(buf, bytes: &out)
        }
        if done == nil {
            var copy = s
            copy.withUTF8 { writeEscaped($0, bytes: &out) }
        }
    }

    /// Whether any byte of `buf` must be escaped (a control character, `"` or `\\`): eight bytes
    /// at a time, since nearly every string written needs no escape at all.
    static func needsEscape(_ buf: UnsafeBufferPointer<UInt8>) -> Bool {
        let n = buf.count
        guard n > 0, let p = buf.baseAddress else { return false }
        let raw = UnsafeRawPointer(p)
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        var i = 0
        while i + 8 <= n {
            let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            // A byte below 0x20, or equal to 0x22 or 0x5C, sets its high bit in one of these
            // (exact as a whole: a false bit only follows a true one in the same word).
            let control = (w &- ones &* 0x20) & ~w & highs
            let q = w ^ (ones &* 0x22), b = w ^ (ones &* 0x5C)
            let quote = (q &- ones) & ~q & highs
            let backslash = (b &- ones) & ~b & highs
            if control | quote | backslash != 0 { return true }
            i += 8
        }
        while i < n {
            let c = p[i]
            if c < 0x20 || c == 0x22 || c == 0x5C { return true }
            i += 1
        }
        return false
    }

    static func writeEscaped(_ buf: UnsafeBufferPointer<UInt8>, bytes out: inout [UInt8]) {
        if !needsEscape(buf) {
            out.append(contentsOf: buf)
            return
        }
        var start = 0
        for i in 0..<buf.count {
            let c = buf[i]
            guard c < 0x20 || c == 0x22 || c == 0x5C else { continue }
            if start < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[start..<i])) }
            start = i + 1
            out.append(0x5C)  // backslash
            switch c {
            case 0x22: out.append(0x22)
            case 0x5C: out.append(0x5C)
            case 0x0A: out.append(0x6E)  // n
            case 0x0D: out.append(0x72)  // r
            case 0x09: out.append(0x74)  // t
            case 0x08: out.append(0x62)  // b
            case 0x0C: out.append(0x66)  // f
            default:
                @inline(__always) func hex(_ n: UInt8) -> UInt8 { n < 10 ? 0x30 &+ n : 0x57 &+ n }
                out.append(contentsOf: [0x75, 0x30, 0x30, hex(c >> 4), hex(c & 0xF)])  // u00xx
            }
        }
        if start < buf.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[start..<buf.count])) }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, b in b }))
    }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(nilLiteral: ()) { self = .null }
}

/// Where and why JSON text did not parse.
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Byte offset into the input.
    public var offset: Int
    public var message: String
    public var description: String { "at byte \(offset): \(message)" }
}

/// A small strict JSON parser (RFC 8259) into `JSONValue`. Numbers with a fraction or an
/// exponent become doubles, others integers (doubles when beyond Int64).
public struct JSONParser {
    public static let maxDepth = 64

    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        var s = text
        let r: Result<JSONValue, JSONParseError> = s.withUTF8 { buf in Result { () throws(JSONParseError) in try parse(bytes: buf) } }
        return try r.get()
    }

    public static func parse(bytes: UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> JSONValue {
        var p = JSONParser(b: bytes, i: 0)
        p.skipWS()
        let v = try p.value(depth: 0)
        p.skipWS()
        guard p.i == bytes.count else { throw p.err("trailing characters") }
        return v
    }

    let b: UnsafeBufferPointer<UInt8>
    var i: Int

    func err(_ m: String) -> JSONParseError { JSONParseError(offset: i, message: m) }

    mutating func skipWS() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func value(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth < JSONParser.maxDepth else { throw err("nested too deeply") }
        guard i < b.count else { throw err("unexpected end of input") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var o: [String: JSONValue] = [:]
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
            while true {
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw err("expected a string key") }
                let k = try string()
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw err("expected ':'") }
                i += 1
                skipWS()
                let v = try value(depth: depth + 1)
                guard o.updateValue(v, forKey: k) == nil else { throw err("duplicate key \"\(k)\"") }
                skipWS()
                guard i < b.count else { throw err("unexpected end of input") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
                throw err("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var a: [JSONValue] = []
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                skipWS()
                a.append(try value(depth: depth + 1))
                skipWS()
                guard i < b.count else { throw err("unexpected end of input") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                throw err("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"):
            try literal("true"); return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false"); return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null"); return .null
        default:
            return try number()
        }
    }

    /// Runs one step of the shared lexer from here.
    private mutating func lex<R>(_ step: (inout JSONLexer) throws(JSONParseError) -> R) throws(JSONParseError) -> R {
        var l = JSONLexer(b: b, i: i)
        defer { i = l.i }
        return try step(&l)
    }

    mutating func literal(_ word: StaticString) throws(JSONParseError) {
        try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.literal(word) }
    }

    mutating func number() throws(JSONParseError) -> JSONValue {
        let start = i
        let isInt = try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.number() }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        if isInt, let v = Int64(text) { return .int(v) }
        guard let d = Double(text), d.isFinite else { throw JSONParseError(offset: start, message: "number out of range") }
        return .double(d)
    }

    mutating func string() throws(JSONParseError) -> String {
        let (content, decoded) = try lex { (l: inout JSONLexer) throws(JSONParseError) in try l.string() }
        let s: String? = if let decoded {
            String(validating: decoded, as: UTF8.self)
        } else {
            String(validating: UnsafeBufferPointer(rebasing: b[content]), as: UTF8.self)
        }
        guard let s else { throw JSONParseError(offset: content.lowerBound, message: "invalid UTF-8 in string") }
        return s
    }
}
