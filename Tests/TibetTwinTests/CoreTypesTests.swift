import Testing
@testable import TibetTwin

@Suite("RFC 3339")
struct RFC3339Tests {
    @Test func parsesUTCWithMilliseconds() {
        #expect(RFC3339.parse("2026-11-26T14:32:00.500Z") == 1_795_703_520_500_000_000)
    }

    @Test func parsesOffsets() {
        let utc = RFC3339.parse("2026-11-26T14:32:00Z")
        #expect(RFC3339.parse("2026-11-26T15:32:00+01:00") == utc)
        #expect(RFC3339.parse("2026-11-26T09:02:00-05:30") == utc)
    }

    @Test(arguments: ["", "2026-11-26T14:32:00", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
                      "2026-11-26T14:32:00.Z", "2026-11-26T24:00:00Z", "2026-11-26T14:32:00Zjunk",
                      "2026-11-26T14:32:00+0100"])
    func rejects(_ text: String) {
        #expect(RFC3339.parse(text) == nil)
    }

    @Test func formatRoundTrips() {
        let ns: Int64 = 1_795_703_520_500_000_000
        #expect(RFC3339.format(wallNs: ns) == "2026-11-26T14:32:00.500Z")
        #expect(RFC3339.parse(RFC3339.format(wallNs: ns, fractionDigits: 9)) == ns)
        #expect(RFC3339.format(wallNs: 0, fractionDigits: 0) == "1970-01-01T00:00:00Z")
    }
}

@Suite("JSON")
struct JSONTests {
    @Test func canonicalSortsKeysWithoutWhitespace() throws {
        let v = try JSONParser.parse(#" { "b" : [1, 2.5, true, null], "a" : "x\"y", "é": -0.5 } "#)
        #expect(v.canonical == #"{"a":"x\"y","b":[1,2.5,true,null],"é":-0.5}"#)
    }

    @Test func integersAndDoublesStayApart() throws {
        #expect(try JSONParser.parse("12") == .int(12))
        #expect(try JSONParser.parse("12.0") == .double(12))
        #expect(try JSONParser.parse("12.0").canonical == "12.0")
    }

    @Test(arguments: ["{", "[1,]", "{\"a\":1,\"a\":2}", "01", "\"\\x\"", "tru", "1 2", "\"\u{01}\""])
    func rejectsInvalid(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
    }

    @Test func unicodeEscapes() throws {
        #expect(try JSONParser.parse(#""\u00e9\ud83d\ude00""#) == .string("é😀"))
    }
}

@Suite("TIBET token")
struct TokenTests {
    @Test func contentHashIsPinned() {
        var chain = TokenChain(idPrefix: "t")
        let tok = chain.append(
            action: .started, wallNs: 1_795_703_520_500_000_000, actor: "jis:guard-01",
            erin: ["device": "crane-01", "allowed": false], eraan: ["jis": "jis:crane-01"],
            eromheen: ["node": "guard-01"], erachter: ["intent": "move_left", "safety_critical": true])
        // Pinned: changing the canonical form breaks every chain already written.
        #expect(tok.contentHash == tok.computeContentHash())
        #expect(JSONValue.object(tok.hashedFields).canonical ==
            #"{"action":"started","actor":"jis:guard-01","eraan":{"jis":"jis:crane-01"},"erachter":{"intent":"move_left","safety_critical":true},"erin":{"allowed":false,"device":"crane-01"},"eromheen":{"node":"guard-01"},"parent_id":null,"prev_hash":null,"timestamp":"2026-11-26T14:32:00.500000Z","token_id":"t-1"}"#)
        let second = chain.append(action: .stopped, wallNs: 1_795_703_521_000_000_000, actor: "jis:guard-01",
                                  erin: [:], eraan: [:], eromheen: [:], erachter: [:])
        #expect(second.parentId == "t-1")
        #expect(second.prevHash == tok.contentHash)
    }

    @Test func parsesBackIdentically() throws {
        var chain = TokenChain(idPrefix: "x")
        let tok = chain.append(action: .checkpoint, wallNs: 0, actor: "jis:n", erin: ["v": 1.25],
                               eraan: [:], eromheen: [:], erachter: [:])
        let back = try TibetToken(json: try JSONParser.parse(tok.line))
        #expect(back == tok)
        #expect(back.computeContentHash() == tok.contentHash)
    }
}

@Suite("Register decoding")
struct DecodingTests {
    @Test(arguments: ValueType.allCases.filter { $0 != .string && $0 != .bool }, WordOrder.allCases)
    func encodeDecodeRoundTrip(type: ValueType, order: WordOrder) throws {
        let spec = RegisterSpec(name: "v", address: 0, type: type, order: order)
        let sample: Value
        switch type {
        case .int16, .int32, .int64: sample = .int(-1234)
        case .int8: sample = .int(-12)
        case .uint8: sample = .uint(200)
        case .float32, .float64: sample = .double(-12.5)
        default: sample = .uint(4711)
        }
        let words = RegisterDecoder.encode(sample, as: spec)
        #expect(words.count == spec.width)
        #expect(try RegisterDecoder.decode(spec, words: words) == sample)
    }

    @Test func wordOrdersOf32Bit() throws {
        // 0x11223344 as the four orders of docs/register-maps.md.
        let cases: [(WordOrder, [UInt16])] = [
            (.ABCD, [0x1122, 0x3344]), (.CDAB, [0x3344, 0x1122]),
            (.BADC, [0x2211, 0x4433]), (.DCBA, [0x4433, 0x2211]),
        ]
        for (order, words) in cases {
            let spec = RegisterSpec(name: "v", address: 0, type: .uint32, order: order)
            #expect(try RegisterDecoder.decode(spec, words: words) == .uint(0x1122_3344), "\(order)")
        }
    }

    @Test func scaleAndOffset() throws {
        let spec = RegisterSpec(name: "wind", address: 4, type: .int16, scale: 0.1, offset: 1)
        #expect(try RegisterDecoder.decode(spec, words: [UInt16(bitPattern: -125)]) == .double(-11.5))
    }

    @Test func bitOfRegister() throws {
        let spec = RegisterSpec(name: "locked", address: 7, bit: 3)
        #expect(try RegisterDecoder.decode(spec, words: [0b1000]) == .bool(true))
        #expect(try RegisterDecoder.decode(spec, words: [0b0111]) == .bool(false))
    }

    @Test func shortInputThrows() {
        let spec = RegisterSpec(name: "v", address: 0, type: .float64)
        #expect(throws: DecodeError(register: "v", kind: .shortInput(needed: 4, got: 2))) {
            try RegisterDecoder.decode(spec, words: [1, 2])
        }
    }

    @Test func stringTrimsPadding() throws {
        let spec = RegisterSpec(name: "fw", address: 0, type: .string, length: 4)
        #expect(try RegisterDecoder.decode(spec, words: [0x7632, 0x2E31, 0x0000, 0x0000]) == .string("v2.1"))
    }
}

@Suite("Keys and base64")
struct KeyTextTests {
    @Test(arguments: ["", "f", "fo", "foo", "foob", "fooba", "foobar"])
    func base64RoundTrips(_ s: String) {
        let enc = Base64.encode(Array(s.utf8))
        #expect(Base64.decode(enc) == Array(s.utf8))
    }

    @Test func base64KnownVectors() {
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64.encode(Array("fo".utf8)) == "Zm8=")
        #expect(Base64.decode("Zm8") == nil)
        #expect(Base64.decode("Z=m8") == nil)
    }

    @Test func keyTextRoundTrips() throws {
        let sk = try KeyText.privateKey(from: String(repeating: "A", count: 43) + "=")
        let pk = try KeyText.publicKey(from: KeyText.text(of: sk.publicKey))
        #expect(pk.rawRepresentation == sk.publicKey.rawRepresentation)
        #expect(throws: KeyText.Invalid.self) { try KeyText.publicKey(from: "Zm9v") }
    }
}
