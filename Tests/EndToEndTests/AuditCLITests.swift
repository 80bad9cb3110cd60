#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing
import TibetTwin
import TestSupport

/// A temporary directory with an audit signing key (`guard.key`, 0600; `guard.key.pub`).
final class AuditCLIFixture: @unchecked Sendable {
    let root: String
    var dir: String { root + "/audit" }
    var key: String { root + "/guard.key" }
    var pub: String { root + "/guard.key.pub" }

    init() throws {
        var template = Array("/tmp/tibet-audit-e2e-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        root = String(cString: p)
        try Self.writeKeyPair(to: key)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    /// A fresh Ed25519 key pair in `KeyText` form: private (0600) and `.pub`.
    static func writeKeyPair(to path: String) throws {
        var rng = SystemRandomNumberGenerator()
        let seed = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let text = Base64.encode(seed) + "\n"
        let sk = try KeyText.privateKey(from: text)
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]),
              FileManager.default.createFile(atPath: path + ".pub", contents: Data(KeyText.text(of: sk.publicKey).utf8))
        else { throw POSIXError(.EIO) }
    }

    func segments() throws -> [(file: String, number: Int, bytes: [UInt8])] {
        try FileManager.default.contentsOfDirectory(atPath: dir).compactMap { name in
            AuditSegment.number(of: name).map { (name, $0, Array(try! Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)))) }
        }.sorted { $0.number < $1.number }
    }

    /// Every token id in the chain (lines that parse).
    func tokenIds() throws -> Set<String> {
        var ids = Set<String>()
        for s in try segments() {
            for line in ChainVerifier.split(s.bytes).lines {
                if let t = try? TibetToken(json: JSONParser.parse(String(decoding: line, as: UTF8.self))) { ids.insert(t.tokenId) }
            }
        }
        return ids
    }
}

/// A child process the test owns: killed when the test is done, also on failure.
fileprivate final class AuditLoadChild: @unchecked Sendable {
    let process = Process()
    private let output = OutputBuffer()
    private let stdinPipe = Pipe()

    /// Starts `tibet-twin args`; stdout collected through a pipe by a reader thread.
    init(_ args: [String]) throws {
        process.executableURL = binaryURL()
        process.arguments = args
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = stdinPipe
        try process.run()
        let handle = out.fileHandleForReading
        let reader = Thread { [output] in
            while true {
                let d = handle.availableData
                if d.isEmpty { break }
                output.bytes.withLock { $0 += Array(d) }
            }
        }
        reader.start()
    }

    deinit { kill() }

    var stdout: String { output.bytes.withLock { String(decoding: $0, as: UTF8.self) } }

    /// Whole lines printed so far.
    var lines: [String] {
        let s = stdout
        guard let lastNL = s.lastIndex(of: "\n") else { return [] }
        return s[..<lastNL].split(separator: "\n").map(String.init)
    }

    func send(_ line: String) { stdinPipe.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    func kill() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// Waits for the exit, up to `seconds` (then kills); returns the status.
    func wait(seconds: Double) -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(5000) }
        kill()
        return process.terminationStatus
    }

    func waitFor(seconds: Double = 20, _ condition: ([String]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition(lines) { return true }
            if !process.isRunning { return condition(lines) }
            usleep(2000)
        }
        return condition(lines)
    }
}

final class OutputBuffer: Sendable {
    let bytes = Mutex<[UInt8]>([])
}

func tornFileCount(_ dir: String) throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".torn") }.count
}

func acked(_ lines: [String]) -> [String] {
    lines.filter { $0.hasPrefix("acked ") }.map { String($0.dropFirst(6)) }
}

@Suite("audit CLI and crash safety", .serialized)
struct AuditCLITests {
    @Test func verifyAndShowAWrittenChain() throws {
        let fx = try AuditCLIFixture()
        let (code, out, err) = try runTibetTwin(["audit", "_load", fx.dir, "--key", fx.key, "--count", "30", "--node", "guard-01"])
        #expect(code == 0, "\(err)")
        #expect(acked(out.split(separator: "\n").map(String.init)).count == 30)
        let (vc, vout, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(vc == 0)
        #expect(vout.hasPrefix("ok: 32 tokens in 1 segment, "), "\(vout)")
        #expect(vout.split(separator: "\n").count == 1)
        let (pc, pout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", fx.pub])
        #expect(pc == 0)
        #expect(pout.contains("(pinned)"))
        // Pinned to another key: fails at the first line.
        try AuditCLIFixture.writeKeyPair(to: fx.root + "/other.key")
        let (oc, oout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", fx.root + "/other.key.pub"])
        #expect(oc == 1)
        #expect(oout.hasPrefix(fx.dir + "/tibet-1.jsonl:1: key: "), "\(oout)")

        let (sc, sout, _) = try runTibetTwin(["audit", "show", fx.dir])
        #expect(sc == 0)
        let shown = sout.split(separator: "\n")
        #expect(shown.count == 32)
        #expect(shown.first?.contains(" started ") == true)
        #expect(shown.contains { $0.contains(" check load-0 move seq=") }, "\(shown.prefix(3))")
        let (_, started, _) = try runTibetTwin(["audit", "show", fx.dir, "--action", "started", "--json"])
        let startedLines = started.split(separator: "\n")
        #expect(startedLines.count == 1)
        let tok = try TibetToken(json: JSONParser.parse(String(startedLines[0])))
        #expect(tok.action == .started)
        let (_, dev, _) = try runTibetTwin(["audit", "show", fx.dir, "--device", "load-1"])
        #expect(!dev.isEmpty && dev.split(separator: "\n").allSatisfy { $0.contains("load-1") })
        let (_, future, _) = try runTibetTwin(["audit", "show", fx.dir, "--since", "2999-01-01T00:00:00Z"])
        #expect(future.isEmpty)
        let (bc, _, berr) = try runTibetTwin(["audit", "show", fx.dir, "--since", "yesterday"])
        #expect(bc == 2 && berr.contains("--since"))
        let (nc, _, nerr) = try runTibetTwin(["audit", "verify", fx.root + "/nowhere"])
        #expect(nc == 2 && !nerr.isEmpty)
    }

    /// `audit.retain`: old segments go behind a signed cut, `audit verify` proves the kept part
    /// and says where it starts; a segment deleted by hand without a cut record fails.
    @Test func verifyAcceptsARetentionCutAndRejectsAHandDeletion() throws {
        let fx = try AuditCLIFixture()
        let (code, _, err) = try runTibetTwin(["audit", "_load", fx.dir, "--key", fx.key, "--count", "200", "--node", "guard-01",
                                               "--threads", "1", "--segment-bytes", "4096", "--retain-max-bytes", "16384"])
        #expect(code == 0, "\(err)")
        let numbers = try fx.segments().map(\.number)
        let first = try #require(numbers.first)
        #expect(first > 1)
        #expect(try fx.segments().reduce(0) { $0 + $1.bytes.count } <= 16384 + 3 * 4096)
        let (vc, vout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", fx.pub])
        #expect(vc == 0, "\(vout)")
        #expect(vout.contains("kept chain starts at tibet-\(first).jsonl"), "\(vout)")
        #expect(vout.contains("removed by retention"), "\(vout)")
        try FileManager.default.removeItem(atPath: fx.dir + "/" + AuditSegment.name(first))
        let (bc, bout, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(bc == 1)
        #expect(bout.hasPrefix(fx.dir + "/" + AuditSegment.name(first + 1) + ":1: segment: "), "\(bout)")
    }

    /// As docs/audit.md describes it, with `tibet-twin keygen` making the audit key: the store signs with it,
    /// `audit verify --key OUT.pub` pins it; a key file others may read is refused and changes
    /// nothing; a second keygen never overwrites the key.
    @Test func keygenKeySignsAndPinsTheChainAsTheReadmeSays() throws {
        let fx = try AuditCLIFixture()
        let key = fx.root + "/readme/guard.key"
        try FileManager.default.createDirectory(atPath: fx.root + "/readme", withIntermediateDirectories: true)
        let (kc, kout, kerr) = try runTibetTwin(["keygen", key])
        #expect(kc == 0, "\(kerr)")
        #expect(kout.contains(key + ".pub"))
        let mode = try #require(FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int)
        #expect(mode & 0o077 == 0)
        let (lc, lout, lerr) = try runTibetTwin(["audit", "_load", fx.dir, "--key", key, "--count", "8", "--node", "guard-01"])
        #expect(lc == 0, "\(lerr)")
        #expect(acked(lout.split(separator: "\n").map(String.init)).count == 8)
        let (vc, vout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", key + ".pub"])
        #expect(vc == 0, "\(vout)")
        #expect(vout.hasPrefix("ok: 10 tokens in 1 segment, ") && vout.contains("(pinned)"), "\(vout)")
        // The test fixture's own key is another key: pinned to it, the chain fails at line 1.
        let (oc, oout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", fx.pub])
        #expect(oc == 1 && oout.hasPrefix(fx.dir + "/tibet-1.jsonl:1: key: "), "\(oout)")

        // Readable by group: refused at open, exit 2, the chain is not touched.
        let before = try fx.segments().map(\.bytes)
        #expect(chmod(key, 0o640) == 0)
        let (rc, _, rerr) = try runTibetTwin(["audit", "_load", fx.dir, "--key", key, "--count", "1", "--node", "guard-01"])
        #expect(rc == 2)
        #expect(rerr.contains(key) && rerr.split(separator: "\n").count == 1, "\(rerr)")
        #expect(try fx.segments().map(\.bytes) == before)
        // keygen refuses to overwrite the existing key.
        let (gc, _, gerr) = try runTibetTwin(["keygen", key])
        #expect(gc == 1 && gerr.contains("exists"), "\(gerr)")
    }

    @Test func verifyNamesTheTamperedLine() throws {
        let fx = try AuditCLIFixture()
        _ = try runTibetTwin(["audit", "_load", fx.dir, "--key", fx.key, "--count", "12", "--threads", "1"])
        let path = fx.dir + "/tibet-1.jsonl"
        var lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        lines[5] = lines[5].replacingOccurrences(of: #""seq":"#, with: #""seq":1"#)
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let (code, out, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(code == 1)
        #expect(out.hasPrefix(path + ":6: hash: "), "\(out)")
        lines.remove(at: 5)
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let (code2, out2, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(code2 == 1)
        #expect(out2.hasPrefix(path + ":6: link: "), "\(out2)")
    }

    /// A child appending under load is SIGKILLed at random points, many times. After each kill
    /// the chain verifies up to at most a torn last line, and every token the child reported
    /// durable is in it; the next child repairs the tail and goes on. At the end the repaired
    /// chain passes `audit verify`.
    @Test func sigkillUnderLoadNeverLosesAnAcknowledgedToken() throws {
        let fx = try AuditCLIFixture()
        var allAcked = Set<String>()
        var tornSeen = 0
        var rng = SystemRandomNumberGenerator()
        for round in 0..<12 {
            let child = try AuditLoadChild(["audit", "_load", fx.dir, "--key", fx.key, "--threads", "4",
                                   "--segment-bytes", "20000", "--node", "guard-01"])
            #expect(child.waitFor { !acked($0).isEmpty }, "round \(round): no token acknowledged")
            usleep(UInt32.random(in: 0...80_000, using: &rng))
            child.kill()
            let ackedNow = acked(child.lines)
            allAcked.formUnion(ackedNow)
            // Verify as found: intact, or torn only at the very end.
            var torn = false
            switch ChainVerifier.verify(segments: try fx.segments()) {
            case .success: break
            case .failure(let f):
                let lastFile = try fx.segments().last!.file
                #expect(f.kind == .torn && f.file == lastFile, "round \(round): \(f)")
                torn = true
                tornSeen += 1
            }
            let ids = try fx.tokenIds()
            let missing = allAcked.subtracting(ids)
            #expect(missing.isEmpty, "round \(round): acknowledged but missing: \(missing.sorted().prefix(5))")
            // SIGKILL rarely cuts a write(2) to a file short; a power cut does. Every other
            // round leaves a write cut short on purpose: the first bytes of a token line.
            if round % 2 == 1 && !torn {
                let segs = try fx.segments()
                let last = segs.last!
                let lines = segs.flatMap { ChainVerifier.split($0.bytes).lines }
                let sample = Array(lines[lines.count / 2])
                let cut = Int.random(in: 1..<sample.count, using: &rng)
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: fx.dir + "/" + last.file))
                try h.seekToEnd()
                try h.write(contentsOf: Data(sample.prefix(cut)))
                try h.close()
                tornSeen += 1
            }
        }
        // Repair (open and close) and verify with the binary.
        let (rc, _, rerr) = try runTibetTwin(["audit", "_load", fx.dir, "--key", fx.key, "--count", "0", "--node", "guard-01"])
        #expect(rc == 0, "\(rerr)")
        let (vc, vout, _) = try runTibetTwin(["audit", "verify", fx.dir, "--key", fx.pub])
        #expect(vc == 0, "\(vout)")
        #expect(vout.contains("13 starts, \(tornSeen) torn-tail repair"), "\(vout)")
        #expect(try tornFileCount(fx.dir) == tornSeen)
        #expect(allAcked.subtracting(try fx.tokenIds()).isEmpty)
        #expect(allAcked.count >= 12)
        // Every start after a kill says the chain was not stopped cleanly.
        let starts = try fx.segments().flatMap { ChainVerifier.split($0.bytes).lines }
            .compactMap { try? TibetToken(json: JSONParser.parse(String(decoding: $0, as: UTF8.self))) }
            .filter { $0.action == .started }
        #expect(starts.count == 13)
        #expect(starts.dropFirst().allSatisfy { $0.erin["resumed"]?["clean_stop"] == false })
        print("sigkill: \(allAcked.count) acknowledged tokens over 12 kills, \(tornSeen) torn tails repaired; \(vout)")
    }

    /// Disk full, for real: the child's RLIMIT_FSIZE stops the segment from growing (write
    /// fails with EFBIG). Health goes 0, acknowledgements fail, nothing crashes; when the limit
    /// is lifted the store recovers by itself and audits it.
    @Test func fileSizeLimitBlocksThenRecovers() throws {
        let fx = try AuditCLIFixture()
        let child = try AuditLoadChild(["audit", "_load", fx.dir, "--key", fx.key, "--threads", "2", "--fsize-limit", "40000",
                               "--read-stdin", "--retry-ms", "20", "--node", "guard-01"])
        #expect(child.waitFor { $0.contains("health 0") }, "never went unhealthy: \(child.lines.suffix(3))")
        #expect(child.waitFor { $0.contains { $0.hasPrefix("failed ") } })
        let ackedBefore = acked(child.lines)
        #expect(!ackedBefore.isEmpty)
        child.send("unlimit")
        #expect(child.waitFor { $0.contains("health 1") }, "never recovered: \(child.lines.suffix(3))")
        let n = acked(child.lines).count
        #expect(child.waitFor { acked($0).count > n + 10 })
        child.send("quit")
        #expect(child.wait(seconds: 20) == 0)
        let all = acked(child.lines)
        #expect(Set(all).subtracting(try fx.tokenIds()).isEmpty)
        let failedLines = child.lines.filter { $0.hasPrefix("failed ") }
        #expect(failedLines.allSatisfy { $0.contains("EFBIG") || $0.contains("cannot write") })
        let (vc, vout, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(vc == 0, "\(vout)")
        let (_, rec, _) = try runTibetTwin(["audit", "show", fx.dir, "--action", "audit_recovered"])
        #expect(rec.contains("EFBIG"))
    }
}
