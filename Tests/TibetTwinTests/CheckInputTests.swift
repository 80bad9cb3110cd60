import Crypto
import Testing
@testable import TibetTwin

@Suite("check inputs: physical file and twin line")
struct CheckInputTests {
    let map = Fixture(.port).map

    static let physicalJSON = #"""
        {"device":"crane-01","time":"2026-11-26T14:32:00.450Z","status":"operational","identity":"ok",
         "values":{"position_x":12.5,"load_kg":2500,"hoist_locked":false,
                   "wind_speed":{"value":3.2,"unit":"m/s","quality":"good"}}}
        """#

    @Test func physicalFileParses() throws {
        let p = try CheckInput.physical(json: Self.physicalJSON, file: "p.json", map: map)
        #expect(p.device == "crane-01")
        #expect(p.status == "operational")
        #expect(p.identity == .ok)
        #expect(p.time.wallNs == RFC3339.parse("2026-11-26T14:32:00.450Z"))
        #expect(p.values["load_kg"] == Reading(value: .int(2500), quality: .good))
        #expect(p.values["wind_speed"] == Reading(value: .double(3.2), quality: .good))
        #expect(p.isAllGood)
    }

    @Test func qualityAndIdentityFromValues() throws {
        let text = #"""
            {"device":"crane-01","time":"2026-11-26T14:32:00Z","status":null,
             "values":{"serial":4712,"load_kg":{"value":null,"quality":"bad_exception(2)"}}}
            """#
        let p = try CheckInput.physical(json: text, file: "p.json", map: map)
        #expect(p.status == nil)
        #expect(!p.statusQuality.isGood)
        #expect(p.values["load_kg"] == Reading(value: nil, quality: .badException(2)))
        #expect(p.identity == .mismatch(register: "serial", expected: "4711", got: "4712"))
        let ok = try CheckInput.physical(json: text.replacingOccurrences("4712", "4711"), file: "p.json", map: map)
        #expect(ok.identity == .ok)
        let unknown = try CheckInput.physical(json: text.replacingOccurrences("\"serial\":4712,", ""), file: "p.json", map: map)
        #expect(unknown.identity == .unknown)
    }

    @Test(arguments: [
        ("[1]", "p.json: expected a JSON object"),
        ("{\"device\":\"crane-02\",\"time\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{}}",
         "p.json: device: \"crane-02\" is not the map's device \"crane-01\""),
        ("{\"device\":\"crane-01\",\"status\":\"operational\",\"values\":{}}", "p.json: time: missing"),
        ("{\"device\":\"crane-01\",\"time\":\"yesterday\",\"status\":\"operational\",\"values\":{}}",
         "p.json: time: not an RFC 3339 time with offset: \"yesterday\""),
        ("{\"device\":\"crane-01\",\"time\":\"2026-11-26T14:32:00Z\",\"status\":\"flying\",\"values\":{}}",
         "p.json: status: \"flying\" is not a status of the map (operational, fault, maintenance, emergency)"),
        ("{\"device\":\"crane-01\",\"time\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"lod_kg\":1}}",
         "p.json: values.lod_kg: not a register of crane-01 (registers: position_x, load_kg, hoist_locked, wind_speed)"),
        ("{\"device\":\"crane-01\",\"time\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"load_kg\":[1]}}",
         "p.json: values.load_kg: expected a number, boolean, string or {\"value\":…,\"quality\":…}"),
        ("{\"device\":\"crane-01\",\"time\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"load_kg\":{\"value\":1,\"quality\":\"meh\"}}}",
         "p.json: values.load_kg.quality: expected a quality (good, bad_comm, bad_timeout, bad_exception(n), bad_decode, uncertain_stale)"),
        ("{\"device\":\"crane-01\",\"time\":\"9999-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{}}",
         "p.json: time: not an RFC 3339 time with offset: \"9999-11-26T14:32:00Z\""),
    ])
    func physicalErrorsNameFileAndField(text: String, message: String) {
        #expect(throws: CheckInputError.self) { try CheckInput.physical(json: text, file: "p.json", map: map) }
        do {
            _ = try CheckInput.physical(json: text, file: "p.json", map: map)
        } catch {
            #expect(error.description == message)
        }
    }

    /// When the line is judged (`--now`): after every `ts` below.
    static let now = ClockReading(monotonicNs: 7, wallNs: RFC3339.parse("2026-11-26T14:32:01Z")!)

    static let twinLine = #"{"device":"crane-01","ts":"2026-11-26T14:32:00.500Z","seq":1042,"status":"operational","values":{"position_x":12.5,"load_kg":2500},"predicted":false,"model_version":"4.2"}"#

    func twin(_ line: String, map: DeviceMap? = nil, key: TwinPublicKey? = nil) throws(CheckInputError) -> TwinState {
        try CheckInput.twin(line: line, file: "t.jsonl", map: map ?? self.map, twinKey: key, now: Self.now).state
    }

    @Test func twinLineParses() throws {
        let t = try twin(Self.twinLine + "\n")
        #expect(t.tsNs == RFC3339.parse("2026-11-26T14:32:00.500Z"))
        #expect(t.seq == 1042)
        #expect(t.values == ["position_x": 12.5, "load_kg": 2500])
        #expect(t.modelVersion == "4.2")
        #expect(!t.predicted)
        #expect(t.signature == .notRequired)
        #expect(t.received.wallNs == t.tsNs)
        #expect(t.received.monotonicNs == t.tsNs)
    }

    @Test func unknownValueNamesAreReportedNotApplied() throws {
        let line = Self.twinLine.replacingOccurrences(#""load_kg":2500"#, #""load_kgs":2500"#)
        let r = try CheckInput.twin(line: line, file: "t.jsonl", map: map, twinKey: nil, now: Self.now)
        #expect(r.unknownValues == ["load_kgs"])
        #expect(r.state.values == ["position_x": 12.5])
    }

    @Test(arguments: [
        ("{\"device\":\"crane-01\",\"status\":\"operational\",\"values\":{}}", "t.jsonl: ts: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"values\":{}}", "t.jsonl: status: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\"}", "t.jsonl: values: missing"),
        ("{\"device\":\"crane-01\",\"values\":{}}", "t.jsonl: ts, status: missing"),
        ("{\"ts\":\"2026-11-26T14:32:00Z\"}", "t.jsonl: device: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"load_kg\":\"x\"}}",
         "t.jsonl: values.load_kg: expected a number"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{},\"predicted\":\"no\"}",
         "t.jsonl: predicted: expected true or false"),
        ("{\"device\":\"crane-01\",\"ts\":\"14:32\",\"status\":\"operational\",\"values\":{}}",
         "t.jsonl: ts: ts \"14:32\" is not RFC 3339 with a time zone"),
        ("{\"device\":\"crane-02\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{}}",
         "t.jsonl: device: no map for device \"crane-02\" (the map's device is \"crane-01\")"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{},\"predictd\":true}",
         "t.jsonl: predictd: not a member of a feed line (device, ts, seq, status, values, predicted, model_version, sig)"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"status\":\"fault\",\"values\":{}}",
         "t.jsonl: status: appears twice"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"load_kg\":1,\"load_kg\":2}}",
         "t.jsonl: values.load_kg: appears twice"),
        ("{}\n{}", "t.jsonl: expected one feed line, found several"),
    ])
    func twinErrorsNameFileAndField(line: String, message: String) {
        do {
            _ = try twin(line)
            Issue.record("accepted: \(line)")
        } catch {
            #expect(error.description == message)
        }
    }

    @Test func notJSONAndOverlongLinesAreRefused() {
        do {
            _ = try twin("{\"device\":\"crane-01\"")
            Issue.record("accepted a truncated line")
        } catch {
            #expect(error.description.hasPrefix("t.jsonl: not JSON: "))
        }
        let line = #"{"device":"crane-01","pad":""# + String(repeating: "x", count: 70_000) + "\"}"
        do {
            _ = try twin(line)
            Issue.record("accepted an overlong line")
        } catch {
            #expect(error.description.hasPrefix("t.jsonl: line longer than 64 KiB"))
        }
    }

    /// `check` must accept exactly the lines a running appliance accepts, into the same state.
    @Test func checkReadsLinesAsTheFeedParserDoes() throws {
        let key = Curve25519.Signing.PrivateKey()
        let pub = TwinPublicKey(key.publicKey)
        var keyed = map
        keyed.twinKey = "keys/crane-01.pub"
        let good = try Self.signed(Self.twinLine, key)
        let lines = [
            Self.twinLine, Self.twinLine + "\r\n", good, good.replacingOccurrences("2500", "2501"),
            Self.twinLine.replacingOccurrences("12.5", "1e400"), Self.twinLine.replacingOccurrences("1042", "-1"),
            Self.twinLine.replacingOccurrences(#""predicted":false,"#, ""), #"{"device":"crane-01"}"#, "[]", "",
            Self.twinLine.replacingOccurrences("operational", "op\\u00e9rational"),
            Self.twinLine.replacingOccurrences(".500Z", ".500+01:00"),
        ]
        let received = Self.now
        for m in [map, keyed] {
            let k = m.twinKey == nil ? nil : pub
            let feed = try TwinLineParser(maps: [m], keys: k.map { [m.device: $0] } ?? [:])
            for line in lines {
                var raw = Array(line.utf8)
                if raw.last == 0x0A { raw.removeLast() }
                if raw.last == 0x0D { raw.removeLast() }
                let expected: TwinState?
                switch feed.parse(raw, received: received) {
                case .accepted(let s, _), .identityFailure(let s, _): expected = s
                case .dropped: expected = nil
                }
                let got = try? CheckInput.twin(line: line, file: "t", map: m, twinKey: k, now: received).state
                #expect((got == nil) == (expected == nil), "\(line)")
                if var got, let expected {
                    got.received = expected.received
                    #expect(got == expected, "\(line)")
                }
            }
        }
    }

    @Test func aFutureTwinTimestampBlocksAsTwinStale() throws {
        var f = Fixture(.port)
        f.now = ClockReading(monotonicNs: f.now.wallNs, wallNs: f.now.wallNs)  // offline, as `check`
        let p = f.physical()
        let ts = RFC3339.format(wallNs: f.now.wallNs + 5_000_000_000, fractionDigits: 3)
        let t = try twin(Self.twinLine.replacingOccurrences("2026-11-26T14:32:00.500Z", ts))
        f.map.limits.rearmMs = 0
        var g = DeviceGuard(map: f.map)
        g.updatePhysical(p)
        g.updateTwin(t)
        g.evaluate(now: f.now, auditOK: true)
        let d = g.decision(intent: 0)
        #expect(!d.allowed)
        #expect(d.failing.contains { $0.code == .twinStale && $0.detail.contains("ahead of the wall clock") })
    }

    // Signatures (docs/twin-feed.md): Ed25519 over the line without its final `,"sig":"…"`.

    static func signed(_ line: String, _ key: Curve25519.Signing.PrivateKey) throws -> String {
        let sig = try key.signature(for: Array(line.utf8))
        return String(line.dropLast()) + #","sig":""# + Base64.encode(Array(sig)) + "\"}"
    }

    @Test func signatureValidTamperedMissingMisplacedWrongKey() throws {
        let key = Curve25519.Signing.PrivateKey()
        let pub = try TwinPublicKey(text: KeyText.text(of: key.publicKey))
        var m = map
        m.twinKey = "keys/crane-01.pub"
        func sig(_ line: String) throws -> SignatureCheck {
            try twin(line, map: m, key: pub).signature
        }
        let good = try Self.signed(Self.twinLine, key)
        #expect(try sig(good) == .valid)
        #expect(try sig(good + "\r\n") == .valid)
        #expect(try sig(good.replacingOccurrences("2500", "2501")) == .invalid)
        #expect(try sig(Self.twinLine) == .missing)
        let other = try Self.signed(Self.twinLine, Curve25519.Signing.PrivateKey())
        #expect(try sig(other) == .invalid)
        // sig not the last member.
        let sigValue = String(good[good.firstRange(of: #""sig":""#)!.upperBound...].dropLast(2))
        let misplaced = #"{"sig":""# + sigValue + #"","# + Self.twinLine.dropFirst()
        #expect(try sig(misplaced) == .invalid)
        // A failed signature blocks on IDENTITY, however good the rest of the line looks.
        var g = DeviceGuard(map: m)
        let f = Fixture(.port)
        g.updatePhysical(f.physical())
        g.updateTwin(try twin(other, map: m, key: pub))
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.decision(intent: 0).failing.contains { $0.code == .identity })
        // Without a twin key the signature is not required (and not checked).
        #expect(try twin(good).signature == .notRequired)
    }

    @Test func rfc3339RefusesInsteadOfTrappingBeyondInt64() {
        #expect(RFC3339.parse("2262-04-11T23:47:16Z") != nil)
        #expect(RFC3339.parse("2262-04-11T23:47:17Z") == nil)
        #expect(RFC3339.parse("1677-09-21T00:12:44Z") != nil)
        #expect(RFC3339.parse("0001-01-01T00:00:00Z") == nil)
    }
}

extension String {
    func replacingOccurrences(_ a: String, _ b: String) -> String { replacing(a, with: b) }
}
