import Foundation
import Testing
@testable import TibetTwin

/// A small deterministic generator (SplitMix64), so a failing case can be replayed by seed.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Mutates YAML text the way hands and tools break files: characters dropped, doubled or
/// replaced by YAML-significant ones, lines swapped, duplicated or cut.
private func mutate(_ text: String, _ rng: inout SplitMix) -> String {
    var chars = Array(text.unicodeScalars)
    let specials: [Unicode.Scalar] = [":", "{", "}", "[", "]", ",", "\"", "'", "-", " ", "\n", "#", "&", "*", "!", "|", ">",
                                      "0", "9", "x", "\u{0}", "\u{FEFF}", "é", "\t", "%", "@", "`", "?"]
    for _ in 0..<Int.random(in: 1...4, using: &rng) {
        guard !chars.isEmpty else { break }
        let i = Int.random(in: 0..<chars.count, using: &rng)
        switch Int.random(in: 0..<6, using: &rng) {
        case 0: chars.remove(at: i)
        case 1: chars.insert(chars[i], at: i)
        case 2: chars[i] = specials.randomElement(using: &rng)!
        case 3: chars.insert(specials.randomElement(using: &rng)!, at: i)
        case 4:
            var lines = String(String.UnicodeScalarView(chars)).split(separator: "\n", omittingEmptySubsequences: false)
            let a = Int.random(in: 0..<lines.count, using: &rng), b = Int.random(in: 0..<lines.count, using: &rng)
            lines.swapAt(a, b)
            chars = Array(lines.joined(separator: "\n").unicodeScalars)
        default:
            chars = Array(chars[..<i])
        }
    }
    return String(String.UnicodeScalarView(chars))
}

@Suite("Map parser robustness")
struct MapFuzzTests {
    /// Broken maps never crash the parser and never yield a map; every issue points inside the
    /// file with a message. (Timing-free; deterministic by seed.)
    @Test(arguments: ExampleMapTests.exampleFiles)
    func mutatedExamplesFailCleanly(name: String) throws {
        let text = try String(contentsOf: packageRoot.appendingPathComponent("maps/\(name)"), encoding: .utf8)
        var rng = SplitMix(state: UInt64(name.utf8.reduce(0) { $0 &* 31 &+ UInt64($1) }))
        var rejected = 0
        for round in 0..<120 {
            let broken = mutate(text, &rng)
            let lineCount = broken.split(separator: "\n", omittingEmptySubsequences: false).count
            do {
                let map = try MapLoader.parse(yaml: broken, file: "f.yaml")
                // Some mutations are harmless (a comment changed); the result must still be whole.
                #expect(!map.device.isEmpty && !map.intents.isEmpty, "round \(round)")
            } catch {
                rejected += 1
                #expect(!error.issues.isEmpty)
                for issue in error.issues {
                    #expect(issue.location.file == "f.yaml")
                    #expect(issue.location.line >= 1 && issue.location.line <= lineCount + 1, "round \(round): \(issue)")
                    #expect(issue.location.column >= 1, "round \(round): \(issue)")
                    #expect(!issue.message.isEmpty && !issue.description.contains("\n"), "round \(round): \(issue)")
                }
            }
        }
        #expect(rejected > 60)  // the mutations do break most files
    }

    @Test func mutatedConfigsFailCleanly() {
        var rng = SplitMix(state: 42)
        for round in 0..<150 {
            let broken = mutate(specConfig, &rng)
            do {
                _ = try ApplianceConfig.parse(yaml: broken, file: "c.yaml")
            } catch {
                #expect(error.issues.allSatisfy { $0.location.line >= 1 && $0.location.column >= 1 && !$0.message.isEmpty },
                        "round \(round)")
            }
        }
    }
}
