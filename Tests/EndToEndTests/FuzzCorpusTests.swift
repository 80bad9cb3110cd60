import Foundation
import TestSupport
import Testing

/// The committed fuzz corpus (fuzz/corpus) replayed through the same invariants `make fuzz`
/// checks: every input libFuzzer kept, and every seed, stays a regression test.
@Suite("Fuzz corpus replay")
struct FuzzCorpusTests {
    @Test(arguments: ["yaml", "twin", "modbus", "opcua"])
    func corpusHoldsEveryInvariant(target: String) throws {
        let tool = binaryURL().deletingLastPathComponent().appendingPathComponent("tibet-twin-fuzz")
        let corpus = packageRoot.appendingPathComponent("fuzz/corpus/\(target)").path
        let p = Process()
        p.executableURL = tool
        p.arguments = [target, corpus]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        #expect(p.terminationStatus == 0, "\(text)")
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus).count
        #expect(files > 0)
        #expect(text.contains("\(target): \(files) inputs replayed, every invariant held"), "\(text)")
    }
}
