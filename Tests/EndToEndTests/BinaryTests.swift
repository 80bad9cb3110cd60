import Testing
import Foundation
import TibetTwin
import TestSupport

/// Runs the built `tibet-twin` binary the way a user does (in `cwd`, by default the test
/// runner's) and returns (exit code, stdout, stderr).
func runTibetTwin(_ args: [String], stdin: String? = nil, cwd: URL? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = binaryURL()
    p.arguments = args
    if let cwd { p.currentDirectoryURL = cwd }
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
    try inp.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// The binary next to the test bundle (`.build/debug/tibet-twin`), or `$TIBET_TWIN_BIN`.
func binaryURL() -> URL {
    if let env = ProcessInfo.processInfo.environment["TIBET_TWIN_BIN"] { return URL(fileURLWithPath: env) }
    var dir = Bundle.main.bundleURL
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("tibet-twin")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return URL(fileURLWithPath: ".build/debug/tibet-twin")
}

@Suite("tibet-twin binary")
struct BinaryTests {
    @Test func printsVersion() throws {
        let (code, out, _) = try runTibetTwin(["--version"])
        #expect(code == 0)
        #expect(out.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix("0."))
    }

    @Test func unknownSubcommandIsUsageError() throws {
        let (code, _, err) = try runTibetTwin(["no-such-command"])
        #expect(code != 0)
        #expect(!err.isEmpty)
    }
}
