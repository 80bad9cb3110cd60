import Testing
import Foundation
import TestSupport

/// Runs a program (by absolute path) and returns (exit code, stdout + stderr).
func runTool(_ path: String, _ args: [String], environment: [String: String]? = nil) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let environment { p.environment = environment }
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

let systemdAnalyze = "/usr/bin/systemd-analyze"

@Suite("systemd unit", .enabled(if: FileManager.default.isExecutableFile(atPath: systemdAnalyze),
                                "systemd-analyze is not installed (scripts/setup.sh installs it)"))
struct SystemdUnitTests {
    let unit = packageRoot.appendingPathComponent("systemd/tibet-twin.service")

    /// `systemd-analyze verify` works offline here (no systemd as PID 1). It checks that the
    /// ExecStart binary exists, so the test points it at the built binary in a temporary copy.
    @Test func unitVerifies() throws {
        let text = try String(contentsOf: unit, encoding: .utf8)
        #expect(text.contains("Type=notify"))
        #expect(text.contains("Restart=always"))
        #expect(text.contains("WatchdogSec="))
        #expect(text.contains("LimitNOFILE=1024"))
        // The drop path's SCHED_FIFO 10 (docs/architecture.md#the-drop-paths-priority): allowed by
        // the limit, and not refused by RestrictRealtime=yes; nice -10 is the fallback.
        #expect(text.contains("LimitRTPRIO=10"))
        #expect(text.contains("RestrictRealtime=no"))
        #expect(text.contains("LimitNICE=-10"))
        #expect(text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"))
        #expect(text.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE"))
        #expect(text.contains("StateDirectory=tibet-twin"))
        // /etc/tibet-twin belongs to the package (root:tibet-twin 2750): a ConfigurationDirectory=
        // would neither chown it to User= nor keep its mode.
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("ConfigurationDirectory") })
        #expect(text.contains("ExecStart=/usr/bin/tibet-twin run --config /etc/tibet-twin/tibet-twin.yaml"))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("tibet-twin.service")
        try text.replacingOccurrences(of: "/usr/bin/tibet-twin", with: binaryURL().path)
            .write(to: copy, atomically: true, encoding: .utf8)
        let (code, out) = try runTool(systemdAnalyze, ["verify", copy.path])
        #expect(code == 0, "systemd-analyze verify: \(out)")
        #expect(!out.contains(copy.lastPathComponent), "verify complained: \(out)")
    }

    /// The hardening goal: exposure ≤ 1.5 while CAP_NET_BIND_SERVICE stays.
    @Test func securityExposureAtMostOnePointFive() throws {
        let (code, out) = try runTool(systemdAnalyze, ["security", "--offline=true", "--no-pager", unit.path])
        #expect(code == 0, "\(out)")
        let line = out.split(separator: "\n").first { $0.contains("Overall exposure level") }
        let score = line.flatMap { l -> Double? in
            guard let colon = l.lastIndex(of: ":") else { return nil }
            return l[l.index(after: colon)...].split(separator: " ").first.flatMap { Double($0) }
        }
        #expect(score != nil, "no score in: \(out)")
        if let score { #expect(score <= 1.5, "exposure \(score)") }
        // The capability the interlock needs for port 502 is still there.
        #expect(out.contains("CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE"))
    }

    @Test func sysusersSnippetParses() throws {
        let sysusers = "/usr/bin/systemd-sysusers"
        try #require(FileManager.default.isExecutableFile(atPath: sysusers))
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-root-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root.appendingPathComponent("etc"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let conf = packageRoot.appendingPathComponent("systemd/tibet-twin.sysusers.conf").path
        let (code, out) = try runTool(sysusers, ["--dry-run", "--root=\(root.path)", conf])
        #expect(code == 0, "\(out)")
        #expect(out.contains("Creating user 'tibet-twin'"))
    }
}
