import Foundation
import Testing
@testable import Appliance
import Commissioning
import TibetTwin
import TestSupport

/// A fresh temporary directory, removed by `cleanup`.
private struct TempDir {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "tibet-mapfiles-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ text: String) throws {
        let full = path + "/" + name
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: full))
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

private func map(_ device: String, coil: Int, extra: String = "") -> String {
    """
    device: \(device)
    profile: port
    plc: {host: 127.0.0.1, port: 1502}
    status: {address: 0, values: {0: operational}}
    registers:
      - {name: load_kg, address: 10, type: uint32}
    \(extra)
    intents:
      go: {coil: \(coil)}

    """
}

private func issues(_ paths: [String]) -> [String] {
    do {
        _ = try MapFiles.load(paths: paths)
        return []
    } catch {
        return error.issues.map(\.description)
    }
}

@Suite("Map files")
struct MapFilesTests {
    @Test func directoryLoadsYamlFilesSortedByNameWithTheirSHA256() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try dir.write("b.yaml", map("dev-b", coil: 1))
        try dir.write("a.yml", map("dev-a", coil: 0))
        try dir.write("C.yaml", map("dev-c", coil: 2))
        try dir.write("notes.txt", "not a map")
        try dir.write(".hidden.yaml", "broken: [")
        let maps = try MapFiles.load(paths: [dir.path])
        #expect(maps.map(\.device) == ["dev-c", "dev-a", "dev-b"])  // byte order: "C" < "a" < "b"
        #expect(maps[1].sourceFile == dir.path + "/a.yml")
        // The digest is of the file's bytes: the same bytes elsewhere give the same digest, one more byte another.
        #expect(maps.allSatisfy { $0.sha256.count == 64 && $0.sha256.allSatisfy(\.isHexDigit) })
        try dir.write("copy/a.yml", map("dev-a", coil: 0))
        let copy = try MapFiles.load(paths: [dir.path + "/copy/a.yml"])
        #expect(copy[0].sha256 == maps[1].sha256)
        try dir.write("copy/a.yml", map("dev-a", coil: 0) + "# changed\n")
        #expect(try MapFiles.load(paths: [dir.path + "/copy/a.yml"])[0].sha256 != maps[1].sha256)
    }

    @Test func sha256MatchesAKnownDigest() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let text = map("dev-a", coil: 0)
        try dir.write("a.yaml", text)
        let got = try MapFiles.load(paths: [dir.path + "/a.yaml"])[0].sha256
        // The digest as computed by the system's sha256sum, when it exists.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [dir.path + "/a.yaml"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let expected = String(decoding: data, as: UTF8.self).split(separator: " ").first.map(String.init)
        #expect(got == expected)
    }

    @Test func everyFileIsReportedAndMissingPathsToo() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try dir.write("a.yaml", map("dev-a", coil: 0).replacingOccurrences(of: "uint32", with: "unit32"))
        try dir.write("b.yaml", map("dev-b", coil: 1).replacingOccurrences(of: "profile: port", with: "profile: prot"))
        try dir.write("empty/.keep", "")
        try dir.write("bin.yaml", "device: \u{FF}")
        try Data([0x64, 0xFF, 0xFE]).write(to: URL(fileURLWithPath: dir.path + "/bin.yaml"))
        #expect(issues([dir.path, dir.path + "/missing.yaml", dir.path + "/empty"]) == [
            "\(dir.path)/a.yaml:6:40: registers[0].type: unknown type \"unit32\" (expected one of: bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string)",
            "\(dir.path)/b.yaml:2:10: profile: unknown profile \"prot\" (expected one of: port, manufacturing, energy, steel, semiconductor, building)",
            "\(dir.path)/bin.yaml:1:1: not UTF-8 text (a map file is YAML in UTF-8)",
            "\(dir.path)/missing.yaml:1:1: ENOENT: no such file or directory",
            "\(dir.path)/empty:1:1: no *.yaml or *.yml map files in this directory",
        ])
    }

    @Test func crossCheckRunsOverAllFiles() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try dir.write("a.yaml", map("dev-a", coil: 3))
        try dir.write("b.yaml", map("dev-b", coil: 3))
        #expect(issues([dir.path]) == [
            "\(dir.path)/b.yaml:9:3: intents.go: coil 3 is already claimed by dev-a.go at \(dir.path)/a.yaml:9:3 (coils are one address space on the interlock)",
        ])
    }

    @Test func twinKeyMustBeAReadablePublicKey() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let sk = try KeyText.privateKey(from: String(repeating: "B", count: 43) + "=")
        try dir.write("keys/dev-a.pub", KeyText.text(of: sk.publicKey) + "\n")
        try dir.write("a.yaml", map("dev-a", coil: 0, extra: "twin_key: keys/dev-a.pub"))
        let ok = try MapFiles.load(paths: [dir.path + "/a.yaml"])
        #expect(MapFiles.twinKeyPath(of: ok[0]) == dir.path + "/keys/dev-a.pub")

        try dir.write("b.yaml", map("dev-b", coil: 1, extra: "twin_key: keys/missing.pub"))
        try dir.write("c.yaml", map("dev-c", coil: 2, extra: "twin_key: c.yaml"))
        #expect(issues([dir.path + "/b.yaml", dir.path + "/c.yaml"]) == [
            "\(dir.path)/b.yaml:7:11: twin_key: cannot read \(dir.path)/keys/missing.pub: ENOENT: no such file or directory",
            "\(dir.path)/c.yaml:7:11: twin_key: \(dir.path)/c.yaml is not an Ed25519 public key (expected the .pub file of `tibet-twin keygen`)",
        ])
    }

    @Test func unreadableFileIsAnIssueNotACrash() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try dir.write("sub.yaml/inner.yaml", map("dev-a", coil: 0))  // a directory named like a map
        #expect(issues([dir.path + "/sub.yaml/inner.yaml", dir.path]) == [
            "\(dir.path)/sub.yaml:1:1: cannot read: EISDIR: is a directory",
        ])
    }
}

@Suite("PLC clock through the simulator")
struct PLCClockSimulatorTests {
    /// The etch tool's map names a clock register; the simulator serves its wall time there and
    /// the poller's states carry it as plcWallNs.
    @Test func pollerDeliversTheSimulatorsClock() throws {
        let text = try String(contentsOf: packageRoot.appendingPathComponent("maps/etch-tool-02.yaml"), encoding: .utf8)
        var map = try MapLoader.parse(yaml: text, file: "maps/etch-tool-02.yaml")
        map.plc.host = "127.0.0.1"
        map.plc.port = 0
        let sim = try PLCSimulator(maps: [map])
        defer { sim.stop() }
        map.plc.port = sim.endpoints[0].port
        map.plc.pollMs = 50
        map.plc.timeoutMs = 1000
        let log = StateLog()
        let poller = Poller(maps: [map]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let got = try #require(log.wait { $0.isAllGood })
        let plc = try #require(got.state.plcWallNs)
        // The simulator stamps the time of its answer, the same clock the arrival time is read
        // from: they agree within a generous bound (not a measurement).
        #expect(abs(got.state.time.wallNs - plc) < 5_000_000_000)
        #expect(got.state.physicalWallNs == plc)
        #expect(got.state.identity == .ok)
    }
}
