import Foundation
import Testing
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

// Issue 17: config and map files that used to hang or confuse the appliance, through the binary.

/// The 400-byte alias bomb: ten aliases per level, the last level used as a mapping key
/// (Yams hashes the expanded tree when it checks keys for duplicates: depth 9 took over 30 s).
func aliasBombYAML(levels: Int = 9) -> String {
    var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in 1...levels {
        text += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]\n"
    }
    return text + "? *a\(levels)\n: boom\n"
}

private let anchorRefusal = "an anchor (&name): anchors and aliases are not supported"

@Suite("Hostile config and map files", .serialized)
struct HostileConfigTests {
    @Test func mapsValidateRefusesTheAliasBombFast() async throws {
        let dir = try TempDir("tibet-bomb")
        defer { dir.cleanup() }
        try dir.write("bomb.yaml", aliasBombYAML())
        let child = try Child(binaryURL().path, ["maps", "validate", dir.file("bomb.yaml")], name: "validate")
        // Liveness bound only: before the fix this ran for minutes.
        #expect(await eventually(within: 20) { !child.isRunning }, "maps validate did not return")
        let code = child.waitForExit(timeout: 5)
        #expect(code == 1)
        #expect(child.stderrLines.first?.hasPrefix("\(dir.file("bomb.yaml")):1:5: \(anchorRefusal)") == true,
                "\(child.transcript)")
    }

    /// A map that is a FIFO nobody writes used to block `open` forever.
    @Test func mapsValidateRefusesAFIFOMap() async throws {
        let dir = try TempDir("tibet-fifo")
        defer { dir.cleanup() }
        #expect(mkfifo(dir.file("fifo.yaml"), 0o600) == 0)
        let child = try Child(binaryURL().path, ["maps", "validate", dir.file("fifo.yaml")], name: "validate")
        #expect(await eventually(within: 20) { !child.isRunning }, "maps validate did not return")
        #expect(child.waitForExit(timeout: 5) == 1)
        #expect(child.stderrLines == ["\(dir.file("fifo.yaml")):1:1: cannot read: not a regular file"], "\(child.transcript)")
    }

    @Test func runRefusesTheAliasBombConfigAtStart() async throws {
        let dir = try TempDir("tibet-bomb")
        defer { dir.cleanup() }
        try dir.write("tibet-twin.yaml", "node: x\n" + aliasBombYAML())
        let child = try Child(binaryURL().path, ["run", "--config", dir.file("tibet-twin.yaml")], name: "run")
        #expect(await eventually(within: 20) { !child.isRunning }, "run did not return")
        #expect(child.waitForExit(timeout: 5) == 2)
        #expect(child.stderrLines.contains { $0.hasPrefix("tibet-twin run: \(dir.file("tibet-twin.yaml")):2:5: \(anchorRefusal)") },
                "\(child.transcript)")
    }

    /// SIGHUP with the bomb as a map: refused at once with file:line:col, the old map keeps the
    /// coil up, and SIGTERM still stops the appliance cleanly.
    @Test func sighupWithAnAliasBombMapKeepsTheOldSetAndStops() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        let seen = s.coils.history.count
        try s.rig.dir.write("maps/crane-01.yaml", aliasBombYAML())
        s.rig.child?.signal(SIGHUP)
        #expect(await eventually(within: 10) { s.rig.child?.stderrLines.contains { $0.contains("reload refused") } ?? false },
                "\(s.rig.transcript)")
        let refusal = s.rig.child?.stderrLines.first { $0.contains("reload refused") } ?? ""
        #expect(refusal.contains("crane-01.yaml:1:5: \(anchorRefusal)"), "\(refusal)")
        try await Task.sleep(for: .milliseconds(300))
        #expect(s.coils.history.dropFirst(seen - 1).allSatisfy { $0.first == "1" }, "the old map keeps serving")
        try await s.stopAndVerify()
    }

    // MARK: Start-up errors name the config file, the line and column of the key, and the key.

    /// A config dir with a valid map and key; `feeds` and `audit` are YAML lines of the config.
    private func startupConfig(_ dir: TempDir, feeds: [String], auditKey: String = "guard.key") throws -> String {
        try dir.write("maps/crane-01.yaml", rigMapYAML(port: closedPort()))
        let (code, _, err) = try runTibetTwin(["keygen", dir.file("guard.key")])
        guard code == 0 else { throw HarnessError("keygen failed: \(err)") }
        try dir.write("tibet-twin.yaml", """
            node: t
            maps: maps/
            interlock: {listen: 127.0.0.1:0, allow: [127.0.0.0/8]}
            twin:
              feeds:
            \(feeds.map { "    - \($0)" }.joined(separator: "\n"))
            audit:
              dir: audit
              key: \(auditKey)
            http: {listen: 127.0.0.1:0}

            """)
        return dir.file("tibet-twin.yaml")
    }

    /// `tibet-twin run --config` that must refuse to start: exit 2 and its error lines.
    private func refusedStart(_ config: String) async throws -> [String] {
        let child = try Child(binaryURL().path, ["run", "--config", config], name: "run")
        #expect(await eventually(within: 30) { !child.isRunning }, "run did not return")
        #expect(child.waitForExit(timeout: 5) == 2, "\(child.transcript)")
        // The error lines (log lines of the parts that were closed again are not counted).
        return child.stderrLines.filter { $0.hasPrefix("tibet-twin run: ") }
    }

    @Test func aMissingAuditKeyNamesTheKeyLine() async throws {
        let dir = try TempDir("tibet-start")
        defer { dir.cleanup() }
        let config = try startupConfig(dir, feeds: ["tcp: 127.0.0.1:0"], auditKey: "missing.key")
        let lines = try await refusedStart(config)
        #expect(lines == ["tibet-twin run: \(config):9:8: audit.key: \(dir.file("missing.key")): stat failed: "
                          + "ENOENT (no such file or directory) — the audit signing key (tibet-twin keygen)"], "\(lines)")
    }

    @Test func aDuplicateTCPFeedIsCaughtAtValidation() async throws {
        let dir = try TempDir("tibet-start")
        defer { dir.cleanup() }
        let port = closedPort()
        let config = try startupConfig(dir, feeds: ["tcp: 127.0.0.1:\(port)", "tcp: 127.0.0.1:\(port)"])
        let lines = try await refusedStart(config)
        #expect(lines == ["tibet-twin run: \(config):7:12: twin.feeds[1].tcp: 127.0.0.1:\(port) collides with "
                          + "twin.feeds[0].tcp 127.0.0.1:\(port) (first at \(config):6:12): two listeners cannot share a port; give each its own"],
                "\(lines)")
    }

    @Test func aUnixFeedPathThatIsARegularFileNamesTheKeyLine() async throws {
        let dir = try TempDir("tibet-start")
        defer { dir.cleanup() }
        try dir.write("feed.sock", "not a socket\n")
        let config = try startupConfig(dir, feeds: ["unix: feed.sock"])
        let lines = try await refusedStart(config)
        #expect(lines == ["tibet-twin run: \(config):6:13: twin.feeds[0].unix: \(dir.file("feed.sock")) exists and is "
                          + "a regular file, not a socket: remove it or choose another path"], "\(lines)")
        #expect(try String(contentsOfFile: dir.file("feed.sock"), encoding: .utf8) == "not a socket\n", "the file is left alone")
    }

    /// A feed port another process holds fails only at bind: the line still names the key.
    @Test func aFeedPortInUseNamesTheKeyLine() async throws {
        let dir = try TempDir("tibet-start")
        defer { dir.cleanup() }
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                bind(holder, p, len) == 0 && listen(holder, 1) == 0 && getsockname(holder, p, &len) == 0
            }
        }
        #expect(bound)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let config = try startupConfig(dir, feeds: ["tcp: 127.0.0.1:\(port)"])
        let lines = try await refusedStart(config)
        #expect(lines == ["tibet-twin run: \(config):6:12: twin.feeds[0].tcp: cannot listen on 127.0.0.1:\(port): "
                          + "EADDRINUSE (address already in use)"], "\(lines)")
    }
}
