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
    func appendEscaped(_ s: String) {
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { buf in
            if JSONValue.needsEscape(buf) {
                var tmp: [UInt8] = []
                JSONValue.writeEscaped(buf, bytes: &tmp)
                tmp.withUnsafeBufferPointer { append($0) }
            } else {
                append(buf)
            }
        }
        if done == nil {
            var tmp: [UInt8] = []
            JSONValue.writeStringBody(s, bytes: &tmp)
            tmp.withUnsafeBufferPointer { append($0) }
        }
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

    /// Appends `d` exactly as `JSONValue.format(d)` writes it; integral values (the common
    /// case for ages and deltas of zero) without building a string.
    func appendDouble(_ d: Double) {
        if d == 0 {
            append(d.sign == .minus ? "-0.0" : "0.0")
        } else if d.isFinite, d == d.rounded(.towardZero), Swift.abs(d) < 1e16 {
            appendInt(Int64(d))
            append(".0")
        } else {
            appendUTF8(JSONValue.format(d))
        }
    }

    /// Appends the UTF-8 of `s` unescaped (numbers, already-canonical text).
    func appendUTF8(_ s: String) {
        var s = s
        s.withUTF8 { append($0) }
    }
}
