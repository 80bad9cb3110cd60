import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one twin source remembers of the lines it had accepted, so that a line repeating its
/// device's last one is not parsed again (`TwinLineParser.parse(buffer:received:memo:)`).
///
/// A twin that streams its devices' states sends, most of the time, the same line per device
/// again and again with a new `ts` and `seq`: at 1,000 devices and 20 Hz that is 20,000 lines a
/// second, and the feed's thread spent most of its time building the same value dictionaries.
/// A line is a *repeat* of the last accepted line of its device when it has the same length and
/// the same bytes everywhere except inside the `ts` string and the `seq` digits, and those hold a
/// valid RFC 3339 time (plain ASCII, no quote, backslash or control byte) and plain digits (no
/// leading zero, at most `TwinState.maxSeq`). Its JSON then has exactly the structure of the
/// remembered line, token for token, so it parses to the remembered state with the new `ts` and
/// `seq`: that state is handed out (its strings and dictionary shared, not rebuilt), after the
/// same future-timestamp check a full parse makes. Anything else, a failed check included, goes
/// through the full parse, which also decides every drop. Debug builds parse every repeat in
/// full as well and assert that both agree.
///
/// Only lines of devices without a `twin_key` (a signature covers `ts` and `seq`, so every
/// signed line is verified), of at most `maxLineBytes`, whose first member is `"device"` with a
/// plain name (`{"device":"name",…`) are remembered: one line per device of the maps, so the
/// memory is bounded by the maps. The memo is tied to one parser: after a reload (a new
/// parser) it starts empty.
public struct TwinLineMemo: Sendable {
    /// The longest line remembered.
    public static let maxLineBytes = 1024

    struct Entry: Sendable {
        var line: [UInt8]
        /// The `ts` string's content and the `seq` digits in `line`.
        var ts: Range<Int>
        var seq: Range<Int>?
        var state: TwinState
        var unknownValues: [String]
        var maxSkewMs: Double
    }

    /// Where a fully parsed line's `ts` content and `seq` digits are; the parser reports them for
    /// lines that may be remembered.
    struct Spans {
        var ts: Range<Int>
        var seq: Range<Int>?
        var maxSkewMs: Double
    }

    /// Tells memos (sources) apart; never 0.
    public let id: UInt64 = TwinLineMemo.ids.add(1, ordering: .relaxed).newValue
    private static let ids = Atomic<UInt64>(0)
    /// The parser the entries came from.
    var generation: UInt64 = 0
    var entries: [String: Entry] = [:]
    /// Lines answered from the memo, and lines parsed in full (for the benchmarks and tests).
    public private(set) var repeats: UInt64 = 0
    public private(set) var parsed: UInt64 = 0

    public init() {}

    /// Devices remembered.
    public var count: Int { entries.count }

    static let prefix: [UInt8] = Array(#"{"device":""#.utf8)

    /// The device a remembered line would be for: the bytes after `{"device":"` up to the next
    /// quote (an escaped quote in a name only makes the lookup miss: the byte comparison decides).
    static func deviceName(_ b: UnsafeBufferPointer<UInt8>) -> String? {
        let p = prefix.count
        guard b.count > p, b.count <= maxLineBytes, let base = b.baseAddress else { return nil }
        guard prefix.withUnsafeBufferPointer({ memcmp(base, $0.baseAddress!, p) == 0 }) else { return nil }
        guard let q = memchr(base + p, Int32(UInt8(ascii: "\"")), b.count - p) else { return nil }
        let n = UnsafeRawPointer(base + p).distance(to: UnsafeRawPointer(q))
        return String(decoding: UnsafeBufferPointer(start: base + p, count: n), as: UTF8.self)
    }

    mutating func start(generation g: UInt64) {
        if generation != g {
            generation = g
            entries.removeAll()
        }
    }

    mutating func countParsed() { parsed &+= 1 }

    /// Forgets a device's line (its state was not taken after all).
    public mutating func forget(device: String) { entries[device] = nil }

    /// The state `b` gives if it repeats its device's remembered line; nil when it does not (or
    /// when a check fails: the full parse then says why).
    mutating func repeatOf(_ b: UnsafeBufferPointer<UInt8>, received: ClockReading) -> TwinLineOutcome? {
        guard !entries.isEmpty, let name = Self.deviceName(b), let e = entries[name], e.line.count == b.count else { return nil }
        let base = b.baseAddress!
        // The same bytes outside the two spans (in line order).
        var first = e.ts, second: Range<Int>? = e.seq
        if let s = e.seq, s.lowerBound < e.ts.lowerBound { first = s; second = e.ts }
        let same = e.line.withUnsafeBufferPointer { old -> Bool in
            let o = old.baseAddress!
            func equal(_ from: Int, _ to: Int) -> Bool { to <= from || memcmp(o + from, base + from, to - from) == 0 }
            guard equal(0, first.lowerBound) else { return false }
            guard let second else { return equal(first.upperBound, b.count) }
            return equal(first.upperBound, second.lowerBound) && equal(second.upperBound, b.count)
        }
        guard same else { return nil }
        for k in e.ts {
            let c = base[k]
            if c < 0x20 || c >= 0x80 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") { return nil }
        }
        guard let tsNs = RFC3339.parse(bytes: UnsafeBufferPointer(rebasing: b[e.ts])) else { return nil }
        // As `TwinLineParser.parse`: a line too far ahead of this clock is dropped there.
        if tsNs > received.wallNs, Double(tsNs &- received.wallNs) / 1_000_000 > e.maxSkewMs { return nil }
        var seq: UInt64?
        if let r = e.seq {
            if r.count > 1, base[r.lowerBound] == UInt8(ascii: "0") { return nil }
            var v: UInt64 = 0
            for k in r {
                let d = base[k] &- 48
                guard d <= 9 else { return nil }
                v = v &* 10 &+ UInt64(d)  // at most 16 digits here: no overflow (length is that of a seq ≤ 2^53)
            }
            guard v <= TwinState.maxSeq else { return nil }
            seq = v
        }
        var state = e.state
        state.tsNs = tsNs
        state.seq = seq
        state.received = received
        repeats &+= 1
        return .accepted(state, unknownValues: e.unknownValues)
    }

    mutating func remember(_ b: UnsafeBufferPointer<UInt8>, spans: Spans, state: TwinState, unknownValues: [String]) {
        guard b.count <= Self.maxLineBytes, (spans.seq?.count ?? 0) <= 16 else { return }
        if let i = entries.index(forKey: state.device), entries.values[i].line.count == b.count {
            // Reuse the remembered line's storage.
            entries.values[i].line.withUnsafeMutableBufferPointer { _ = memcpy($0.baseAddress!, b.baseAddress!, b.count) }
            entries.values[i].ts = spans.ts
            entries.values[i].seq = spans.seq
            entries.values[i].state = state
            entries.values[i].unknownValues = unknownValues
            entries.values[i].maxSkewMs = spans.maxSkewMs
        } else {
            entries[state.device] = Entry(line: Array(b), ts: spans.ts, seq: spans.seq, state: state,
                                          unknownValues: unknownValues, maxSkewMs: spans.maxSkewMs)
        }
    }
}
