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

    static let twinLine = #"{"device":"crane-01","ts":"2026-11-26T14:32:00.500Z","seq":1042,"status":"operational","values":{"position_x":12.5,"load_kg":2500},"predicted":false,"model_version":"4.2"}"#

    @Test func twinLineParses() throws {
        let t = try CheckInput.twin(line: Self.twinLine + "\n", file: "t.jsonl", map: map, twinKey: nil)
        #expect(t.tsNs == RFC3339.parse("2026-11-26T14:32:00.500Z"))
        #expect(t.seq == 1042)
        #expect(t.values == ["position_x": 12.5, "load_kg": 2500])
        #expect(t.modelVersion == "4.2")
        #expect(!t.predicted)
        #expect(t.signature == .notRequired)
        #expect(t.received.wallNs == t.tsNs)
    }

    @Test(arguments: [
        ("{\"device\":\"crane-01\"", "t.jsonl: not JSON: at byte 20: unexpected end of input"),
        ("{\"device\":\"crane-01\",\"status\":\"operational\",\"values\":{}}", "t.jsonl: ts: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"values\":{}}", "t.jsonl: status: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\"}", "t.jsonl: values: missing"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{\"a\":\"x\"}}",
         "t.jsonl: values.a: expected a number or a boolean"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{},\"seq\":-1}",
         "t.jsonl: seq: expected a non-negative integer"),
        ("{\"device\":\"crane-01\",\"ts\":\"2026-11-26T14:32:00Z\",\"status\":\"operational\",\"values\":{},\"predicted\":\"no\"}",
         "t.jsonl: predicted: expected true or false"),
        ("{}\n{}", "t.jsonl: expected one feed line, found several"),
    ])
    func twinErrorsNameFileAndField(line: String, message: String) {
        do {
            _ = try CheckInput.twin(line: line, file: "t.jsonl", map: map, twinKey: nil)
            Issue.record("accepted: \(line)")
        } catch {
            #expect(error.description == message)
        }
    }

    @Test func overlongLineIsRefused() {
        let line = #"{"device":"crane-01","pad":""# + String(repeating: "x", count: 70_000) + "\"}"
        #expect(throws: CheckInputError.self) { try CheckInput.twin(line: line, file: "t", map: map, twinKey: nil) }
    }

    // Signatures (SPEC §3.3): Ed25519 over the line without its final `,"sig":"…"`.

    static func signed(_ line: String, _ key: Curve25519.Signing.PrivateKey) throws -> String {
        let sig = try key.signature(for: Array(line.utf8))
        return String(line.dropLast()) + #","sig":""# + Base64.encode(Array(sig)) + "\"}"
    }

    @Test func signatureValidTamperedMissingMisplacedWrongKey() throws {
        let key = Curve25519.Signing.PrivateKey()
        let pub = try CheckInput.TwinKey(text: KeyText.text(of: key.publicKey))
        var m = map
        m.twinKey = "keys/crane-01.pub"
        func sig(_ line: String) throws -> SignatureCheck {
            try CheckInput.twin(line: line, file: "t", map: m, twinKey: pub).signature
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
        #expect(try sig(good.replacingOccurrences(#","sig":""#, #", "sig": ""#)) == .invalid)
        // Without a twin key the signature is not required (and not checked).
        #expect(try CheckInput.twin(line: good, file: "t", map: map, twinKey: nil).signature == .notRequired)
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
