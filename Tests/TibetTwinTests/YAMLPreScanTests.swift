import Foundation
import Testing
@testable import TibetTwin

/// The alias bomb of issue 17: each level is a list of ten aliases of the level below, and the
/// last level is used as a mapping key, which Yams hashes (expanding every alias) when it checks
/// for duplicate keys. Depth 9 took over 30 s before the pre-scan.
func aliasBomb(levels: Int = 9, prefix: String = "") -> String {
    var text = prefix + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in 1...levels {
        let refs = Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ")
        text += "a\(level): &a\(level) [\(refs)]\n"
    }
    text += "? *a\(levels)\n: boom\n"
    return text
}

@Suite struct YAMLPreScanTests {
    @Test func aliasBombIsRefusedFastByTheMapLoader() {
        let start = ContinuousClock.now
        let issues = mapIssues(aliasBomb(), file: "bomb.yaml")
        // Liveness bound only: before the fix this took more than 30 s.
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(issues == [
            "bomb.yaml:1:5: an anchor (&name): anchors and aliases are not supported, write the value out "
                + "(a word that starts with * or & after a blank, '-', ':', '?', ',', '[' or '{' reads as one, even in quotes)",
        ])
    }

    @Test func aliasBombIsRefusedByTheConfigParser() {
        let start = ContinuousClock.now
        #expect(throws: MapErrors.self) { try ApplianceConfig.parse(yaml: aliasBomb(), file: "c.yaml") }
        #expect(ContinuousClock.now - start < .seconds(5))
        do {
            _ = try ApplianceConfig.parse(yaml: aliasBomb(), file: "c.yaml")
        } catch {
            #expect(error.issues.map(\.description).first?.hasPrefix("c.yaml:1:5: an anchor (&name)") == true)
        }
    }

    /// Every place YAML starts a node: the alias is found there, with its line and column.
    @Test(arguments: [
        ("k: *a\n", 1, 4), ("- *a\n", 1, 3), ("--- *a\n", 1, 5), ("k:\n  *a : 1\n", 2, 3),
        ("k: [x, *a]\n", 1, 8), ("k: [*a]\n", 1, 5), ("k: {*a: 1}\n", 1, 5), ("k: {\"q\":*a}\n", 1, 9),
        ("- x\n- *a\n", 2, 3), ("k:\t*a\n", 1, 4), ("k: v\u{2028}*a: 1\n", 2, 1), ("k: v\u{85}*a: 1\n", 2, 1),
        ("k: v\r*a: 1\n", 2, 1), ("k: [\"#x\", *a]\n", 1, 11), ("k: \"x\n  , *a\"\n", 2, 5),
        ("<<: *base\n", 1, 5), ("k: &a v\n", 1, 4)
    ])
    func aliasesAndAnchorsAreFound(_ text: String, _ line: Int, _ column: Int) throws {
        let issue = try #require(YAMLPreScan.check(text))
        #expect((issue.line, issue.column) == (line, column))
    }

    /// Text that YAML reads as words, not anchors or aliases, passes.
    @Test(arguments: [
        "k: R&D\n", "k: 2 * 3\n", "k: see *manual*\n", "k: \"see *manual*\"\n", "# - *commented\nk: v\n",
        "k: v   # [*x, &y]\n", "k: m/s*2\n", "k: - * x\n", "k: café *ü\n", "listen: \"[::1]:9102\"\n",
        "allow: ['::1/128', \"[fd00::1]:502\"]\n", "k: what?\n",
    ])
    func wordsWithStarsPass(_ text: String) {
        #expect(YAMLPreScan.check(text) == nil)
    }

    /// Collections as keys (hashed whole on Yams' duplicate check) are refused too.
    @Test(arguments: [
        ("? [a, b]\n: 1\n", 1, 1), ("k: {? x: 1}\n", 1, 5), ("[a, b]: 1\n", 1, 6), ("k: {{a: 1} : 2}\n", 1, 10),
        ("k:\n  [[a]]: 1\n", 2, 7),
    ])
    func collectionKeysAreRefused(_ text: String, _ line: Int, _ column: Int) throws {
        let issue = try #require(YAMLPreScan.check(text))
        #expect((issue.line, issue.column) == (line, column), "\(issue)")
        #expect(issue.message.contains("key"))
    }

    @Test func theShippedMapsAndExampleConfigPass() throws {
        let maps = try FileManager.default.contentsOfDirectory(atPath: packageRoot.appendingPathComponent("maps").path)
            .filter { $0.hasSuffix(".yaml") }
        #expect(!maps.isEmpty)
        for name in maps + ["../tibet-twin.example.yaml"] {
            let text = try String(contentsOf: packageRoot.appendingPathComponent("maps/\(name)"), encoding: .utf8)
            #expect(YAMLPreScan.check(text) == nil, "\(name)")
        }
    }

    @Test func deepFlowNestingIsRefused() throws {
        let deep = "k: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n"
        let issue = try #require(YAMLPreScan.check(deep))
        #expect(issue.line == 1 && issue.message.contains("nested more than \(YAMLLimits.maxDepth) levels"))
        // Closing brackets hidden in quoted text do not let the nesting grow past the total cap.
        var hidden = "k: "
        for _ in 0..<2_000 { hidden += "[[[[[[ \"\n]]]]]]\n\", " }
        let total = try #require(YAMLPreScan.check(hidden))
        #expect(total.message.contains("more than \(YAMLLimits.maxFlowCollections) [ ] or { } collections"))
    }

    /// Nesting the depth estimate misses (brackets closed only inside quoted text) still fails
    /// cleanly: libyaml refuses more than 1000 levels, long before the stack runs out.
    @Test func theWorstNestingTheCapsAllowFailsCleanly() {
        var hidden = "k: "
        for _ in 0..<1_600 { hidden += "[[[[[[ \"\n]]]]]]\n\", " }
        #expect(YAMLPreScan.check(hidden) == nil)
        let issues = mapIssues(hidden)
        // libyaml stops at 1000 levels (line 333 holds levels 997…1002) before Yams recurses deeper.
        #expect(issues.count == 1 && issues.first?.hasPrefix("m.yaml:333:") == true
            && issues.first?.contains("Maximum nesting level reached") == true, "\(issues)")
    }

    @Test func deepBlockNestingIsRefused() throws {
        let compact = "k:\n" + String(repeating: "- ", count: 1_000) + "x\n"
        #expect(try #require(YAMLPreScan.check(compact)).message.contains("nested more than"))
        var indented = ""
        for level in 0..<100 { indented += String(repeating: " ", count: level) + "k\(level):\n" }
        let issue = try #require(YAMLPreScan.check(indented))
        #expect(issue.message.contains("nested more than") && issue.line < 40)
    }

    @Test func tooManyValuesAreRefused() throws {
        let many = "k: [" + Array(repeating: "1", count: YAMLLimits.maxNodes + 10).joined(separator: ",") + "]\n"
        let issue = try #require(YAMLPreScan.check(many))
        #expect(issue.message.contains("more than \(YAMLLimits.maxNodes) values"))
    }

    /// A large map within the caps (20,000 registers, 3,000 intents) is read in linear time:
    /// the overlap check compared every pair of entries and free mappings scanned for repeated
    /// keys, minutes in a debug build (53 s for 15,000 registers). Liveness bound only.
    @Test func aLargeMapWithinTheCapsIsReadInLinearTime() throws {
        var text = "device: big-01\nprofile: port\nplc: {host: 127.0.0.1, port: 1502}\n"
            + "status: {address: 0, values: {0: operational}}\nregisters:\n"
        for i in 0..<20_000 { text += "  - name: r\(i)\n    address: \(100 + 2 * i)\n    type: float32\n" }
        text += "  - name: clash\n    address: 100\n    type: uint16\n"
        text += "intents:\n"
        for i in 0..<3_000 { text += "  i\(i):\n    coil: \(i)\n" }
        #expect(YAMLPreScan.check(text) == nil)
        let start = ContinuousClock.now
        let issues = mapIssues(text, file: "big.yaml")
        #expect(ContinuousClock.now - start < .seconds(30), "liveness bound")
        #expect(issues.first == "big.yaml:60007:14: registers[20000].address: holding 100 overlaps \"r0\" (holding 100…101) at big.yaml:7:14",
                "\(issues.prefix(2))")
        #expect(issues.count == 2 && issues.last?.contains("intents.i16: too many intents") == true, "\(issues)")
    }
}

