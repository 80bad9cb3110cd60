import Crypto
import Testing
@testable import TibetTwin

/// Maps built in code: `crane-01` unsigned, `crane-02` with a twin key.
enum TwinFixtures {
    static func map(_ device: String, twinKey: String? = nil, maxSkewMs: Double = 1000) -> DeviceMap {
        DeviceMap(
            device: device, profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
            limits: Limits(maxDriftMs: 200, maxSkewMs: maxSkewMs, rearmMs: 100),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational", 1: "fault"]),
            registers: [
                RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
                RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100),
                RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
            ],
            twinKey: twinKey, intents: [IntentSpec(name: "move_left", coil: 0)])
    }

    /// A fixed signing key (deterministic, so failures reproduce).
    static var key: Curve25519.Signing.PrivateKey { try! .init(rawRepresentation: [UInt8](repeating: 7, count: 32)) }
    static var otherKey: Curve25519.Signing.PrivateKey { try! .init(rawRepresentation: [UInt8](repeating: 9, count: 32)) }

    static func parser(skew: Double = 1000) -> TwinLineParser {
        try! TwinLineParser(maps: [map("crane-01", maxSkewMs: skew), map("crane-02", twinKey: "keys/crane-02.pub", maxSkewMs: skew)],
                            keys: ["crane-02": TwinPublicKey(key.publicKey)])
    }

    /// 2026-11-26T14:32:00.500Z, the example time of docs/twin-feed.md.
    static let wall: Int64 = 1_795_703_520_500_000_000
    static let received = ClockReading(monotonicNs: 5_000_000_000, wallNs: wall)

    static func line(device: String = "crane-01", ts: String = "2026-11-26T14:32:00.500Z", seq: Int? = 1,
                     status: String = "operational", values: String = #"{"position_x":12.5,"load_kg":2500}"#) -> String {
        var s = #"{"device":"\#(device)","ts":"\#(ts)""#
        if let seq { s += #","seq":\#(seq)"# }
        s += #","status":"\#(status)","values":\#(values)}"#
        return s
    }

    static func signed(_ line: String, with k: Curve25519.Signing.PrivateKey = key) -> String {
        String(decoding: try! TwinLineSigner.sign(Array(line.utf8), key: k), as: UTF8.self)
    }
}

extension TwinLineOutcome {
    var reason: TwinDropReason? {
        switch self {
        case .accepted: return nil
        case .identityFailure(_, let d), .dropped(let d): return d.reason
        }
    }

    var state: TwinState? {
        switch self {
        case .accepted(let s, _), .identityFailure(let s, _): return s
        case .dropped: return nil
        }
    }
}

@Suite("Twin line parser")
struct TwinLineParserTests {
    let parser = TwinFixtures.parser()

    func parse(_ s: String) -> TwinLineOutcome { parser.parse(Array(s.utf8), received: TwinFixtures.received) }

    @Test func parsesTheSpecExample() throws {
        let line = #"{"device":"crane-01","ts":"2026-11-26T14:32:00.500Z","seq":1042,"status":"operational","values":{"position_x":12.5,"load_kg":2500},"predicted":false,"model_version":"4.2"}"#
        guard case .accepted(let s, let unknown) = parse(line) else { Issue.record("not accepted: \(parse(line))"); return }
        #expect(unknown.isEmpty)
        #expect(s.device == "crane-01")
        #expect(s.tsNs == TwinFixtures.wall)
        #expect(s.seq == 1042)
        #expect(s.status == "operational")
        #expect(s.values == ["position_x": 12.5, "load_kg": 2500])
        #expect(s.predicted == false)
        #expect(s.modelVersion == "4.2")
        #expect(s.signature == .notRequired)
        #expect(s.received == TwinFixtures.received)
    }

    @Test func optionalMembersDefault() {
        let s = parse(TwinFixtures.line(seq: nil)).state
        #expect(s?.seq == nil)
        #expect(s?.predicted == false)
        #expect(s?.modelVersion == nil)
    }

    @Test func whitespaceEscapesOffsetsAndBooleans() {
        let line = #"  { "device" : "crane\u002d01" , "ts":"2026-11-26T15:32:00.500+01:00", "status":"operational","values":{"hoist_locked":true,"load_kg":-1.5e3,"position_x":0}, "predicted":true }  "#
        guard case .accepted(let s, _) = parse(line) else { Issue.record("not accepted: \(parse(line))"); return }
        #expect(s.device == "crane-01")
        #expect(s.tsNs == TwinFixtures.wall)
        #expect(s.values == ["hoist_locked": 1, "load_kg": -1500, "position_x": 0])
        #expect(s.predicted)
    }

    @Test func unknownValueNamesAreReportedAndTheRestApplied() {
        guard case .accepted(let s, let unknown) = parse(TwinFixtures.line(values: #"{"position_x":1,"load_kgs":3,"wind":2}"#)) else {
            Issue.record("not accepted"); return
        }
        #expect(s.values == ["position_x": 1])
        #expect(unknown.sorted() == ["load_kgs", "wind"])
    }

    /// A table of bad lines, each with the reason it must be dropped for.
    static let badLines: [(String, TwinDropReason)] = [
        ("", .notJSON),
        ("not json at all", .notJSON),
        ("[1,2,3]", .notJSON),
        (#"{"device":"crane-01""#, .notJSON),
        (#"{"device":"crane-01",}"#, .notJSON),
        (#"{"device":"crane-01"} trailing"#, .notJSON),
        (#"{"device":'crane-01'}"#, .notJSON),
        (#"{"device":"crane-01","values":{"a":01}}"#, .notJSON),
        (#"{"device":"crane-01","values":{"a":NaN}}"#, .notJSON),
        (#"{"device":"cr\ane-01"}"#, .notJSON),
        ("{\"device\":\"crane\u{01}\"}", .notJSON),
        (#"{"device":"crane-01","x":"\ud800"}"#, .notJSON),
        (String(repeating: "[", count: 40) + String(repeating: "]", count: 40), .notJSON),
        (#"{"device":"crane-01","x":"#  + String(repeating: "[", count: 40) + String(repeating: "]", count: 40) + "}", .notJSON),
        (#"{"ts":"2026-11-26T14:32:00.500Z","status":"operational","values":{}}"#, .missingField),
        (#"{"device":"crane-01","ts":"2026-11-26T14:32:00.500Z","values":{}}"#, .missingField),
        (#"{"device":"crane-01","status":"operational","values":{}}"#, .missingField),
        (#"{"device":"crane-01","ts":"2026-11-26T14:32:00.500Z","status":"operational"}"#, .missingField),
        (#"{"device":42,"ts":"2026-11-26T14:32:00.500Z","status":"operational","values":{}}"#, .wrongType),
        (TwinFixtures.line(status: "x").replacingOccurrences(of: #""x""#, with: "1"), .wrongType),
        (TwinFixtures.line(values: "[]"), .wrongType),
        (TwinFixtures.line(values: #"{"load_kg":"2500"}"#), .wrongType),
        (TwinFixtures.line(values: #"{"load_kg":null}"#), .wrongType),
        (TwinFixtures.line(values: #"{"load_kg":{"v":1}}"#), .wrongType),
        (TwinFixtures.line(values: #"{"load_kg":1e400}"#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: #""seq":1"#, with: #""seq":"1""#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: #""seq":1"#, with: #""seq":-1"#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: #""seq":1"#, with: #""seq":1.5"#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: #""seq":1"#, with: #""seq":18446744073709551616"#), .seqOutOfRange),
        (TwinFixtures.line().replacingOccurrences(of: "}}", with: #"},"predicted":"no"}"#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: "}}", with: #"},"model_version":4.2}"#), .wrongType),
        (TwinFixtures.line().replacingOccurrences(of: "}}", with: #"},"predictd":true}"#), .unknownField),
        (TwinFixtures.line().replacingOccurrences(of: "}}", with: #"},"status":"fault"}"#), .duplicateKey),
        (TwinFixtures.line(values: #"{"load_kg":1,"load_kg":2}"#), .duplicateKey),
        (TwinFixtures.line(ts: "2026-11-26T14:32:00.500"), .badTimestamp),
        (TwinFixtures.line(ts: "yesterday"), .badTimestamp),
        (TwinFixtures.line(ts: "9999-12-31T23:59:59Z"), .badTimestamp),
        (TwinFixtures.line(ts: "2026-02-30T00:00:00Z"), .badTimestamp),
        (TwinFixtures.line(ts: "2026-11-26T14:32:02.000Z"), .futureTimestamp),
        (TwinFixtures.line(device: "crane-99"), .unknownDevice),
        (TwinFixtures.line(device: "CRANE-01"), .unknownDevice),
    ]

    @Test(arguments: badLines)
    func dropsBadLines(_ line: String, _ reason: TwinDropReason) {
        let outcome = parse(line)
        #expect(outcome.reason == reason, "\(line) → \(outcome)")
        if case .accepted = outcome { Issue.record("accepted a bad line: \(line)") }
    }

    @Test func invalidUTF8() {
        var bytes = Array(TwinFixtures.line(status: "operational").utf8)
        let i = bytes.firstIndex(of: UInt8(ascii: "p"))!
        for bad: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]] {
            var b = bytes
            b.replaceSubrange(i..<i + 1, with: bad)
            #expect(parser.parse(b, received: TwinFixtures.received).reason == .invalidUTF8, "\(bad)")
        }
        bytes.replaceSubrange(i..<i + 1, with: Array("é€😀".utf8))
        #expect(parser.parse(bytes, received: TwinFixtures.received).reason == nil, "valid multi-byte UTF-8")
    }

    @Test func tooLong() {
        let pad = String(repeating: " ", count: TwinLineParser.maxLineBytes)
        #expect(parse(TwinFixtures.line() + pad).reason == .tooLong)
        let exact = TwinFixtures.line()
        #expect(parse(exact + String(repeating: " ", count: TwinLineParser.maxLineBytes - exact.utf8.count)).reason == nil)
    }

    @Test func skewIsPerDevice() {
        let strict = TwinFixtures.parser(skew: 100)
        let line = TwinFixtures.line(ts: "2026-11-26T14:32:00.700Z")
        #expect(strict.parse(Array(line.utf8), received: TwinFixtures.received).reason == .futureTimestamp)
        #expect(parse(line).reason == nil)
        // Behind is never "future": staleness is the guard's business.
        #expect(strict.parse(Array(TwinFixtures.line(ts: "2026-11-26T14:00:00Z").utf8), received: TwinFixtures.received).reason == nil)
    }

    @Test func numbersParseExactly() {
        for text in ["0", "-0", "1", "12.5", "0.1", "0.3", "1e-7", "123456789012345678", "1.7976931348623157e308",
                     "5e-324", "2.2250738585072014e-308", "0.30000000000000004", "123.456e2", "9007199254740993",
                     "1234567.1234567", "-98765.4321E-3", "1E22", "1e23", "4.35", "0.000001"] {
            let line = TwinFixtures.line(values: #"{"load_kg":\#(text)}"#)
            #expect(parse(line).state?.values["load_kg"] == Double(text), "\(text)")
        }
    }

    @Test func missingKeyForASignedDeviceIsRefused() {
        #expect(throws: TwinKeyMissing.self) {
            try TwinLineParser(maps: [TwinFixtures.map("crane-02", twinKey: "k.pub")], keys: [:])
        }
    }
}

@Suite("Twin signatures")
struct TwinSignatureTests {
    let parser = TwinFixtures.parser()

    func parse(_ s: String) -> TwinLineOutcome { parser.parse(Array(s.utf8), received: TwinFixtures.received) }

    @Test func validSignatureIsAccepted() {
        let line = TwinFixtures.signed(TwinFixtures.line(device: "crane-02"))
        #expect(line.hasSuffix("\"}"))
        guard case .accepted(let s, _) = parse(line) else { Issue.record("not accepted: \(parse(line))"); return }
        #expect(s.signature == .valid)
        #expect(s.values["load_kg"] == 2500)
    }

    @Test func signatureCoversTheExactBytesIncludingWhitespace() {
        let line = TwinFixtures.signed(#"{ "device":"crane-02", "ts":"2026-11-26T14:32:00.500Z","status":"operational","values":{ } }"#)
        #expect(parse(line).state?.signature == .valid)
        // Whitespace changed after signing: another message, so the signature fails.
        #expect(parse(line.replacingOccurrences(of: "{ }", with: "{}")).reason == .badSignature)
    }

    @Test func tamperedValueFails() {
        let line = TwinFixtures.signed(TwinFixtures.line(device: "crane-02"))
        let tampered = line.replacingOccurrences(of: "2500", with: "2600")
        guard case .identityFailure(let s, let drop) = parse(tampered) else { Issue.record("not an identity failure"); return }
        #expect(drop.reason == .badSignature)
        #expect(s.signature == .invalid)
        #expect(s.isIdentityFailure)
        #expect(s.device == "crane-02")
    }

    @Test func wrongKeyFails() {
        let line = TwinFixtures.signed(TwinFixtures.line(device: "crane-02"), with: TwinFixtures.otherKey)
        #expect(parse(line).reason == .badSignature)
        #expect(parse(line).state?.signature == .invalid)
    }

    @Test func missingSignatureFails() {
        guard case .identityFailure(let s, let drop) = parse(TwinFixtures.line(device: "crane-02")) else {
            Issue.record("not an identity failure"); return
        }
        #expect(drop.reason == .missingSignature)
        #expect(s.signature == .missing)
        #expect(s.isIdentityFailure)
    }

    @Test func signatureNotLastFails() {
        let line = TwinFixtures.signed(TwinFixtures.line(device: "crane-02"))
        // Move the sig member to the front.
        let sigStart = line.range(of: #","sig":""#)!.lowerBound
        let sigMember = String(line[line.index(after: sigStart)..<line.index(before: line.endIndex)])
        let body = String(line[..<sigStart]) + "}"
        let moved = "{" + sigMember + "," + body.dropFirst()
        #expect(parse(moved).reason == .signatureNotLast)
        // And a member after the sig.
        let after = String(line.dropLast()) + #","predicted":false}"#
        #expect(parse(after).reason == .signatureNotLast)
    }

    @Test func garbledSignatureFails() {
        let line = TwinFixtures.line(device: "crane-02").dropLast() + #","sig":"not base64!"}"#
        #expect(parse(String(line)).reason == .badSignature)
        let short = TwinFixtures.line(device: "crane-02").dropLast() + #","sig":"AAAA"}"#
        #expect(parse(String(short)).reason == .badSignature)
        let number = TwinFixtures.line(device: "crane-02").dropLast() + #","sig":5}"#
        #expect(parse(String(number)).reason == .badSignature)
    }

    @Test func unsignedDeviceIgnoresASig() {
        let line = TwinFixtures.signed(TwinFixtures.line(device: "crane-01"), with: TwinFixtures.otherKey)
        #expect(parse(line).state?.signature == .notRequired)
    }

    @Test func identityFailureDoesNotTrustBrokenContent() {
        // Unsigned and missing everything but the device: still an identity failure (blocks).
        guard case .identityFailure(let s, _) = parse(#"{"device":"crane-02"}"#) else { Issue.record("not an identity failure"); return }
        #expect(s.status == "")
        #expect(s.values.isEmpty)
        #expect(s.tsNs == TwinFixtures.received.wallNs)
    }

    @Test func signerRejectsWhatItCannotSign() {
        for (text, kind) in [("not json", TwinSignError.Kind.notAnObject), ("[1]", .notAnObject), ("{}", .empty),
                             (#"{"a":1,"sig":"x"}"#, .alreadySigned)] {
            #expect(throws: TwinSignError.self) { try TwinLineSigner.sign(Array(text.utf8), key: TwinFixtures.key) }
            do { _ = try TwinLineSigner.sign(Array(text.utf8), key: TwinFixtures.key) } catch { #expect(error.kind == kind) }
        }
    }
}

@Suite("Twin validator")
struct TwinValidatorTests {
    @Test func replayedAndReorderedSeqAreDropped() {
        var v = TwinValidator(parser: TwinFixtures.parser())
        func feed(_ seq: Int, _ device: String = "crane-01") -> TwinDropReason? {
            v.validate(Array(TwinFixtures.line(device: device, seq: seq).utf8), received: TwinFixtures.received).reason
        }
        #expect(feed(5) == nil)
        #expect(feed(5) == .replay)
        #expect(feed(4) == .replay)
        #expect(feed(6) == nil)
        #expect(v.last["crane-01"]?.seq == 6)
        // Per device.
        #expect(feed(1, "crane-02") == .missingSignature)
        v.forget(device: "crane-01")
        #expect(feed(1) == nil)
    }

    @Test func signedReplayIsDroppedAndIdentityFailuresDoNotMoveSeq() {
        var v = TwinValidator(parser: TwinFixtures.parser())
        let good = TwinFixtures.signed(TwinFixtures.line(device: "crane-02", seq: 10))
        #expect(v.validate(Array(good.utf8), received: TwinFixtures.received).reason == nil)
        #expect(v.validate(Array(good.utf8), received: TwinFixtures.received).reason == .replay)
        // A forged line with a huge seq is an identity failure and must not lock out the real twin.
        let forged = TwinFixtures.signed(TwinFixtures.line(device: "crane-02", seq: 1_000_000), with: TwinFixtures.otherKey)
        #expect(v.validate(Array(forged.utf8), received: TwinFixtures.received).reason == .badSignature)
        let next = TwinFixtures.signed(TwinFixtures.line(device: "crane-02", seq: 11))
        #expect(v.validate(Array(next.utf8), received: TwinFixtures.received).reason == nil)
    }

    @Test func linesWithoutSeqAreOrderedByTs() {
        var v = TwinValidator(parser: TwinFixtures.parser())
        func feed(_ ts: String) -> TwinDropReason? {
            v.validate(Array(TwinFixtures.line(ts: ts, seq: nil).utf8), received: TwinFixtures.received).reason
        }
        #expect(feed("2026-11-26T14:32:00.400Z") == nil)
        #expect(feed("2026-11-26T14:32:00.400Z") == nil)  // same time: a heartbeat
        #expect(feed("2026-11-26T14:32:00.300Z") == .replay)
        #expect(feed("2026-11-26T14:32:00.450Z") == nil)
    }
}

/// Issue 17: a `seq` at the top of the range, and the way back from a `seq` that went ahead.
@Suite("Twin seq bounds and restart")
struct TwinSeqTests {
    static func line(seq: String, ts: String = "2026-11-26T14:32:00.500Z") -> [UInt8] {
        Array(#"{"device":"crane-01","ts":"\#(ts)","seq":\#(seq),"status":"operational","values":{"position_x":12.5}}"#.utf8)
    }

    /// `received` `ms` milliseconds after the fixture's reading (monotonic and wall).
    static func at(ms: Int64) -> ClockReading {
        ClockReading(monotonicNs: TwinFixtures.received.monotonicNs + ms * 1_000_000, wallNs: TwinFixtures.wall + ms * 1_000_000)
    }

    @Test func seqAboveTwoToTheFiftyThirdIsDroppedAndDoesNotBlockTheTwin() {
        var v = TwinValidator(parser: TwinFixtures.parser())
        #expect(v.validate(Self.line(seq: "7"), received: TwinFixtures.received).reason == nil)
        for big in ["18446744073709551615", "18446744073709551616", "99999999999999999999999", "9007199254740993"] {
            let out = v.validate(Self.line(seq: big), received: TwinFixtures.received)
            #expect(out.reason == .seqOutOfRange, "seq \(big)")
            if case .dropped(let drop) = out { #expect(drop.detail.contains("9007199254740992"), "\(drop.detail)") }
        }
        // The dropped lines did not move seq: the twin's next line is accepted at once.
        #expect(v.last["crane-01"]?.seq == 7)
        #expect(v.validate(Self.line(seq: "8"), received: TwinFixtures.received).reason == nil)
        // On a signed device the signature is checked first, and a signed out-of-range seq is the same drop.
        let signed = TwinFixtures.signed(TwinFixtures.line(device: "crane-02", seq: 5).replacingOccurrences(of: #""seq":5"#, with: #""seq":18446744073709551615"#))
        #expect(v.validate(Array(signed.utf8), received: TwinFixtures.received).reason == .seqOutOfRange)
    }

    @Test func seqOfExactlyTwoToTheFiftyThirdIsAcceptedAndOnlyAnAuditedRestartAfterSilenceLeavesIt() {
        var v = TwinValidator(parser: TwinFixtures.parser())
        var resets: [TwinSeqReset] = []
        func feed(_ seq: String, ts: String, atMs: Int64, audited: Bool = true) -> TwinLineOutcome {
            v.validate(Self.line(seq: seq, ts: ts), received: Self.at(ms: atMs)) { r in
                if audited { resets.append(r) }
                return audited
            }
        }
        #expect(feed("1041", ts: "2026-11-26T14:32:00.500Z", atMs: 0).reason == nil)
        #expect(feed("9007199254740992", ts: "2026-11-26T14:32:00.600Z", atMs: 100).reason == nil)
        #expect(v.last["crane-01"]?.seq == TwinState.maxSeq)
        // The twin carries on at 1042...: replays while the device is fresh (within 2 × max_age_ms = 1 s here).
        #expect(feed("1042", ts: "2026-11-26T14:32:00.700Z", atMs: 200).reason == .replay)
        #expect(feed("1043", ts: "2026-11-26T14:32:01.000Z", atMs: 1099).reason == .replay)
        #expect(resets.isEmpty)
        // After the silence: a line older (ts) than the last accepted is still a replay: a recorded line never comes back.
        #expect(feed("1000", ts: "2026-11-26T14:32:00.550Z", atMs: 1200).reason == .replay)
        #expect(feed("1041", ts: "2026-11-26T14:32:00.600Z", atMs: 1200).reason == .replay)
        // A restart that cannot be put on the record is refused.
        #expect(feed("1044", ts: "2026-11-26T14:32:01.200Z", atMs: 1200, audited: false).reason == .replay)
        #expect(resets.isEmpty)
        // A later line after the silence restarts the count, and the restart is reported.
        #expect(feed("1045", ts: "2026-11-26T14:32:01.300Z", atMs: 1300).reason == nil)
        #expect(resets.count == 1)
        #expect(resets.first?.fromSeq == TwinState.maxSeq)
        #expect(resets.first?.toSeq == 1045)
        #expect(resets.first.map { $0.silentMs >= 1000 } == true)
        #expect(v.last["crane-01"]?.seq == 1045)
        // From here on the new count is the count: an older seq is a replay again, right away.
        #expect(feed("1044", ts: "2026-11-26T14:32:01.400Z", atMs: 1400).reason == .replay)
        #expect(feed("1046", ts: "2026-11-26T14:32:01.400Z", atMs: 1400).reason == nil)
        #expect(resets.count == 1)
    }

    @Test func withoutARestartBoundOrAnAuditorALowerSeqStaysAReplay() {
        let rules = TwinDeviceRules(device: "crane-01", valueNames: ["position_x"], maxSkewMs: 1000, key: nil)
        var v = TwinValidator(parser: TwinLineParser(rules: [rules]))
        #expect(v.validate(Self.line(seq: "50"), received: Self.at(ms: 0)).reason == nil)
        #expect(v.validate(Self.line(seq: "1", ts: "2026-11-26T14:33:00.000Z"), received: Self.at(ms: 60_000)) { _ in true }.reason == .replay)
        // The map-derived rules have the bound; the plain `validate` has no auditor.
        var w = TwinValidator(parser: TwinFixtures.parser())
        #expect(w.validate(Self.line(seq: "50"), received: Self.at(ms: 0)).reason == nil)
        #expect(w.validate(Self.line(seq: "1", ts: "2026-11-26T14:33:00.000Z"), received: Self.at(ms: 60_000)).reason == .replay)
        #expect(TwinDeviceRules.seqResetSilenceMs(maxAgeMs: 200) == 1000)
        #expect(TwinDeviceRules.seqResetSilenceMs(maxAgeMs: 3000) == 6000)
    }

    @Test func seqIsShownUnsignedInJSON() {
        #expect(TwinState.seqJSON(TwinState.maxSeq) == .int(9_007_199_254_740_992))
        #expect(TwinState.seqJSON(UInt64.max) == .int(Int64.max))
        #expect(TwinState.seqJSON(nil) == .null)
    }
}

@Suite("Twin line mutations")
struct TwinMutationTests {
    /// A small deterministic generator, so a failure can be repeated.
    struct SplitMix {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func mutate(_ line: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var b = line
        let alphabet = Array(#"{}[]:,"\ 0123456789.eE+-tfn"#.utf8) + [0x00, 0xC3, 0xFF, 0x0D]
        for _ in 0..<(1 + Int(rng.next() % 3)) {
            guard !b.isEmpty else { break }
            let i = Int(rng.next() % UInt64(b.count))
            switch rng.next() % 4 {
            case 0: b[i] = UInt8(truncatingIfNeeded: rng.next())
            case 1: b.remove(at: i)
            case 2: b.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: i)
            default: b[i] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
            }
        }
        return b
    }

    /// No mutation of a signed line is accepted with content other than what was signed: a
    /// forged state can never pass as authentic.
    @Test func mutatedSignedLinesNeverPassWithOtherContent() {
        let parser = TwinFixtures.parser()
        let original = Array(TwinFixtures.signed(TwinFixtures.line(device: "crane-02", seq: 77)).utf8)
        guard case .accepted(let truth, _) = parser.parse(original, received: TwinFixtures.received) else {
            Issue.record("the original line must be accepted"); return
        }
        var rng = SplitMix(state: 0x5167_4E45)
        var accepted = 0
        for _ in 0..<2_000 {
            let m = Self.mutate(original, &rng)
            switch parser.parse(m, received: TwinFixtures.received) {
            case .accepted(let s, _) where s.device == "crane-02":
                accepted += 1
                #expect(s.signature == .valid)
                #expect(s.values == truth.values && s.status == truth.status && s.seq == truth.seq && s.tsNs == truth.tsNs,
                        "accepted altered content: \(String(decoding: m, as: UTF8.self))")
            case .accepted(let s, _):
                // The device name itself was changed to an unsigned device: that is another device's line.
                #expect(s.signature == .notRequired)
            case .identityFailure(let s, _):
                #expect(s.isIdentityFailure)
            case .dropped:
                break
            }
        }
        #expect(accepted < 2_000)
    }

    /// Any mutation of an unsigned line: no crash, and whatever is accepted is well-formed.
    @Test func mutatedLinesParseOrDropCleanly() {
        let parser = TwinFixtures.parser()
        let original = Array(TwinFixtures.line(values: #"{"position_x":12.5,"load_kg":2500,"hoist_locked":true}"#).utf8)
        var rng = SplitMix(state: 0x4D55_5441)
        var counts: [String: Int] = [:]
        for _ in 0..<50_000 {
            let m = Self.mutate(original, &rng)
            switch parser.parse(m, received: TwinFixtures.received) {
            case .accepted(let s, _):
                counts["accepted", default: 0] += 1
                #expect(parser.devices[s.device] != nil)
                #expect(s.values.keys.allSatisfy { parser.devices[s.device]!.valueNames.contains($0) })
                #expect(s.values.values.allSatisfy { $0.isFinite })
            case .identityFailure(_, let d), .dropped(let d):
                counts[d.reason.rawValue, default: 0] += 1
            }
        }
        #expect(counts["accepted", default: 0] > 0)
        #expect(counts["not_json", default: 0] > 0)
        #expect(counts.values.reduce(0, +) == 50_000)
    }
}
