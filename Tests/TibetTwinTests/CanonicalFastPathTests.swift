import Crypto
import PropertyBased
import Testing
@testable import TibetTwin

/// The byte-level canonical writer and its shortcuts must give exactly the bytes of the general
/// form: every hash already written depends on it.
@Suite("Canonical JSON fast paths")
struct CanonicalFastPathTests {
    @Test func doubleShortcutsEqualTheGeneralLayout() async {
        let fixed: [Double] = [0, -0.0, 1, -1, 0.5, 1e-4, 0.0001234, 9.99e-5, 1e-5, 123.456, 1e15, 9.999999999999998e15,
                               1e16, 1e17, 1.5e300, -2.5e-300, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 4503599627370497.5,
                               0.1 + 0.2, 503, 200.001, 12.345678]
        for d in fixed { #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)") }
        // Random bit patterns cover every magnitude; scaled integers and decimals the common ones.
        await propertyCheck(count: 3000, input: Gen.uint64()) { bits in
            let d = Double(bitPattern: bits)
            #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)")
        }
        await propertyCheck(count: 3000, input: Gen.int64(in: -10_000_000_000...10_000_000_000), Gen.int(in: 0...12)) { n, e in
            var scale = 1.0
            for _ in 0..<e { scale *= 10 }
            let d = Double(n) / scale
            #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)")
        }
    }

    /// The short decimal path (ages, deltas and readings with few digits after the point) must
    /// give the general path's digits, here and at its edges: across powers of ten, at its
    /// magnitude bounds, with the most digits it takes.
    @Test func shortDecimalsEqualTheGeneralLayout() async {
        var edges: [Double] = [1e-4, 0.00010000000000000002, 0.1, 0.3, 0x1p48 - 0.5, 0x1p47 + 0.25, 1.0000000000000002,
                               0.9999999999999999, 123456789.123456, 2.2250738585072014e-308, .leastNonzeroMagnitude]
        for e in -4...15 {
            var p = 1.0
            if e >= 0 { for _ in 0..<e { p *= 10 } } else { for _ in 0..<(-e) { p /= 10 } }
            var up = p, down = p
            for _ in 0..<8 { up = up.nextUp; down = down.nextDown; edges += [up, down, -up] }
        }
        for d in edges { #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)") }
        await propertyCheck(count: 5000, input: Gen.int64(in: -99_999_999_999_999...99_999_999_999_999), Gen.int(in: 1...15)) { n, k in
            let d = Double(n) / JSONValue.powersOfTen[k]
            #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)")
        }
        // Any double of the magnitudes the path takes, most of which it hands on to the general one.
        await propertyCheck(count: 5000, input: Gen.uint64(in: 0x3F1A_36E2_EB1C_432D...0x42F0_0000_0000_0000)) { bits in
            let d = Double(bitPattern: bits)
            #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)")
        }
        // Microsecond-rounded milliseconds, the ages in every check token.
        await propertyCheck(count: 5000, input: Gen.int64(in: 0...10_000_000_000_000)) { ns in
            let d = Fmt.ms(ns)
            #expect(JSONValue.format(d) == JSONValue.formatGeneral(d), "\(d)")
        }
    }

    @Test func stringEscapesAreTheCanonicalOnes() {
        let s = "a\"b\\c\n\r\t\u{08}\u{0C}\u{01}\u{1F}\u{7F}é😀"
        #expect(JSONValue.string(s).canonical == #""a\"b\\c\n\r\t\b\f\u0001\u001f"# + "\u{7F}é😀\"")
        var viaString = ""
        JSONValue.writeString(s, into: &viaString)
        #expect(viaString == JSONValue.string(s).canonical)
    }

    @Test func tokenHashBytesEqualTheCanonicalObject() {
        var chain = TokenChain(idPrefix: "t")
        for i in 0..<3 {
            let tok = chain.append(
                action: .check, wallNs: 1_795_703_520_500_000_000 + Int64(i), actor: "jis:guard \"01\"",
                erin: ["device": "crane-01", "allowed": false, "v": .double(0.1 + Double(i)), "e": "\n"],
                eraan: ["jis": "jis:crane-01", "seq": .null], eromheen: ["node": "guard-01", "é": [1, 2.5]],
                erachter: ["intent": "move_left", "safety_critical": true])
            #expect(tok.hashedBytes == JSONValue.object(tok.hashedFields).canonicalBytes)
            #expect(tok.contentHash == tok.computeContentHash())
        }
    }

    @Test func rfc3339FormatPinned() {
        #expect(RFC3339.format(wallNs: 1_795_703_521_003_000_000) == "2026-11-26T14:32:01.003Z")
        #expect(RFC3339.format(wallNs: 1_795_703_521_003_000_000, fractionDigits: 6) == "2026-11-26T14:32:01.003000Z")
        #expect(RFC3339.format(wallNs: -1, fractionDigits: 9) == "1969-12-31T23:59:59.999999999Z")
        #expect(RFC3339.format(wallNs: 951_782_400_000_000_000, fractionDigits: 0) == "2000-02-29T00:00:00Z")
        #expect(RFC3339.format(wallNs: .min, fractionDigits: 9).hasPrefix("1677-09-21T00:12:43.145224192"))
        #expect(RFC3339.format(wallNs: .max, fractionDigits: 9) == "2262-04-11T23:47:16.854775807Z")
    }

    @Test func rfc3339FormatRoundTripsEveryInstant() async {
        await propertyCheck(count: 2000, input: Gen.int64(in: -9_000_000_000_000_000_000...9_000_000_000_000_000_000)) { ns in
            #expect(RFC3339.parse(RFC3339.format(wallNs: ns, fractionDigits: 9)) == ns)
            let ms = RFC3339.format(wallNs: ns, fractionDigits: 3)
            #expect(ms.utf8.count == 24 && ms.hasSuffix("Z"), "\(ms)")
        }
    }

    @Test func hexIsLowercaseTwoDigitsAByte() {
        let bytes = (0...255).map { UInt8($0) }
        let hex = Hex.encode(bytes)
        #expect(hex.utf8.count == 512)
        #expect(hex.hasPrefix("000102030405060708090a0b0c0d0e0f10"))
        #expect(hex.hasSuffix("f9fafbfcfdfeff"))
        #expect(Hex.decode(hex) == bytes)
    }
}

@Suite("Check records: direct canonical bytes")
struct CheckRecordTests {
    static let texts = ["", "crane-01", "é\"\\\n\t\u{01}", "😀 load", "status mismatch: physical=fault, twin=operational",
                        "e\u{301}", "z", "A", "a_b", "ab"]

    /// A NaN value (a PLC's float register can hold one) is the same value in the sorted copy
    /// the guard hands over: the debug check that they agree must not trap on NaN ≠ NaN.
    /// (The property test below found it: `Double(bitPattern:)` of a random word is NaN about
    /// once in 2,048.)
    @Test func aNaNValueIsTheSameValueInTheSortedCopy() {
        let values: [String: Double] = ["load_kg": .nan, "position_x": 12.5]
        let decision = SyncDecision(
            device: "crane-01", intent: "move", allowed: false, reasonCode: .ok, reason: "x", failing: [],
            delta: StateDelta(driftMs: 1, physicalAgeMs: 2, twinAgeMs: 3, values: values, maxSensor: nil, maxValueDelta: 0,
                              physicalStatus: "operational", physicalStatusDerived: false, twinStatus: "operational"))
        let chain = CheckChain(idPrefix: "x-", node: "n", actor: "jis:n", host: "h")
        let sorted = values.sorted { JSONValue.utf8Precedes($0.key, $1.key) }.map { ($0.key, $0.value) }
        let r = CheckRecord(chain: chain, serial: 0, now: ClockReading(monotonicNs: 1, wallNs: 1_795_703_520_000_000_000),
                            decision: decision, sortedValues: sorted, mapSHA256: nil, twinSeq: nil,
                            safetyCritical: false, prevDigest: nil, scratch: ByteSink(capacity: 16))
        #expect(r.token.computeContentHash() == r.contentHash)
    }

    @Test func recordHashEqualsTheTokensCanonicalHash() async {
        let gen = zip(Gen.int(in: 0...9).array(of: 8), Gen.uint64().array(of: 6), Gen.bool.array(of: 4))
        await propertyCheck(count: 400, input: gen) { texts, bits, flags in
            func t(_ i: Int) -> String { Self.texts[texts[i]] }
            func d(_ i: Int) -> Double { Double(bitPattern: bits[i]) }
            let checks = GuardCheck.allCases
            var values: [String: Double] = [:]
            for i in 0..<(texts[7] % 4) { values[t(i)] = d(i) }
            let failing = (0..<(texts[6] % 3)).map { FailingCheck(check: checks[(texts[$0] + $0) % checks.count], detail: t($0 + 1)) }
            let decision = SyncDecision(
                device: t(0), intent: t(1), allowed: flags[0], reasonCode: failing.first?.code ?? .ok, reason: t(2),
                failing: failing,
                delta: StateDelta(driftMs: flags[1] ? d(0) : nil, physicalAgeMs: d(1), twinAgeMs: flags[2] ? nil : d(2),
                                  values: values, maxSensor: flags[3] ? t(3) : nil, maxValueDelta: d(3),
                                  physicalStatus: t(4), physicalStatusDerived: flags[2], twinStatus: flags[1] ? nil : t(5)))
            let chain = CheckChain(idPrefix: "x-" + t(7), node: t(6), actor: "jis:" + t(6), host: t(7))
            let prev = flags[2] ? Digest256(SHA256.hash(data: bits.map { UInt8(truncatingIfNeeded: $0) })) : nil
            let sorted = flags[0] ? values.sorted { JSONValue.utf8Precedes($0.key, $1.key) }.map { ($0.key, $0.value) } : nil
            let r = CheckRecord(chain: chain, serial: bits[3] % 3 + (prev == nil ? 0 : 1),
                                now: ClockReading(monotonicNs: Int64(bitPattern: bits[4]) / 2,
                                                  wallNs: 1_795_703_520_000_000_000 + Int64(bits[5] % 1_000_000_000_000)),
                                decision: decision, sortedValues: sorted,
                                mapSHA256: flags[0] ? t(5) : nil, twinSeq: flags[2] ? bits[5] : nil,
                                safetyCritical: flags[3], prevDigest: prev, scratch: ByteSink(capacity: 16))
            let token = r.token
            #expect(token.computeContentHash() == r.contentHash)
            #expect(token.parentId == (prev == nil ? nil : "x-\(t(7))-\(r.serial - 1)"))
            #expect(token.prevHash == prev.map { d in d.withUnsafeBytes { Hex.encode($0) } })
            #expect(token.tokenId == "x-\(t(7))-\(r.serial)")
            #expect(token.hashedBytes == JSONValue.object(token.hashedFields).canonicalBytes)
        }
    }

    @Test func byteSinkNumbersEqualTheGeneralForm() async {
        let sink = ByteSink(capacity: 16)
        func written(_ f: (ByteSink) -> Void) -> String {
            sink.reset()
            f(sink)
            return String(decoding: sink.bytes, as: UTF8.self)
        }
        for i: Int64 in [0, 1, -1, 9, 10, -10, .max, .min, 1_000_000_007] {
            #expect(written { $0.appendInt(i) } == String(i))
        }
        for d: Double in [0, -0.0, 1, -1, 0.25, 1e15, 1e16, -9.999999999999998e15, .nan, .infinity, 12.345] {
            #expect(written { $0.appendDouble(d) } == JSONValue.format(d), "\(d)")
        }
        await propertyCheck(count: 2000, input: Gen.uint64()) { bits in
            let d = Double(bitPattern: bits)
            #expect(written { $0.appendDouble(d) } == JSONValue.format(d), "\(d)")
            let i = Int64(bitPattern: bits)
            #expect(written { $0.appendInt(i) } == String(i))
        }
    }

    @Test func byteSinkTimestampsEqualTheFormattedText() async {
        let sink = ByteSink(capacity: 16)
        func written(_ ns: Int64) -> String {
            sink.reset()
            sink.appendTimestamp(wallNs: ns)
            return String(decoding: sink.bytes, as: UTF8.self)
        }
        // Edges: the second each side of the epoch, the ends of Int64, years outside 0...9999 are not
        // possible in Int64 nanoseconds; within a kept second and across to the next.
        for ns: Int64 in [0, -1, 1, 999_999_999, 1_000_000_000, -1_000_000_000, -999_999_999, .max, .min, .min + 1,
                          1_795_703_520_000_000_000, 1_795_703_520_999_999_999, 1_795_703_521_000_000_000, 1_795_703_520_500_000_000] {
            #expect(written(ns) == RFC3339.format(wallNs: ns, fractionDigits: 6), "\(ns)")
        }
        await propertyCheck(count: 3000, input: Gen.int64(), Gen.int64(in: 0...3_000_000_000)) { ns, step in
            #expect(written(ns) == RFC3339.format(wallNs: ns, fractionDigits: 6), "\(ns)")
            let (next, overflow) = ns.addingReportingOverflow(step)
            if !overflow { #expect(written(next) == RFC3339.format(wallNs: next, fractionDigits: 6), "\(next)") }
        }
    }

    @Test func escapeScanFindsEverySpecialByteAtEveryOffset() {
        // The eight-bytes-at-a-time scan must see a special byte in any lane, and no false one.
        for special: UInt8 in [0x00, 0x01, 0x0A, 0x1F, 0x22, 0x5C] {
            for length in 1...20 {
                for at in 0..<length {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    bytes[at] = special
                    #expect(bytes.withUnsafeBufferPointer { JSONValue.needsEscape($0) }, "byte \(special) at \(at) of \(length)")
                }
            }
        }
        let plain = Array("abcdefghijklmnopqrstuvwxyz !#$%&'()*+,-./0123456789:;<=>?@[]^_`{|}~\u{7F}é😀".utf8)
        for n in 0...plain.count {
            #expect(!plain.prefix(n).withUnsafeBufferPointer { JSONValue.needsEscape($0) })
        }
        let sink = ByteSink(capacity: 16)
        let s = "crane \"01\"\n\u{01}é"
        sink.appendEscaped(s)
        #expect("\"" + String(decoding: sink.bytes, as: UTF8.self) + "\"" == JSONValue.string(s).canonical)
        // The one-pass copy of short texts and the scan of long ones, with a special byte anywhere.
        for length in 0...40 {
            for at in -1..<length {
                for special in ["\"", "\\", "\n", "\u{01}", "é"] {
                    var t = String(repeating: "a", count: length)
                    if at >= 0 { t = String(t.prefix(at)) + special + String(t.dropFirst(at + 1)) }
                    sink.reset()
                    sink.appendEscaped(t)
                    #expect("\"" + String(decoding: sink.bytes, as: UTF8.self) + "\"" == JSONValue.string(t).canonical, "\(t)")
                }
            }
        }
    }
}
