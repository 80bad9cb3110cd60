import Foundation
import Testing
import TestSupport

/// Runs the built binary in `cwd` (the package root by default); returns (exit code, stdout, stderr).
private func run(_ args: [String], cwd: URL = packageRoot) throws -> (Int32, String, String) {
    try runTibetTwin(args, cwd: cwd)
}

@Suite("tibet-twin maps validate")
struct MapsValidateCLITests {
    @Test func exampleMapsValidateByDefault() throws {
        let (code, out, err) = try run(["maps", "validate"])
        #expect(code == 0)
        #expect(err.isEmpty)
        let lines = out.split(separator: "\n")
        // One line per example map, then one per serial link and per shared TCP link.
        #expect(lines.count == 11)
        #expect(lines.suffix(2) == ["link /dev/ttyUSB0 19200 8E1: 1 device, 8.0 requests/s, busy 24.8 % (fits)",
                                    "link 10.20.0.50:502: 2 devices, 16.0 requests/s, busy 19.2 % (fits)"])
        #expect(lines.first == "crane-01: profile port, 4 registers, 4 intents (move_left=coil 0, hoist=coil 1, move_right=coil 2, boom_lower=coil 3), plc 127.0.0.1:1502 unit 1, maps/crane-01.yaml")
    }

    @Test func explicitDirectoryAndFiles() throws {
        let (code, out, _) = try run(["maps", "validate", "maps/"], cwd: packageRoot)
        #expect(code == 0)
        #expect(out.split(separator: "\n").map { $0.split(separator: ":")[0] } ==
            ["crane-01", "energy-meter-12", "etch-02", "gateway-meter-21", "gateway-meter-22", "ahu-03", "robot-cell-01",
             "mill-f3", "wtg-07", "link /dev/ttyUSB0 19200 8E1", "link 10.20.0.50"])
        let (code2, out2, _) = try run(["maps", "validate", "maps/crane-01.yaml", "maps/hvac-ahu-03.yaml"])
        #expect(code2 == 0)
        #expect(out2.split(separator: "\n").count == 2)
    }

    @Test func badFixtureExitsOneWithTheExactLine() throws {
        let fixture = "Tests/TibetTwinTests/Fixtures/maps/unknown-type.yaml"
        let (code, out, err) = try run(["maps", "validate", fixture])
        #expect(code == 1)
        #expect(out.isEmpty)
        #expect(err == "\(fixture):8:44: registers[0].type: unknown type \"flaot32\" (expected one of: bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string)\n")
    }

    @Test func everyIssueOneLineEach() throws {
        let fixtures = "Tests/TibetTwinTests/Fixtures/maps/"
        let (code, _, err) = try run(["maps", "validate", fixtures + "many-errors.yaml", fixtures + "overlap.yaml", "maps/crane-01.yaml", "nowhere/"])
        #expect(code == 1)
        let lines = err.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == 14)
        #expect(lines.allSatisfy { $0.hasPrefix(fixtures) || $0.hasPrefix("nowhere/") })
        #expect(lines.last == "nowhere/:1:1: ENOENT: no such file or directory")
    }

    /// maps/README.md shows a broken map and the output of `maps validate` for it: keep them true.
    @Test func readmeErrorExampleIsWhatTheToolPrints() throws {
        let readme = try String(contentsOf: packageRoot.appendingPathComponent("maps/README.md"), encoding: .utf8)
        func block(after marker: String) throws -> String {
            let start = try #require(readme.range(of: marker)).upperBound
            let open = try #require(readme.range(of: "```", range: start..<readme.endIndex))
            let bodyStart = try #require(readme.range(of: "\n", range: open.upperBound..<readme.endIndex)).upperBound
            let close = try #require(readme.range(of: "\n```", range: bodyStart..<readme.endIndex))
            return String(readme[bodyStart..<close.lowerBound])
        }
        let yaml = try block(after: "This map has six mistakes:")
        let output = try block(after: "reports all of them and exits 1:")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-readme-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("maps"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data((yaml + "\n").utf8).write(to: dir.appendingPathComponent("maps/crane-01.yaml"))
        let (code, _, err) = try run(["maps", "validate"], cwd: dir)
        #expect(code == 1)
        #expect(err == output + "\n")
        #expect(output.split(separator: "\n").count == 6)
    }

    @Test func twoMapsClaimingOneCoil() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let crane = try String(contentsOf: packageRoot.appendingPathComponent("maps/crane-01.yaml"), encoding: .utf8)
        try Data(crane.utf8).write(to: dir.appendingPathComponent("a.yaml"))
        try Data(crane.replacingOccurrences(of: "device: crane-01", with: "device: crane-02").utf8)
            .write(to: dir.appendingPathComponent("b.yaml"))
        let line = try #require(crane.split(separator: "\n", omittingEmptySubsequences: false)
            .firstIndex { $0.hasPrefix("  move_left:") }) + 1
        let (code, _, err) = try run(["maps", "validate", dir.path])
        #expect(code == 1)
        #expect(err.contains("\(dir.path)/b.yaml:\(line):3: intents.move_left: coil 0 is already claimed by crane-01.move_left at \(dir.path)/a.yaml:\(line):3 (coils are one address space on the interlock)\n"))
        #expect(err.split(separator: "\n").count == 4)
    }
}
