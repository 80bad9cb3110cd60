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
        /// The device's name, as the bytes of its lines (plain: no escapes).
        let name: [UInt8]
        /// The remembered line; empty once forgotten.
        var line: [UInt8]
        /// The `ts` string's content and the `seq` digits in `line`.
        var ts: Range<Int>
        var seq: Range<Int>?
        var state: TwinState
        var unknownValues: [String]
        var maxSkewMs: Double
        /// The caller's number for this device (`slotHint`).
        var hint = -1
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
    /// One entry per device remembered (a forgotten device keeps its entry, with no line), found
    /// through `table` by the name's bytes as they stand in the line: a line is looked up without
    /// building a `String` or hashing one (this runs for every line a twin sends).
    var entries: [Entry] = []
    /// Open addressing over `entries` by `nameHash`: -1 is an empty slot. Its size is a power of
    /// two, at least twice the number of entries, so a probe always ends at an empty slot.
    var table: [Int32] = []
    /// Devices whose line is remembered now.
    private var live = 0
    /// The entry of the line last answered or remembered; -1 when the last line was neither.
    private var lastEntry = -1

    /// A number the caller keeps with the device of the line last answered or remembered (the
    /// feed pipeline keeps its validator's slot of the device here, so a repeat is ordered
    /// without looking the device up by name); -1 until set, and when the last line was
    /// neither answered nor remembered. Setting it then does nothing.
    public var slotHint: Int {
        get { lastEntry >= 0 ? entries[lastEntry].hint : -1 }
        set { if lastEntry >= 0 { entries[lastEntry].hint = newValue } }
    }
    /// Lines answered from the memo, and lines parsed in full (for the benchmarks and tests).
    public private(set) var repeats: UInt64 = 0
    public private(set) var parsed: UInt64 = 0

    public init() {}

    /// Devices remembered.
    public var count: Int { live }

    static let prefix: [UInt8] = Array(#"{"device":""#.utf8)

    /// Where the device's name would be in a remembered line: the bytes after `{"device":"` up to
    /// the next quote (an escaped quote in a name only makes the lookup miss: the byte comparison
    /// of the whole line decides).
    static func nameRange(_ b: UnsafeBufferPointer<UInt8>) -> Range<Int>? {
        let p = prefix.count
        guard b.count > p, b.count <= maxLineBytes, let base = b.baseAddress else { return nil }
        guard prefix.withUnsafeBufferPointer({ memcmp(base, $0.baseAddress!, p) == 0 }) else { return nil }
        guard let q = memchr(base + p, Int32(UInt8(ascii: "\"")), b.count - p) else { return nil }
        return p..<(p + UnsafeRawPointer(base + p).distance(to: UnsafeRawPointer(q)))
    }

    /// FNV-1a over a name's bytes: names come from the maps, a few bytes each.
    static func nameHash(_ name: UnsafeBufferPointer<UInt8>) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for c in name { h = (h ^ UInt64(c)) &* 0x0000_0100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    /// The entry of the device whose name is `name`'s bytes.
    func find(_ name: UnsafeBufferPointer<UInt8>) -> Int? {
        guard !table.isEmpty else { return nil }
        let mask = table.count - 1
        var i = Self.nameHash(name) & mask
        while true {
            let k = Int(table[i])
            if k < 0 { return nil }
            let same = entries[k].name.withUnsafeBufferPointer { e in
                e.count == name.count && (name.isEmpty || memcmp(e.baseAddress!, name.baseAddress!, name.count) == 0)
            }
            if same { return k }
            i = (i + 1) & mask
        }
    }

    func find(device: String) -> Int? {
        var name = device
        return name.withUTF8 { find($0) }
    }

    /// Adds an entry for a device not in the table yet; its index.
    mutating func insert(_ entry: Entry) -> Int {
        if (entries.count + 1) * 2 > table.count {
            table = [Int32](repeating: -1, count: max(16, table.count * 2))
            for k in entries.indices { place(k) }
        }
        entries.append(entry)
        place(entries.count - 1)
        return entries.count - 1
    }

    private mutating func place(_ k: Int) {
        let mask = table.count - 1
        var i = entries[k].name.withUnsafeBufferPointer { Self.nameHash($0) } & mask
        while table[i] >= 0 { i = (i + 1) & mask }
        table[i] = Int32(k)
    }

    mutating func start(generation g: UInt64) {
        lastEntry = -1
        if generation != g {
            generation = g
            entries.removeAll()
            table.removeAll()
            live = 0
        }
    }

    mutating func countParsed() { parsed &+= 1 }

    /// Forgets a device's line (its state was not taken after all).
    public mutating func forget(device: String) {
        guard let k = find(device: device), !entries[k].line.isEmpty else { return }
        entries[k].line = []
        live -= 1
    }

    /// What a line looks like to the memo before it is parsed: a source uses it to take news
    /// before routine repeats (`TwinLineHandler`), keeping each device's lines in order.
    public enum Sight: Equatable {
        /// Its bytes repeat the remembered line of entry `k` outside the `ts` and `seq` spans: most
        /// likely a repeat (`repeatOf` still checks the time and `seq`).
        case routine(Int)
        /// Something else for the device of entry `k` (nil: a device the memo has no entry for).
        case news(Int?)
        /// A line whose device cannot be told without parsing it (not `{"device":"name",…`).
        case unnamed
    }

    /// How `b` looks to this memo (as filled by lines of `parser`; a memo of another
    /// parser's generation sees only news: it would start empty).
    public func sight(_ b: UnsafeBufferPointer<UInt8>, parser: TwinLineParser) -> Sight {
        guard let r = Self.nameRange(b) else { return .unnamed }
        guard generation == parser.generation, let k = find(UnsafeBufferPointer(rebasing: b[r])) else { return .news(nil) }
        return sameOutsideSpans(k, b) ? .routine(k) : .news(k)
    }

    /// Entries (a `Sight`'s `k` is below this).
    public var entryCount: Int { entries.count }

    /// Whether `b` has entry `k`'s remembered line's length and bytes outside its `ts` and `seq` spans.
    private func sameOutsideSpans(_ k: Int, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        let e = entries[k]
        guard !e.line.isEmpty, e.line.count == b.count else { return false }
        let base = b.baseAddress!
        var first = e.ts, second: Range<Int>? = e.seq
        if let s = e.seq, s.lowerBound < e.ts.lowerBound { first = s; second = e.ts }
        return e.line.withUnsafeBufferPointer { old -> Bool in
            let o = old.baseAddress!
            func equal(_ from: Int, _ to: Int) -> Bool { to <= from || memcmp(o + from, base + from, to - from) == 0 }
            guard equal(0, first.lowerBound) else { return false }
            guard let second else { return equal(first.upperBound, b.count) }
            return equal(first.upperBound, second.lowerBound) && equal(second.upperBound, b.count)
        }
    }

    /// The state `b` gives if it repeats its device's remembered line; nil when it does not (or
    /// when a check fails: the full parse then says why).
    mutating func repeatOf(_ b: UnsafeBufferPointer<UInt8>, received: ClockReading) -> TwinLineOutcome? {
        guard live > 0, let r = Self.nameRange(b), let k = find(UnsafeBufferPointer(rebasing: b[r])),
              entries[k].line.count == b.count else { return nil }
        // The same bytes outside the two spans.
        guard sameOutsideSpans(k, b) else { return nil }
        let e = entries[k]
        let base = b.baseAddress!
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
        lastEntry = k
        return .accepted(state, unknownValues: e.unknownValues)
    }

    mutating func remember(_ b: UnsafeBufferPointer<UInt8>, spans: Spans, state: TwinState, unknownValues: [String]) {
        guard b.count <= Self.maxLineBytes, (spans.seq?.count ?? 0) <= 16, let r = Self.nameRange(b) else { return }
        let base = b.baseAddress!
        if let k = find(UnsafeBufferPointer(rebasing: b[r])) {
            if entries[k].line.isEmpty { live += 1 }
            if entries[k].line.count == b.count {
                // Reuse the remembered line's storage.
                entries[k].line.withUnsafeMutableBufferPointer { _ = memcpy($0.baseAddress!, base, b.count) }
            } else {
                entries[k].line = Array(b)
            }
            entries[k].ts = spans.ts
            entries[k].seq = spans.seq
            entries[k].state = state
            entries[k].unknownValues = unknownValues
            entries[k].maxSkewMs = spans.maxSkewMs
            lastEntry = k
        } else {
            lastEntry = insert(Entry(name: Array(UnsafeBufferPointer(rebasing: b[r])), line: Array(b), ts: spans.ts, seq: spans.seq,
                                     state: state, unknownValues: unknownValues, maxSkewMs: spans.maxSkewMs))
            live += 1
        }
    }
}
