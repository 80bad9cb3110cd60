/// The JSON token rules (RFC 8259) that both parsers share: the tree parser `JSONParser` and
/// the twin line's zero-copy `TwinScanner`. One lexer, so the two cannot drift apart in what
/// they accept.
struct JSONLexer {
    let b: UnsafeBufferPointer<UInt8>
    var i: Int

    func err(_ m: String) -> JSONParseError { JSONParseError(offset: i, message: m) }

    /// Scans `word` (`true`, `false`, `null`).
    mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw err("invalid literal") }
        let w = word.utf8Start
        for k in 0..<n where b[i + k] != w[k] { throw err("invalid literal") }
        i += n
    }

    /// Scans a number; returns whether it is an integer (no fraction, no exponent).
    mutating func number() throws(JSONParseError) -> Bool {
        var isInt = true
        if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count, b[i] >= 48, b[i] <= 57 else { throw err("invalid value") }
        if b[i] == 48 { i += 1 } else { while i < b.count, b[i] >= 48, b[i] <= 57 { i += 1 } }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            isInt = false
            i += 1
            guard i < b.count, b[i] >= 48, b[i] <= 57 else { throw err("invalid number") }
            while i < b.count, b[i] >= 48, b[i] <= 57 { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            isInt = false
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count, b[i] >= 48, b[i] <= 57 else { throw err("invalid number") }
            while i < b.count, b[i] >= 48, b[i] <= 57 { i += 1 }
        }
        return isInt
    }

    /// Scans a string from its opening quote to just past its closing quote. Returns the range
    /// of the bytes between the quotes and, when the string held escapes, its decoded bytes
    /// (escapes are validated and decoded here, once).
    mutating func string() throws(JSONParseError) -> (content: Range<Int>, decoded: [UInt8]?) {
        i += 1  // opening quote
        let start = i
        // Fast path: no escapes.
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return (start..<(i - 1), nil)
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw err("control character in a string") }
            i += 1
        }
        guard i < b.count else { throw err("unterminated string") }
        // Slow path: escapes.
        var out = Array(UnsafeBufferPointer(rebasing: b[start..<i]))
        while true {
            guard i < b.count else { throw err("unterminated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw err("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw err("unterminated escape") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var cp = try hex4()
                if (0xD800...0xDBFF).contains(cp) {
                    guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                        throw err("unpaired surrogate")
                    }
                    i += 2
                    let lo = try hex4()
                    guard (0xDC00...0xDFFF).contains(lo) else { throw err("unpaired surrogate") }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(cp) {
                    throw err("unpaired surrogate")
                }
                guard let scalar = Unicode.Scalar(cp) else { throw err("invalid code point") }
                UTF8.encode(scalar) { out.append($0) }
            default:
                throw err("invalid escape")
            }
        }
        let end = i
        i += 1
        return (start..<end, out)
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= b.count else { throw err("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 48...57: d = UInt32(c - 48)
            case 65...70: d = UInt32(c - 55)
            case 97...102: d = UInt32(c - 87)
            default: throw err("invalid \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }
}
