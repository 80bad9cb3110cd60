import Foundation
import Testing
import TibetTwin
import TestSupport

/// `tibet-twin keygen` and `tibet-twin sign` as a twin integrator uses them, with OpenSSL as an
/// outside opinion on the signatures.
@Suite("keygen and sign")
struct TwinCommandTests {
    static let line = #"{"device":"crane-02","ts":"2026-11-26T14:32:00.500Z","seq":1042,"status":"operational","values":{"position_x":12.5,"load_kg":2500},"predicted":false,"model_version":"4.2"}"#

    static func tempDir() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-e2e-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func parser(pubPath: String) throws -> TwinLineParser {
        let map = DeviceMap(
            device: "crane-02", profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
            limits: Limits(maxDriftMs: 200, rearmMs: 100),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
            registers: [RegisterSpec(name: "position_x", address: 100, type: .float32, tolerance: 0.5),
                        RegisterSpec(name: "load_kg", address: 102, type: .uint32, tolerance: 100)],
            twinKey: pubPath, intents: [IntentSpec(name: "move_left", coil: 0)])
        let key = try TwinPublicKey(text: String(contentsOfFile: pubPath, encoding: .utf8))
        return try TwinLineParser(maps: [map], keys: ["crane-02": key])
    }

    /// Received at the line's own time, so skew and staleness do not enter.
    static let received = ClockReading(monotonicNs: 1, wallNs: RFC3339.parse("2026-11-26T14:32:00.500Z")!)

    @Test func keygenWritesAPairAndNeverOverwrites() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/crane-02"
        let (code, stdout, _) = try runTibetTwin(["keygen", out])
        #expect(code == 0)
        #expect(stdout.contains(out))
        let priv = try FileManager.default.attributesOfItem(atPath: out)
        let pub = try FileManager.default.attributesOfItem(atPath: out + ".pub")
        #expect((priv[.posixPermissions] as? Int) == 0o600)
        #expect((pub[.posixPermissions] as? Int) == 0o644)
        let privText = try String(contentsOfFile: out, encoding: .utf8)
        let pubText = try String(contentsOfFile: out + ".pub", encoding: .utf8)
        let privateKey = try KeyText.privateKey(from: privText)
        #expect(KeyText.text(of: privateKey.publicKey) == pubText)

        let (again, _, err) = try runTibetTwin(["keygen", out])
        #expect(again == 1)
        #expect(err.contains("exists"))
        #expect(try String(contentsOfFile: out, encoding: .utf8) == privText, "the old key is untouched")

        // Only the .pub being there also refuses, and writes no private key.
        try FileManager.default.removeItem(atPath: out)
        let (third, _, _) = try runTibetTwin(["keygen", out])
        #expect(third == 1)
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    @Test func signedLinesVerifyAndTamperingIsCaught() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = dir + "/twin"
        #expect(try runTibetTwin(["keygen", key]).0 == 0)
        let second = Self.line.replacingOccurrences(of: "1042", with: "1043")
        let (code, out, err) = try runTibetTwin(["sign", "--key", key], stdin: Self.line + "\nnot json\n" + second + "\r\n")
        #expect(code == 1, "one line could not be signed")
        #expect(err.contains("line 2"))
        let lines = out.split(separator: "\n").map(String.init)
        try #require(lines.count == 2)
        #expect(lines[0].hasPrefix(String(Self.line.dropLast()) + #","sig":""#))
        let parser = try Self.parser(pubPath: key + ".pub")
        for l in lines {
            guard case .accepted(let s, _) = parser.parse(Array(l.utf8), received: Self.received) else {
                Issue.record("signed line not accepted: \(parser.parse(Array(l.utf8), received: Self.received))"); continue
            }
            #expect(s.signature == .valid)
        }
        let tampered = lines[0].replacingOccurrences(of: "2500", with: "2501")
        guard case .identityFailure(_, let drop) = parser.parse(Array(tampered.utf8), received: Self.received) else {
            Issue.record("tampered line not refused"); return
        }
        #expect(drop.reason == .badSignature)
        // A key that cannot be read is a usage error.
        #expect(try runTibetTwin(["sign", "--key", dir + "/missing"], stdin: Self.line + "\n").0 == 2)
    }

    /// OpenSSL verifies what `sign` made, and makes a signature the parser accepts.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func opensslAgrees() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = dir + "/twin"
        #expect(try runTibetTwin(["keygen", key]).0 == 0)
        let (code, out, _) = try runTibetTwin(["sign", "--key", key], stdin: Self.line + "\n")
        #expect(code == 0)
        let signed = out.trimmingCharacters(in: .newlines)
        let sigB64 = String(signed[signed.range(of: #","sig":""#)!.upperBound...].dropLast(2))
        let seed = Base64.decode(try String(contentsOfFile: key, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        let pub = Base64.decode(try String(contentsOfFile: key + ".pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        // Raw Ed25519 keys in the DER wrappers OpenSSL reads (RFC 8410).
        try Data(Hex.decode("302a300506032b6570032100")! + pub).write(to: URL(fileURLWithPath: dir + "/pub.der"))
        try Data(Hex.decode("302e020100300506032b657004220420")! + seed).write(to: URL(fileURLWithPath: dir + "/priv.der"))
        try Data(Self.line.utf8).write(to: URL(fileURLWithPath: dir + "/msg"))
        try Data(Base64.decode(sigB64)!).write(to: URL(fileURLWithPath: dir + "/sig"))
        let verify = try run("/usr/bin/openssl", ["pkeyutl", "-verify", "-pubin", "-inkey", dir + "/pub.der", "-keyform", "DER",
                                                   "-rawin", "-in", dir + "/msg", "-sigfile", dir + "/sig"])
        #expect(verify == 0, "openssl verifies tibet-twin's signature")

        // The other way: OpenSSL signs, the parser accepts.
        let other = Self.line.replacingOccurrences(of: "1042", with: "1044")
        try Data(other.utf8).write(to: URL(fileURLWithPath: dir + "/msg2"))
        let signRC = try run("/usr/bin/openssl", ["pkeyutl", "-sign", "-inkey", dir + "/priv.der", "-keyform", "DER",
                                                   "-rawin", "-in", dir + "/msg2", "-out", dir + "/sig2"])
        #expect(signRC == 0)
        let sig2 = try Data(contentsOf: URL(fileURLWithPath: dir + "/sig2"))
        let line2 = String(other.dropLast()) + #","sig":"\#(Base64.encode(Array(sig2)))"}"#
        let parser = try Self.parser(pubPath: key + ".pub")
        #expect(parser.parse(Array(line2.utf8), received: Self.received).acceptedSignature == .valid)
    }

    func run(_ tool: String, _ args: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }
}

extension TwinLineOutcome {
    var acceptedSignature: SignatureCheck? {
        if case .accepted(let s, _) = self { return s.signature }
        return nil
    }
}
