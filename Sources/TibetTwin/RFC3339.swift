/// RFC 3339 timestamps without Foundation formatters: the twin feed parses one per line, so
/// this is on a hot path.
public enum RFC3339 {
    /// Parses `2026-11-26T14:32:00.500Z` or `…+01:00` (fractional seconds optional, up to 9
    /// digits kept) into nanoseconds since the Unix epoch. A time zone is required.
    public static func parse(_ text: some StringProtocol) -> Int64? {
        var utf8 = Array(text.utf8)
        return utf8.withUnsafeMutableBufferPointer { parse(bytes: UnsafeBufferPointer($0)) }
    }

    /// Parses RFC 3339 from raw UTF-8 bytes; see `parse(_:)`.
    public static func parse(bytes b: UnsafeBufferPointer<UInt8>) -> Int64? {
        let n = b.count
        guard n >= 20 else { return nil }
        @inline(__always) func digit(_ i: Int) -> Int? {
            let c = b[i]
            return (c >= 48 && c <= 57) ? Int(c - 48) : nil
        }
        @inline(__always) func num(_ i: Int, _ len: Int) -> Int? {
            var v = 0
            for k in i..<(i + len) {
                guard let d = digit(k) else { return nil }
                v = v * 10 + d
            }
            return v
        }
        guard let year = num(0, 4), b[4] == 45, let month = num(5, 2), b[7] == 45,
              let day = num(8, 2), b[10] == 84 || b[10] == 116 || b[10] == 32,
              let hour = num(11, 2), b[13] == 58, let minute = num(14, 2), b[16] == 58,
              let second = num(17, 2)
        else { return nil }
        guard (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year),
              hour <= 23, minute <= 59, second <= 60 else { return nil }
        var i = 19
        var fracNs: Int64 = 0
        if i < n, b[i] == 46 {  // '.'
            i += 1
            var digits = 0
            var scale: Int64 = 100_000_000
            while i < n, let d = digit(i) {
                if digits < 9 { fracNs += Int64(d) * scale; scale /= 10 }
                digits += 1
                i += 1
            }
            guard digits > 0 else { return nil }
        }
        guard i < n else { return nil }
        var offsetSeconds = 0
        switch b[i] {
        case 90, 122:  // Z z
            i += 1
        case 43, 45:  // + -
            guard i + 6 <= n, let oh = num(i + 1, 2), b[i + 3] == 58, let om = num(i + 4, 2),
                  oh <= 23, om <= 59 else { return nil }
            offsetSeconds = (oh * 3600 + om * 60) * (b[i] == 45 ? -1 : 1)
            i += 6
        default:
            return nil
        }
        guard i == n else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let secs = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        // Beyond ±292 years from 1970 the nanoseconds do not fit an Int64: refuse, never trap.
        let (ns, overflow) = secs.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return nil }
        let (total, overflow2) = ns.addingReportingOverflow(fracNs)
        return overflow2 ? nil : total
    }

    /// Formats nanoseconds since the epoch as UTC with millisecond precision:
    /// `2026-11-26T14:32:00.500Z`.
    public static func format(wallNs: Int64, fractionDigits: Int = 3) -> String {
        let n = Swift.min(Swift.max(fractionDigits, 0), 9)
        // The usual range: fixed widths, written straight into the string's storage.
        let text = String(unsafeUninitializedCapacity: 21 + n) { write(wallNs: wallNs, fractionDigits: n, into: $0) ?? 0 }
        return text.isEmpty ? formatGeneral(wallNs: wallNs, fractionDigits: n) : text
    }

    /// `format(wallNs:fractionDigits:)` for years 0 to 9999 into `out` (at least 21 +
    /// `fractionDigits` bytes): returns the byte count, or nil for a year out of that range.
    static func write(wallNs: Int64, fractionDigits n: Int, into out: UnsafeMutableBufferPointer<UInt8>) -> Int? {
        let (y, m, d, rem, nanos) = civil(wallNs: wallNs)
        guard (0...9999).contains(y), (0...9).contains(n) else { return nil }
        var i = 0
        @inline(__always) func put(_ v: Int, _ width: Int) {
            var v = v
            var k = i + width - 1
            while k >= i { out[k] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: v % 10); v /= 10; k -= 1 }
            i += width
        }
        @inline(__always) func char(_ c: Unicode.Scalar) { out[i] = UInt8(ascii: c); i += 1 }
        put(y, 4); char("-"); put(m, 2); char("-"); put(d, 2); char("T")
        put(Int(rem / 3600), 2); char(":"); put(Int(rem % 3600 / 60), 2); char(":"); put(Int(rem % 60), 2)
        if n > 0 {
            var div = 1
            for _ in 0..<(9 - n) { div *= 10 }
            char("."); put(Int(nanos) / div, n)
        }
        char("Z")
        return i
    }

    /// The civil date, seconds into the day and nanoseconds of an instant (UTC).
    static func civil(wallNs: Int64) -> (year: Int, month: Int, day: Int, secondOfDay: Int64, nanos: Int64) {
        var secs = wallNs / 1_000_000_000
        var nanos = wallNs % 1_000_000_000
        if nanos < 0 { nanos += 1_000_000_000; secs -= 1 }
        var days = secs / 86_400
        var rem = secs % 86_400
        if rem < 0 { rem += 86_400; days -= 1 }
        let (y, m, d) = civilFromDays(Int(days))
        return (y, m, d, rem, nanos)
    }

    static func formatGeneral(wallNs: Int64, fractionDigits: Int) -> String {
        let (y, m, d, rem, nanos) = civil(wallNs: wallNs)
        var out: [UInt8] = []
        out.reserveCapacity(32)
        func digits(_ v: Int, _ width: Int) {
            var limit = 1
            for _ in 0..<width { limit *= 10 }
            guard v >= 0, v < limit else {
                // Out of the usual range (years beyond 9999 or before 0): the general form.
                if v < 0 { out.append(UInt8(ascii: "-")) }
                let text = String(Swift.abs(v)).utf8
                if text.count < width { out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width - text.count)) }
                out.append(contentsOf: text)
                return
            }
            var div = limit / 10
            while div > 0 {
                out.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: v / div % 10))
                div /= 10
            }
        }
        digits(y, 4); out.append(UInt8(ascii: "-")); digits(m, 2); out.append(UInt8(ascii: "-")); digits(d, 2)
        out.append(UInt8(ascii: "T"))
        digits(Int(rem / 3600), 2); out.append(UInt8(ascii: ":"))
        digits(Int(rem % 3600 / 60), 2); out.append(UInt8(ascii: ":"))
        digits(Int(rem % 60), 2)
        if fractionDigits > 0 {
            let n = min(fractionDigits, 9)
            var div = 1
            for _ in 0..<(9 - n) { div *= 10 }
            out.append(UInt8(ascii: "."))
            digits(Int(nanos) / div, n)
        }
        out.append(UInt8(ascii: "Z"))
        return String(decoding: out, as: UTF8.self)
    }

    static func isLeap(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ z0: Int) -> (Int, Int, Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
