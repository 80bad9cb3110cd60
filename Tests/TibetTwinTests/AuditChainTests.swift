import Crypto
import Foundation
import Testing
@testable import TibetTwin

/// A signed chain in memory, as the audit store writes it: a `started` token announcing the
/// key, then `count - 1` decision tokens, `perSegment` lines a segment.
struct TestChain {
    var segments: [(file: String, number: Int, bytes: [UInt8])]
    var tokens: [TibetToken]

    static func make(key: Curve25519.Signing.PrivateKey, count: Int, perSegment: Int = 1000,
                     node: String = "guard-01", startNs: Int64 = 1_795_703_520_000_000_000) throws -> TestChain {
        var chain = TokenChain(idPrefix: node)
        var tokens: [TibetToken] = []
        for i in 0..<count {
            var t: TibetToken
            if i == 0 {
                t = chain.append(action: .started, wallNs: startNs, actor: "jis:\(node)",
                                 erin: ["public_key": .string(Base64.encode(Array(key.publicKey.rawRepresentation))),
                                        "key_id": .string(KeyText.fingerprint(of: key.publicKey))],
                                 eraan: ["jis": .string("jis:\(node)")], eromheen: ["node": .string(node)],
                                 erachter: ["why": "start"])
            } else {
                t = chain.append(action: .permitChanged, wallNs: startNs + Int64(i) * 1_000_000, actor: "jis:\(node)",
                                 erin: ["device": "crane-01", "intent": "move_left", "allowed": .bool(i % 2 == 0),
                                        "reason": .string(i % 2 == 0 ? "Sync OK: drift=12ms" : "BLOCKED: drift 250ms > 200ms"),
                                        "delta": ["drift_ms": .double(Double(i) * 0.5)]],
                                 eraan: ["jis": "jis:crane-01", "twin_seq": .int(Int64(i))],
                                 eromheen: ["node": .string(node)], erachter: ["intent": "move_left", "safety_critical": true])
            }
            try t.sign(with: key)
            tokens.append(t)
        }
        var segments: [(String, Int, [UInt8])] = []
        var start = 0
        while start < tokens.count {
            let slice = tokens[start..<min(start + perSegment, tokens.count)]
            let n = segments.count + 1
            segments.append((AuditSegment.name(n), n, Array(slice.map { $0.line + "\n" }.joined().utf8)))
            start += perSegment
        }
        return TestChain(segments: segments, tokens: tokens)
    }

    /// The lines of segment `s` (0-based), without newlines.
    func lines(_ s: Int) -> [String] {
        String(decoding: segments[s].bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .dropLast().map(String.init)
    }

    mutating func setLines(_ s: Int, _ lines: [String]) {
        segments[s].bytes = Array(lines.map { $0 + "\n" }.joined().utf8)
    }

    func verify(pinned: [Curve25519.Signing.PublicKey] = []) -> Result<ChainVerifier.Summary, ChainVerifier.Failure> {
        ChainVerifier.verify(segments: segments, pinnedKeys: pinned)
    }
}

func failure(_ r: Result<ChainVerifier.Summary, ChainVerifier.Failure>) -> ChainVerifier.Failure? {
    if case .failure(let f) = r { return f }
    return nil
}

@Suite("Audit chain verification")
struct ChainVerifierTests {
    let key = Curve25519.Signing.PrivateKey()
    let other = Curve25519.Signing.PrivateKey()

    @Test func intactChainVerifies() throws {
        let c = try TestChain.make(key: key, count: 25, perSegment: 10)
        let s = try c.verify().get()
        #expect(s.tokens == 25)
        #expect(s.segments == 3)
        #expect(s.firstTime == c.tokens.first!.timestamp)
        #expect(s.lastTime == c.tokens.last!.timestamp)
        #expect(s.headId == c.tokens.last!.tokenId)
        #expect(s.keys.map(\.fingerprint) == [KeyText.fingerprint(of: key.publicKey)])
        #expect(s.text.hasPrefix("ok: 25 tokens in 3 segments"))
        #expect(try c.verify(pinned: [key.publicKey]).get().pinned)
    }

    @Test func changedValueFailsAtThatLine() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        var lines = c.lines(1)
        #expect(lines[4].contains(#""twin_seq":14"#))
        lines[4] = lines[4].replacingOccurrences(of: #""twin_seq":14"#, with: #""twin_seq":15"#)
        c.setLines(1, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-2.jsonl" && f.line == 5 && f.kind == .hash, "\(f)")
    }

    @Test func deletedLineFailsWhereTheGapIs() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        var lines = c.lines(0)
        lines.remove(at: 6)
        c.setLines(0, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-1.jsonl" && f.line == 7 && f.kind == .link, "\(f)")
    }

    @Test func insertedCopyFailsAtTheInsertedLine() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        var lines = c.lines(2)
        lines.insert(c.lines(0)[3], at: 2)
        c.setLines(2, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-3.jsonl" && f.line == 3 && f.kind == .link, "\(f)")
    }

    @Test func insertedForgeryWithRightLinksFailsOnItsSignature() throws {
        var c = try TestChain.make(key: key, count: 12, perSegment: 100)
        // A forger who can compute hashes but has no key: a token linked correctly after line 5.
        let prev = c.tokens[4]
        var forged = TibetToken(tokenId: "guard-01-x", action: .permitChanged, timestamp: prev.timestamp, actor: prev.actor,
                                erin: ["device": "crane-01", "allowed": true], eraan: [:], eromheen: [:], erachter: [:],
                                parentId: prev.tokenId, prevHash: prev.contentHash)
        try forged.sign(with: other)
        var lines = c.lines(0)
        lines.insert(forged.line, at: 5)
        c.setLines(0, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.line == 6 && f.kind == .signature, "\(f)")
    }

    @Test func swappedLinesFailAtTheFirstOfThem() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        var lines = c.lines(1)
        lines.swapAt(3, 4)
        c.setLines(1, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-2.jsonl" && f.line == 4 && f.kind == .link, "\(f)")
    }

    @Test func truncatedSegmentFailsAtTheNextSegmentsFirstLine() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        c.setLines(1, Array(c.lines(1).prefix(7)))
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-3.jsonl" && f.line == 1 && f.kind == .link, "\(f)")
    }

    @Test func truncatedMidLineIsTorn() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        c.segments[2].bytes.removeLast(40)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-3.jsonl" && f.line == 5 && f.kind == .torn, "\(f)")
        // In a segment before the last it is not a torn tail the store repairs (it never
        // writes there again): records were lost or the file changed.
        var d = try TestChain.make(key: key, count: 25, perSegment: 10)
        d.segments[0].bytes.removeLast(1)
        let g = try #require(failure(d.verify()))
        #expect(g.file == "tibet-1.jsonl" && g.line == 10 && g.kind == .link, "\(g)")
        #expect(g.detail.contains("not the last segment") && g.detail.contains("tampered") && !g.detail.contains("moves it aside"), "\(g)")
    }

    @Test func removedSegmentIsNamed() throws {
        var c = try TestChain.make(key: key, count: 35, perSegment: 10)
        c.segments.remove(at: 1)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-3.jsonl" && f.line == 1 && f.kind == .segment, "\(f)")
        #expect(f.detail.contains("tibet-2.jsonl missing"))
        var d = try TestChain.make(key: key, count: 35, perSegment: 10)
        d.segments.removeFirst()
        let g = try #require(failure(d.verify()))
        #expect(g.file == "tibet-2.jsonl" && g.kind == .segment, "\(g)")
    }

    @Test func reSignedWithAnotherKeyFailsAtThatLine() throws {
        var c = try TestChain.make(key: key, count: 25, perSegment: 10)
        // Changed, re-hashed and re-signed by someone else's key: the hash is right, the
        // signature is not the chain's.
        var t = c.tokens[13]
        t.erin = ["device": "crane-01", "allowed": true, "reason": "Sync OK: forged"]
        t = TibetToken(tokenId: t.tokenId, action: t.action, timestamp: t.timestamp, actor: t.actor, erin: t.erin,
                       eraan: t.eraan, eromheen: t.eromheen, erachter: t.erachter, parentId: t.parentId, prevHash: t.prevHash)
        try t.sign(with: other)
        var lines = c.lines(1)
        lines[3] = t.line
        c.setLines(1, lines)
        let f = try #require(failure(c.verify()))
        #expect(f.file == "tibet-2.jsonl" && f.line == 4 && f.kind == .signature, "\(f)")
        // Only the signature swapped for another key's, content untouched: same line.
        var d = try TestChain.make(key: key, count: 25, perSegment: 10)
        var u = d.tokens[13]
        try u.sign(with: other)
        var dl = d.lines(1)
        dl[3] = u.line
        d.setLines(1, dl)
        let g = try #require(failure(d.verify()))
        #expect(g.line == 4 && g.kind == .signature, "\(g)")
    }

    @Test func pinnedKeyRejectsAChainOfAnotherKey() throws {
        let c = try TestChain.make(key: key, count: 5)
        let f = try #require(failure(c.verify(pinned: [other.publicKey])))
        #expect(f.line == 1 && f.kind == .key, "\(f)")
        #expect(throws: Never.self) { try c.verify(pinned: [other.publicKey, key.publicKey]).get() }
    }

    @Test func tokensBeforeAnyStartedTokenHaveNoKey() throws {
        var c = try TestChain.make(key: key, count: 5)
        // Re-chain without the started token.
        var chain = TokenChain(idPrefix: "g")
        var t = chain.append(action: .check, wallNs: 0, actor: "jis:g", erin: [:], eraan: [:], eromheen: [:], erachter: [:])
        try t.sign(with: key)
        c.segments = [("tibet-1.jsonl", 1, Array((t.line + "\n").utf8))]
        let f = try #require(failure(c.verify()))
        #expect(f.line == 1 && f.kind == .key, "\(f)")
    }

    /// Rotation: a second `started` token announces a new key. Unpinned, both keys are listed
    /// for the inspector; pinned to the first only, the rotation line fails.
    @Test func keyRotationIsListedAndCheckedAgainstPins() throws {
        var c = try TestChain.make(key: key, count: 6)
        var chain = TokenChain(idPrefix: "guard-01", lastId: c.tokens.last!.tokenId, lastHash: c.tokens.last!.contentHash,
                               count: UInt64(c.tokens.count))
        var started = chain.append(action: .started, wallNs: 1_795_703_530_000_000_000, actor: "jis:guard-01",
                                   erin: ["public_key": .string(Base64.encode(Array(other.publicKey.rawRepresentation)))],
                                   eraan: [:], eromheen: [:], erachter: [:])
        try started.sign(with: other)
        var next = chain.append(action: .check, wallNs: 1_795_703_531_000_000_000, actor: "jis:guard-01",
                                erin: [:], eraan: [:], eromheen: [:], erachter: [:])
        try next.sign(with: other)
        c.setLines(0, c.lines(0) + [started.line, next.line])
        let s = try c.verify().get()
        #expect(s.keys.count == 2)
        #expect(s.keys[1].line == 7)
        #expect(s.starts == 2)
        #expect(s.text.contains("not pinned"))
        let f = try #require(failure(c.verify(pinned: [key.publicKey])))
        #expect(f.line == 7 && f.kind == .key, "\(f)")
        #expect(try c.verify(pinned: [key.publicKey, other.publicKey]).get().tokens == 8)
        // A token after the rotation signed by the old key fails.
        var stale = chain.append(action: .check, wallNs: 1_795_703_532_000_000_000, actor: "jis:guard-01",
                                 erin: [:], eraan: [:], eromheen: [:], erachter: [:])
        try stale.sign(with: key)
        c.setLines(0, c.lines(0) + [stale.line])
        let g = try #require(failure(c.verify()))
        #expect(g.line == 9 && g.kind == .signature, "\(g)")
    }

    @Test func garbageAndEmptyLinesAreParseFailures() throws {
        var c = try TestChain.make(key: key, count: 5)
        var lines = c.lines(0)
        lines[2] = "{not json"
        c.setLines(0, lines)
        #expect(failure(c.verify())?.kind == .parse)
        lines[2] = ""
        c.setLines(0, lines)
        #expect(failure(c.verify())?.line == 3)
        lines[2] = #"{"a":1}"#
        c.setLines(0, lines)
        #expect(failure(c.verify())?.detail.contains("not a token") == true)
    }

    @Test func resumedVerifierChecksATailAfterAKnownToken() throws {
        let c = try TestChain.make(key: key, count: 20, perSegment: 10)
        var v = ChainVerifier(resumingAfter: c.tokens[9].tokenId, previousHash: c.tokens[9].contentHash,
                              signingKey: key.publicKey)
        try v.beginSegment(file: "tibet-2.jsonl", number: 2)
        for (i, l) in c.lines(1).enumerated() { try v.verify(line: Array(l.utf8), number: i + 1) }
        #expect(v.summary.tokens == 10)
        var w = ChainVerifier(resumingAfter: c.tokens[8].tokenId, previousHash: c.tokens[8].contentHash,
                              signingKey: key.publicKey)
        try w.beginSegment(file: "tibet-2.jsonl", number: 2)
        #expect(throws: ChainVerifier.Failure.self) { try w.verify(line: Array(c.lines(1)[0].utf8), number: 1) }
    }
}

@Suite("Token signing and canonical form")
struct TokenCanonicalTests {
    /// Pinned: a token with every kind of value. Changing the canonical form or the hash breaks
    /// every chain already written, so this must never change.
    @Test func canonicalFormAndHashArePinned() {
        let t = TibetToken(
            tokenId: "guard-01-42", action: .permitChanged, timestamp: "2026-11-26T14:32:01.021000Z",
            actor: "jis:guard-01",
            erin: ["device": "crane-01", "intent": "move_left", "allowed": false, "reason_code": 6,
                   "reason": "BLOCKED: status mismatch: physical=fault, twin=operational",
                   "delta": ["drift_ms": 503.25, "physical_age_ms": 1e-05, "big": 1e16, "integral": 200.0, "neg": -0.5],
                   "failing": [["code": 6, "check": "status"]], "note": "tab\there \"quoted\" \\ é\u{08}\u{0C}\u{01}"],
            eraan: ["jis": "jis:crane-01", "twin_seq": 1042, "map_sha256": nil],
            eromheen: ["node": "guard-01", "monotonic_ns": 123_456_789],
            erachter: ["intent": "move_left", "safety_critical": true],
            parentId: "guard-01-41", prevHash: String(repeating: "ab", count: 32))
        #expect(JSONValue.object(t.hashedFields).canonical ==
            #"{"action":"permit_changed","actor":"jis:guard-01","eraan":{"jis":"jis:crane-01","map_sha256":null,"twin_seq":1042},"erachter":{"intent":"move_left","safety_critical":true},"erin":{"allowed":false,"delta":{"big":1e+16,"drift_ms":503.25,"integral":200.0,"neg":-0.5,"physical_age_ms":1e-05},"device":"crane-01","failing":[{"check":"status","code":6}],"intent":"move_left","note":"tab\there \"quoted\" \\ é\b\f\u0001","reason":"BLOCKED: status mismatch: physical=fault, twin=operational","reason_code":6},"eromheen":{"monotonic_ns":123456789,"node":"guard-01"},"parent_id":"guard-01-41","prev_hash":"abababababababababababababababababababababababababababababababab","timestamp":"2026-11-26T14:32:01.021000Z","token_id":"guard-01-42"}"#)
        // SHA-256 of the line above, as Python's hashlib computes it.
        #expect(t.contentHash == "655914f75f1d76ef7e99d19750a999893dbe2456a9a97c9b156e656688b7f558")
        // The same token always hashes the same, and a parsed line hashes as written.
        #expect(t.computeContentHash() == t.contentHash)
        let back = try? TibetToken(json: JSONParser.parse(t.line))
        #expect(back?.computeContentHash() == t.contentHash)
        #expect(back?.line == t.line)
        // The direct serialisation is the dictionary's canonical form.
        #expect(t.hashedBytes == JSONValue.object(t.hashedFields).canonicalBytes)
        var signed = t
        signed.signature = "c2lnbmF0dXJl"
        #expect(signed.line == signed.json.canonical)
        #expect(t.line == t.json.canonical)
    }

    /// Doubles are laid out as Python's `repr(float)` (expected strings are Python 3's output).
    @Test(arguments: [
        (1e16, "1e+16"), (1e15, "1000000000000000.0"), (0.0001, "0.0001"), (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"), (100.0, "100.0"), (-0.0, "-0.0"), (1e22, "1e+22"),
        (123456789012345680.0, "1.2345678901234568e+17"), (0.1 + 0.2, "0.30000000000000004"), (Double.leastNonzeroMagnitude, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"), (2.5e-5, "2.5e-05"), (1234.5678, "1234.5678"),
        (9999999999999998.0, "9999999999999998.0"), (0.0, "0.0"), (-12.5, "-12.5"), (1e-4, "0.0001"),
    ] as [(Double, String)])
    func doublesAsPythonRepr(_ d: Double, _ expected: String) throws {
        #expect(JSONValue.format(d) == expected)
        #expect(try JSONParser.parse(expected) == .double(d))
    }

    @Test func signatureCoversTheContentHash() throws {
        let key = Curve25519.Signing.PrivateKey()
        var chain = TokenChain(idPrefix: "t")
        var t = chain.append(action: .check, wallNs: 0, actor: "jis:n", erin: ["v": 1], eraan: [:], eromheen: [:], erachter: [:])
        #expect(!t.hasValidSignature(by: key.publicKey))
        try t.sign(with: key)
        #expect(t.hasValidSignature(by: key.publicKey))
        #expect(!t.hasValidSignature(by: Curve25519.Signing.PrivateKey().publicKey))
        #expect(Base64.decode(t.signature!)?.count == 64)
        var u = t
        u.contentHash = String(repeating: "0", count: 64)
        #expect(!u.hasValidSignature(by: key.publicKey))
        #expect(KeyText.fingerprint(of: key.publicKey).hasPrefix("ed25519:"))
        #expect(KeyText.fingerprint(of: key.publicKey).count == 24)
    }

    /// Second opinion: Python's json + hashlib recompute the canonical form and the content
    /// hash of tokens with many random doubles, strings and nesting.
    @Test(.enabled(if: pythonExecutable() != nil))
    func pythonRecomputesTheSameHashes() throws {
        var rng = SystemRandomNumberGenerator()
        var lines: [String] = []
        var hashes: [String] = []
        var chain = TokenChain(idPrefix: "py")
        for i in 0..<200 {
            var values: [String: JSONValue] = [:]
            for k in 0..<8 {
                let mant = Double.random(in: -10...10, using: &rng)
                let exp = Double(Int.random(in: -30...30, using: &rng))
                values["v\(k)"] = .double(mant * pow(10, exp))
            }
            values["i"] = .int(Int64.random(in: Int64.min...Int64.max, using: &rng))
            values["s"] = .string(String((0..<12).map { _ in Character(Unicode.Scalar(UInt8.random(in: 1...126, using: &rng))) }) + "é☃😀")
            let t = chain.append(action: .check, wallNs: 1_795_703_520_000_000_000 + Int64(i), actor: "jis:py",
                                 erin: .object(values), eraan: ["n": .array([.null, true, false, 1.5])], eromheen: [:],
                                 erachter: [:])
            lines.append(t.line)
            hashes.append(t.contentHash)
        }
        let script = """
            import sys, json, hashlib
            for line in sys.stdin:
                tok = json.loads(line)
                body = {k: v for k, v in tok.items() if k not in ("content_hash", "signature")}
                canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                full = json.dumps(tok, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                print(hashlib.sha256(canon.encode("utf-8")).hexdigest(), full == line.rstrip("\\n"))
            """
        let out = try runPython(script, stdin: lines.joined(separator: "\n") + "\n")
        let rows = out.split(separator: "\n")
        #expect(rows.count == lines.count)
        for (i, row) in rows.enumerated() where i < hashes.count {
            #expect(row == "\(hashes[i]) True", "line \(i): \(lines[i])")
        }
    }
}

@Suite("Audit text")
struct AuditTextTests {
    @Test func decisionLineReadsLikeTheOriginal() {
        let t = TibetToken(tokenId: "g-7", action: .permitChanged, timestamp: "2026-11-26T14:32:01.021456Z", actor: "jis:g",
                           erin: ["device": "crane-01", "intent": "move_left", "allowed": false,
                                  "reason": "BLOCKED: status mismatch: physical=fault, twin=operational"],
                           eraan: ["jis": "jis:crane-01"], eromheen: [:], erachter: ["intent": "move_left"],
                           parentId: nil, prevHash: nil)
        #expect(AuditText.line(t) ==
            "2026-11-26 14:32:01.021Z crane-01 move_left INHIBIT BLOCKED: status mismatch: physical=fault, twin=operational")
        #expect(AuditText.Filter(device: "crane-01").matches(t))
        #expect(!AuditText.Filter(device: "crane-02").matches(t))
        #expect(AuditText.Filter(sinceNs: RFC3339.parse("2026-11-26T14:32:01Z")).matches(t))
        #expect(!AuditText.Filter(sinceNs: RFC3339.parse("2026-11-26T14:32:02Z")).matches(t))
        #expect(AuditText.Filter(action: "permit_changed").matches(t))
        #expect(!AuditText.Filter(action: "started").matches(t))
    }

    @Test func otherTokensListTheirErin() {
        let t = TibetToken(tokenId: "g-1", action: .writeRejected, timestamp: "2026-11-26T14:33:00Z", actor: "jis:g",
                           erin: ["client": "10.0.0.5:50123", "function": 5, "address": 0],
                           eraan: [:], eromheen: [:], erachter: [:], parentId: nil, prevHash: nil)
        #expect(AuditText.line(t) == "2026-11-26 14:33:00.000Z write_rejected address=0 client=10.0.0.5:50123 function=5")
    }
}

/// The Python for second opinions: `$TIBET_TWIN_PYTHON`, the package's `.venv`, or python3.
func pythonExecutable() -> String? {
    var candidates: [String] = []
    if let p = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"] { candidates.append(p) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    candidates.append(root.appendingPathComponent(".venv/bin/python").path)
    candidates += ["/usr/bin/python3", "/usr/local/bin/python3"]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
}

func runPython(_ script: String, stdin: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: pythonExecutable()!)
    p.arguments = ["-c", script]
    let inp = Pipe(), out = Pipe()
    p.standardInput = inp
    p.standardOutput = out
    try p.run()
    // Write from another thread so a full pipe cannot deadlock against our read.
    let data = Data(stdin.utf8)
    let writer = Thread {
        inp.fileHandleForWriting.write(data)
        try? inp.fileHandleForWriting.close()
    }
    writer.start()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: o, as: UTF8.self)
}
