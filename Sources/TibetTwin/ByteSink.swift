#if canImport(Glibc)
import Glibc
#endif

/// A reusable, growable byte buffer for writing canonical JSON on a hot path: appends are a
/// `memcpy` into storage kept between uses (`reset()` keeps the capacity), so writing a token's
/// hashed bytes allocates nothing once the buffer has grown to a token's size. One owner at a
/// time (`SyncGuard` keeps one under its lock).
final class ByteSink: @unchecked Sendable {
    private(set) var base: UnsafeMutablePointer<UInt8>
    private(set) var count = 0
    private var capacity: Int

    init(capacity: Int = 2048) {
        self.capacity = Swift.max(capacity, 16)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    /// Empties the buffer, keeping its storage.
    func reset() { count = 0 }

    /// The bytes written so far (valid until the next append or reset).
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    @inline(__always) private func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        var c = capacity * 2
        while c < count + extra { c *= 2 }
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: c)
        p.update(from: base, count: count)
        base.deallocate()
        base = p
        capacity = c
    }

    @inline(__always) func append(_ byte: UInt8) {
        reserve(1)
        base[count] = byte
        count += 1
    }

    @inline(__always) func append(_ src: UnsafeBufferPointer<UInt8>) {
        guard let from = src.baseAddress, src.count > 0 else { return }
        reserve(src.count)
        (base + count).update(from: from, count: src.count)
        count += src.count
    }

    @inline(__always) func append(_ s: StaticString) {
        append(UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// Appends the escaped content of `s` (no quotes), exactly as `JSONValue.writeString` does.
    /// Short texts (names, statuses) are copied and checked in one pass; long ones are scanned
    /// eight bytes at a time, then copied.
    func appendEscaped(_ s: String) {
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { buf in
            let n = buf.count
            if n <= 24, let src = buf.baseAddress {
                reserve(n)
                let dst = base + count
                var special = false
                for i in 0..<n {
                    let c = src[i]
                    dst[i] = c
                    special = special || c < 0x20 || c == 0x22 || c == 0x5C
                }
                if !special { count += n; return }
            } else if !JSONValue.needsEscape(buf) {
                append(buf)
                return
            }
            var tmp: [UInt8] = []
            JSONValue.writeEscaped(buf, bytes: &tmp)
            tmp.withUnsafeBufferPointer { append($0) }
        }
        if done == nil {
            var tmp: [UInt8] = []
            JSONValue.writeStringBody(s, bytes: &tmp)
            tmp.withUnsafeBufferPointer { append($0) }
        }
    }

    /// Appends again `length` bytes already written at `offset` (a text written twice).
    func appendCopy(offset: Int, length: Int) {
        precondition(offset >= 0 && length >= 0 && offset + length <= count, "copy outside the written bytes")
        reserve(length)
        (base + count).update(from: base + offset, count: length)
        count += length
    }

    /// Appends the decimal digits of `i` (as `String(i)` writes them), without a string.
    func appendInt(_ i: Int64) {
        reserve(20)
        var m = i.magnitude
        var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch on the stack
        let n = withUnsafeMutableBytes(of: &tmp) { buf -> Int in
            var k = buf.count
            repeat {
                k -= 1
                buf[k] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: m % 10)
                m /= 10
            } while m > 0
            if i < 0 { k -= 1; buf[k] = UInt8(ascii: "-") }
            (base + count).update(from: buf.baseAddress!.assumingMemoryBound(to: UInt8.self) + k, count: buf.count - k)
            return buf.count - k
        }
        count += n
    }

    /// Appends the decimal digits of `u`.
    func appendUInt(_ u: UInt64) {
        if u <= UInt64(Int64.max) { appendInt(Int64(u)) } else { appendUTF8(String(u)) }
    }

    /// Appends `bytes` as lowercase hex, two digits a byte (as `Hex.encode`).
    func appendHex(_ bytes: UnsafeRawBufferPointer) {
        reserve(bytes.count * 2)
        let digits: StaticString = "0123456789abcdef"
        let d = digits.utf8Start
        var at = base + count
        for b in bytes {
            at[0] = d[Int(b >> 4)]
            at[1] = d[Int(b & 0xF)]
            at += 2
        }
        count += bytes.count * 2
    }

    /// The second `stampPrefix` holds, as `YYYY-MM-DDTHH:MM:SS` (19 bytes).
    private var stampSecond: Int64 = .min
    private var stampPrefix: (UInt64, UInt64, UInt64) = (0, 0, 0)

    /// Appends `RFC3339.format(wallNs:fractionDigits: 6)` without a string; the date and time of
    /// day are formatted once per second and kept.
    func appendTimestamp(wallNs: Int64) {
        var secs = wallNs / 1_000_000_000
        var nanos = wallNs % 1_000_000_000
        if nanos < 0 { nanos += 1_000_000_000; secs -= 1 }
        if secs != stampSecond {
            let (whole, overflow) = secs.multipliedReportingOverflow(by: 1_000_000_000)
            let written = overflow ? nil : withUnsafeMutableBytes(of: &stampPrefix) { raw in
                RFC3339.write(wallNs: whole, fractionDigits: 0, into: raw.bindMemory(to: UInt8.self))
            }
            guard written == 20 else {
                appendUTF8(RFC3339.format(wallNs: wallNs, fractionDigits: 6))
                return
            }
            stampSecond = secs
        }
        reserve(27)
        withUnsafeBytes(of: &stampPrefix) { raw in
            (base + count).update(from: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), count: 19)
        }
        var micros = Int(nanos / 1000)
        let at = base + count + 19
        at[0] = UInt8(ascii: ".")
        for k in stride(from: 6, through: 1, by: -1) {
            at[k] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: micros % 10)
            micros /= 10
        }
        at[7] = UInt8(ascii: "Z")
        count += 27
    }

    /// Appends `d` exactly as `JSONValue.format(d)` writes it; integral values (the common
    /// case for ages and deltas of zero) without building a string.
    func appendDouble(_ d: Double) {
        if d == 0 {
            append(d.sign == .minus ? "-0.0" : "0.0")
        } else if d.isFinite, d == d.rounded(.towardZero), Swift.abs(d) < 1e16 {
            appendInt(Int64(d))
            append(".0")
        } else {
            reserve(32)
            if let n = JSONValue.shortDecimal(d, into: UnsafeMutableBufferPointer(start: base + count, count: 32)) {
                count += n
            } else if d.isFinite {
                appendUTF8(JSONValue.formatLong(d))  // shortDecimal declined: not tried twice
            } else {
                append("null")
            }
        }
    }

    /// Appends the UTF-8 of `s` unescaped (numbers, already-canonical text).
    func appendUTF8(_ s: String) {
        var s = s
        s.withUTF8 { append($0) }
    }
}
