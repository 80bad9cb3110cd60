import Foundation
import Testing
@testable import TibetTwin

/// The package root, found from this file's path (Tests/TibetTwinTests/…).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

/// A fixture's text and the path error messages name (`Fixtures/maps/<name>`).
func mapFixture(_ name: String) throws -> (text: String, file: String) {
    let url = packageRoot.appendingPathComponent("Tests/TibetTwinTests/Fixtures/maps/\(name)")
    return (try String(contentsOf: url, encoding: .utf8), "Fixtures/maps/\(name)")
}

/// The issue lines a map text produces (empty if it parses).
func mapIssues(_ yaml: String, file: String = "m.yaml") -> [String] {
    do {
        _ = try MapLoader.parse(yaml: yaml, file: file)
        return []
    } catch {
        return error.issues.map(\.description)
    }
}

/// A valid map with `replacing` substitutions applied, for tests that vary one thing.
func minimalMap(_ replacements: [(String, String)] = []) -> String {
    var text = """
        device: t-01
        profile: port
        plc: {host: 127.0.0.1, port: 1502}
        status:
          address: 0
          values: {0: operational, 1: fault}
        registers:
          - {name: position_x, address: 100, type: float32, tolerance: 0.5}
          - {name: load_kg, address: 102, type: uint32, order: CDAB}
        intents:
          move_left: {coil: 0}

        """
    for (a, b) in replacements {
        precondition(text.contains(a), "minimalMap has no \(a)")
        text = text.replacingOccurrences(of: a, with: b)
    }
    return text
}

@Suite("Register map errors")
struct MapErrorTests {
    /// One fixture per error class of maps/README.md, with the exact `file:line:col: key: message`.
    @Test(arguments: [
        ("yaml-syntax.yaml",
         #"Fixtures/maps/yaml-syntax.yaml:4:7: YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping at 3:6)"#),
        ("wrong-kind.yaml",
         #"Fixtures/maps/wrong-kind.yaml:3:6: plc: expected a mapping (host, port, unit, … for TCP; serial, baud, parity, … for RTU), got "127.0.0.1:1502""#),
        ("missing-key.yaml",
         #"Fixtures/maps/missing-key.yaml:1:1: device: missing required key "device" (the device name)"#),
        ("unknown-key.yaml",
         #"Fixtures/maps/unknown-key.yaml:3:24: plc.prot: unknown key "prot" (did you mean "port"?)"#),
        ("bad-value.yaml",
         #"Fixtures/maps/bad-value.yaml:3:30: plc.port: 70000 is out of range (expected a TCP port 1…65535)"#),
        ("unknown-type.yaml",
         #"Fixtures/maps/unknown-type.yaml:8:44: registers[0].type: unknown type "flaot32" (expected one of: bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string)"#),
        ("unknown-order.yaml",
         #"Fixtures/maps/unknown-order.yaml:9:56: registers[1].order: unknown word order "CBDA" (expected one of: ABCD, CDAB, BADC, DCBA)"#),
        ("unknown-table.yaml",
         #"Fixtures/maps/unknown-table.yaml:8:45: registers[0].table: unknown table "holdings" (expected one of: holding, input, coil, discrete)"#),
        ("unknown-profile.yaml",
         #"Fixtures/maps/unknown-profile.yaml:2:10: profile: unknown profile "harbour" (expected one of: port, manufacturing, energy, steel, semiconductor, building)"#),
        ("modicon-contradiction.yaml",
         #"Fixtures/maps/modicon-contradiction.yaml:8:33: registers[0].address: Modicon address "30101" is in the input table, but table is holding (drop table or fix the address)"#),
        ("duplicate-name.yaml",
         #"Fixtures/maps/duplicate-name.yaml:9:5: registers[1].name: duplicate name "position_x" (first defined at Fixtures/maps/duplicate-name.yaml:8:5)"#),
        ("overlap.yaml",
         #"Fixtures/maps/overlap.yaml:9:30: registers[1].address: holding 101…102 overlaps "position_x" (holding 100…101) at Fixtures/maps/overlap.yaml:8:33"#),
        ("requires-unknown.yaml",
         #"Fixtures/maps/requires-unknown.yaml:11:35: intents.move_left.requires.load_gk: requires names unknown register "load_gk" (did you mean "load_kg"?)"#),
        ("bit-non16.yaml",
         #"Fixtures/maps/bit-non16.yaml:9:54: registers[1].bit: bit needs a 16-bit register, but type is uint32 (use uint16, int16, bool or leave type out)"#),
        ("string-no-length.yaml",
         #"Fixtures/maps/string-no-length.yaml:9:41: registers[1]: type string needs a length (number of registers to read, 1…125)"#),
        ("span-beyond.yaml",
         #"Fixtures/maps/span-beyond.yaml:9:30: registers[1].address: 2 registers from 65535 reach 65536, beyond the last address 65535"#),
        ("duplicate-coil.yaml",
         #"Fixtures/maps/duplicate-coil.yaml:12:22: intents.move_right.coil: coil 0 is already claimed by intent move_left at Fixtures/maps/duplicate-coil.yaml:11:21"#),
        ("duplicate-key.yaml",
         #"Fixtures/maps/duplicate-key.yaml:11:3: duplicate key "move_left" in one mapping (each key may appear once)"#),
        ("status-without-operational.yaml",
         #"Fixtures/maps/status-without-operational.yaml:11:3: intents.move_left: allows status "operational" (the default), which status.values does not define (fault, running): say which statuses it allows with statuses: [...]"#),
    ])
    func fixtureReportsExactIssue(fixture: String, expected: String) throws {
        let (text, file) = try mapFixture(fixture)
        #expect(mapIssues(text, file: file) == [expected])
    }

    @Test func everyIssueOfAFileIsReported() throws {
        let (text, file) = try mapFixture("many-errors.yaml")
        let f = file
        #expect(mapIssues(text, file: file) == [
            "\(f):3:13: plc.host: invalid host \"10.0.0.256\" (expected an IPv4 address like 10.0.0.21, an IPv6 address or a host name)",
            "\(f):3:42: plc.unit: 250 is out of range (expected a unit id 0…247 or 255; 248…254 are reserved)",
            "\(f):3:47: plc.pol_ms: unknown key \"pol_ms\" (did you mean \"poll_ms\"?)",
            "\(f):4:24: limits.max_drift_ms: -5 is out of range (expected milliseconds > 0 and ≤ 3600000)",
            "\(f):7:9: status.type: the status register needs an integer type or bool, not float32",
            "\(f):10:24: registers[0].address: Modicon address \"20001\" must start with 0 (coil), 1 (discrete input), 3 (input register) or 4 (holding register)",
            "\(f):11:32: registers[1].bit: 16 is out of range (expected a bit number 0…15, 0 = least significant)",
            "\(f):12:59: registers[2].scale: scale applies only to numeric types (type is string)",
            "\(f):13:44: registers[3].tolerance: -1 is out of range (expected a number ≥ 0)",
            "\(f):15:14: intents.go.coil: 70000 is out of range (expected a coil address 0…65535)",
            "\(f):15:28: intents.go.latch: expected true or false, got \"yes\"",
            "\(f):15:47: intents.go.requires.a: needs at least one of min, max, eq, in",
        ])
    }

    @Test func valueFixtureParses() throws {
        let (text, file) = try mapFixture("valid-minimal.yaml")
        #expect(mapIssues(text, file: file) == [])
    }

    /// Smaller error cases, each one line of a valid map changed.
    @Test(arguments: [
        (("type: float32", "type: Float32"), #"m.yaml:8:44: registers[0].type: unknown type "Float32" (did you mean "float32"? expected one of: bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string)"#),
        (("order: CDAB", "order: cdab"), #"m.yaml:9:56: registers[1].order: unknown word order "cdab" (did you mean "CDAB"? expected one of: ABCD, CDAB, BADC, DCBA)"#),
        (("tolerance: 0.5", "tolerence: 0.5"), #"m.yaml:8:53: registers[0].tolerence: unknown key "tolerence" (did you mean "tolerance"?)"#),
        (("device: t-01", "device: t 01"), #"m.yaml:1:9: device: invalid device name "t 01" (expected 1…64 characters: letters, digits, _ - . starting with a letter or digit)"#),
        (("device: t-01", "device: t-01\nfoo: 1"), #"m.yaml:2:1: foo: unknown key "foo" (expected one of: device, description, profile, plc, limits, identity, status, registers, clock, twin_key, intents, allow_predicted, twin)"#),
        (("address: 100,", #"address: "100","#), #"m.yaml:8:33: registers[0].address: "100" is not an address (expected a 0-based address 0…65535, or a quoted 5- or 6-digit Modicon address like "40101"; write 0-based addresses unquoted)"#),
        (("address: 100,", "address: 0100,"), #"m.yaml:8:33: registers[0].address: 0100 has a leading zero: quote a Modicon address ("0100") or write the 0-based address without leading zeros"#),
        (("address: 100,", #"address: "40000","#), #"m.yaml:8:33: registers[0].address: Modicon address "40000" is out of range (40001…49999, 1-based)"#),
        (("address: 100,", "address: 65536,"), #"m.yaml:8:33: registers[0].address: 65536 is out of range (expected a 0-based address 0…65535, or a quoted 5- or 6-digit Modicon address like "40101")"#),
        (("tolerance: 0.5", "tolerance: .nan"), #"m.yaml:8:64: registers[0].tolerance: expected a number ≥ 0, got ".nan""#),
        (("tolerance: 0.5", #"tolerance: "0.5""#), #"m.yaml:8:64: registers[0].tolerance: expected a number ≥ 0, got "0.5""#),
        (("type: uint32, order: CDAB", "type: uint32, scale: 0"), #"m.yaml:9:56: registers[1].scale: scale must not be 0 (every reading would be the offset)"#),
        (("type: uint32, order: CDAB", "type: uint16, length: 2"), #"m.yaml:9:57: registers[1].length: length applies only to type string (type is uint16)"#),
        (("type: uint32, order: CDAB", "table: coil, type: int16"), #"m.yaml:9:54: registers[1].type: type int16 does not fit the coil table: coils and discrete inputs hold single bits (use bool or leave type out)"#),
        (("type: uint32, order: CDAB", "table: coil, bit: 2"), #"m.yaml:9:53: registers[1].bit: bit applies to 16-bit registers (holding or input), not to the coil table"#),
        (("type: uint32, order: CDAB", "bit: 2, order: CDAB"), #"m.yaml:9:50: registers[1].order: order does not apply to single bits and bool values"#),
        (("type: uint32, order: CDAB", "type: string, length: 2, tolerance: 1"), #"m.yaml:9:71: registers[1].tolerance: tolerance needs a numeric value; type string cannot be compared with a tolerance"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0, requires: {load_kg: {min: 10, max: 5}}}"), #"m.yaml:11:35: intents.move_left.requires.load_kg: min 10 is greater than max 5: no value can satisfy it"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0, requires: {load_kg: {in: []}}}"), #"m.yaml:11:49: intents.move_left.requires.load_kg.in: needs at least one value"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0, requires: {load_kg: {above: 3}}}"), #"m.yaml:11:45: intents.move_left.requires.load_kg.above: unknown key "above" (expected one of: min, max, eq, in)"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0, statuses: [operational, running]}"), #"m.yaml:11:48: intents.move_left.statuses[1]: status "running" is not one of status.values (fault, operational)"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0, statuses: []}"), #"m.yaml:11:34: intents.move_left.statuses: needs at least one status name"#),
        (("move_left: {coil: 0}", "move_left: {}"), #"m.yaml:11:14: intents.move_left.coil: missing required key "coil" (the interlock coil address 0…65535 that permits this intent)"#),
        (("intents:\n  move_left: {coil: 0}\n", "intents: {}\n"), #"m.yaml:10:10: intents: a device needs at least one intent (its permit coil is what the guard serves)"#),
        (("plc: {host: 127.0.0.1, port: 1502}", "plc: {host: 127.0.0.1, port: 1502, poll_ms: 200}"), #"m.yaml:3:45: plc.poll_ms: 200 is not below limits.max_age_ms (200): the physical state would go stale between polls (expected at most 100)"#),
        (("plc: {host: 127.0.0.1, port: 1502}", "plc: {port: 1502}"), #"m.yaml:3:6: plc.host: missing required key "host" (the PLC's IP address or host name, or serial: for a Modbus RTU device)"#),
        (("  values: {0: operational, 1: fault}", "  values: {0: operational, 0x0: fault}"), #"m.yaml:6:28: status.values.0x0: duplicate status code 0 (first at m.yaml:6:12)"#),
        (("  values: {0: operational, 1: fault}", "  values: {0: operational, 70000: fault}"), #"m.yaml:6:28: status.values.70000: code 70000 cannot be read from a uint16 status register"#),
        (("  address: 0\n", "  address: 102\n"), #"m.yaml:9:30: registers[1].address: holding 102…103 overlaps the status register (holding 102) at m.yaml:5:12"#),
        (("device: t-01", ""), #"m.yaml:2:1: device: missing required key "device" (the device name)"#),
        (("device: t-01", "device: t-01\n<<: {a: 1}"), #"m.yaml:2:1: <<: merge keys (<<) are not supported: write the keys out"#),
        (("port: 1502}", #"port: 1502, "port": 502}"#), #"m.yaml:3:24: duplicate key "port" in one mapping (each key may appear once)"#),
        (("move_left: {coil: 0}", "move_left: {coil: 0}\n  'move_left': {coil: 1}"), #"m.yaml:11:3: duplicate key "move_left" in one mapping (each key may appear once)"#),
    ] as [((String, String), String)])
    func oneChangeOneIssue(change: (String, String), expected: String) {
        #expect(mapIssues(minimalMap([change])) == [expected])
    }

    @Test func anEntryWithoutAddressIsStillChecked() {
        #expect(mapIssues(minimalMap([("{name: load_kg, address: 102, type: uint32, order: CDAB}", "{name: load_kg, type: unit32}")])) == [
            #"m.yaml:9:5: registers[1].address: missing required key "address" (a 0-based address, or a quoted Modicon address like "40101")"#,
            #"m.yaml:9:27: registers[1].type: unknown type "unit32" (expected one of: bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string)"#,
        ])
    }

    @Test func controlCharactersAreEscapedSoAnIssueIsOneLine() {
        #expect(mapIssues(minimalMap([("device: t-01", #"device: "t\n01\u0007""#)])) ==
            [#"m.yaml:1:9: device: invalid device name "t\n01\u{7}" (expected 1…64 characters: letters, digits, _ - . starting with a letter or digit)"#])
    }

    @Test func emptyAndNonMappingFiles() {
        #expect(mapIssues("") == ["m.yaml:1:1: empty map file (expected a mapping with device, profile, plc, status, registers, intents)"])
        #expect(mapIssues("# only a comment\n") == ["m.yaml:1:1: empty map file (expected a mapping with device, profile, plc, status, registers, intents)"])
        #expect(mapIssues("- a\n- b\n") == [#"m.yaml:1:1: expected a mapping (a register map: device, profile, plc, …), got a list"#])
        #expect(mapIssues("a: 1\n---\nb: 2\n").first?.hasPrefix("m.yaml:2:1: YAML syntax error: but found another document") == true)
    }

    @Test func bitEntriesOfDifferentBitsShareARegister() {
        let ok = minimalMap([("type: uint32, order: CDAB", "type: uint32, order: CDAB}\n  - {name: a, address: 7, bit: 0}\n  - {name: b, address: 7, bit: 1")])
        #expect(mapIssues(ok) == [])
        let same = minimalMap([("type: uint32, order: CDAB", "type: uint32, order: CDAB}\n  - {name: a, address: 7, bit: 3}\n  - {name: b, address: 7, bit: 3")])
        #expect(mapIssues(same) == [#"m.yaml:11:24: registers[3].address: holding 7 bit 3 overlaps "a" (holding 7 bit 3) at m.yaml:10:24"#])
        // Different tables never overlap.
        let tables = minimalMap([("type: uint32, order: CDAB", "type: uint32, order: CDAB}\n  - {name: a, address: 100, table: input")])
        #expect(mapIssues(tables) == [])
    }
}

@Suite("Register map model")
struct MapModelTests {
    @Test func minimalMapResolvesDefaults() throws {
        let m = try MapLoader.parse(yaml: minimalMap(), file: "maps/t.yaml")
        #expect(m.device == "t-01")
        #expect(m.profile == .port)
        #expect(m.plc == PLCEndpoint(host: "127.0.0.1", port: 1502, unit: 1, pollMs: 50, timeoutMs: 100, maxGap: 16))
        #expect(m.limits == Limits(maxDriftMs: 200, maxAgeMs: 200, maxSkewMs: 1000, rearmMs: 100))
        #expect(m.status?.register.table == .holding && m.status?.register.address == 0 && m.status?.register.type == .uint16)
        #expect(m.status?.values == [0: "operational", 1: "fault"])
        #expect(m.registers.map(\.name) == ["position_x", "load_kg"])
        #expect(m.registers[1].order == .CDAB && m.registers[1].type == .uint32 && m.registers[1].tolerance == nil)
        #expect(m.registers[0].tolerance == 0.5 && m.registers[0].location == SourceLocation(file: "maps/t.yaml", line: 8, column: 5))
        #expect(m.intents.count == 1)
        #expect(m.intents[0].name == "move_left" && m.intents[0].coil == 0 && m.intents[0].allowedStatuses == ["operational"])
        #expect(!m.intents[0].latch && m.intents[0].requires.isEmpty)
        #expect(!m.allowPredicted && m.twinKey == nil && m.clock == nil && m.identity.isEmpty)
        #expect(m.sourceFile == "maps/t.yaml")
        #expect(m.keyLocations["device"] == SourceLocation(file: "maps/t.yaml", line: 1, column: 9))
    }

    /// Without `limits`, every profile's drift becomes max_drift_ms and max_age_ms; poll and
    /// timeout derive from max_age_ms, rearm from poll.
    @Test(arguments: IndustryProfile.all)
    func profileDefaults(profile: IndustryProfile) throws {
        let m = try MapLoader.parse(yaml: minimalMap([("profile: port", "profile: \(profile.id.rawValue)")]), file: "m.yaml")
        let drift = Double(profile.maxDriftMs)
        #expect(m.profile == profile.id)
        #expect(m.limits.maxDriftMs == drift && m.limits.maxAgeMs == drift && m.limits.maxSkewMs == 1000)
        let poll = Int(min(max(drift / 4, 10), 1000).rounded())
        #expect(m.plc.pollMs == poll)
        #expect(m.plc.timeoutMs == Int(min(max(drift / 2, 50), 1000).rounded()))
        #expect(m.limits.rearmMs == Double(2 * poll))
        #expect(Double(m.plc.pollMs) < m.limits.maxAgeMs)
    }

    @Test func explicitLimitsWin() throws {
        let m = try MapLoader.parse(yaml: minimalMap([
            ("profile: port", "profile: steel\nlimits: {max_drift_ms: 250, max_age_ms: 120.5, max_skew_ms: 0, rearm_ms: 0}"),
            ("port: 1502}", "port: 1502, unit: 255, poll_ms: 30, timeout_ms: 45, max_gap: 0}"),
        ]), file: "m.yaml")
        #expect(m.limits == Limits(maxDriftMs: 250, maxAgeMs: 120.5, maxSkewMs: 0, rearmMs: 0))
        #expect(m.plc == PLCEndpoint(host: "127.0.0.1", port: 1502, unit: 255, pollMs: 30, timeoutMs: 45, maxGap: 0))
        let noRearm = try MapLoader.parse(yaml: minimalMap([("port: 1502}", "port: 1502, poll_ms: 70}")]), file: "m.yaml")
        #expect(noRearm.limits.rearmMs == 140)
    }

    @Test(arguments: [
        (#""40101""#, RegisterTable.holding, 100), (#""30005""#, .input, 4), (#""00001""#, .coil, 0),
        (#""10002""#, .discrete, 1), (#""49999""#, .holding, 9998), (#""400001""#, .holding, 0),
        (#""465536""#, .holding, 65535), (#""300101""#, .input, 100), ("'40001'", .holding, 0),
        ("40101", .holding, 40101), ("0", .holding, 0), ("0x10", .holding, 16),
    ] as [(String, RegisterTable, Int)])
    func modiconConversion(address: String, table: RegisterTable, expected: Int) throws {
        let m = try MapLoader.parse(yaml: minimalMap([("address: 100, type: float32, tolerance: 0.5", "address: \(address)"),
                                                       ("  address: 0\n", "  address: 5000\n")]), file: "m.yaml")
        #expect(m.registers[0].table == table)
        #expect(Int(m.registers[0].address) == expected)
        #expect(m.registers[0].type == (table.isBitTable ? .bool : .uint16))
    }

    @Test func modiconAgreesWithExplicitTable() throws {
        let m = try MapLoader.parse(yaml: minimalMap([("address: 100, type: float32", #"address: "30005", table: input, type: float32"#)]), file: "m.yaml")
        #expect(m.registers[0].table == .input && m.registers[0].address == 4)
    }

    @Test func registerFieldsAndRequirements() throws {
        let yaml = minimalMap([
            ("type: uint32, order: CDAB}", """
            type: uint32, order: CDAB}
              - {name: temp, address: 10, table: input, type: int16, scale: 0.1, offset: -40, unit: °C, tolerance: 1.5}
              - {name: locked, address: 7, bit: 15}
              - {name: fw, address: 20, type: string, length: 4, order: BADC}
              - {name: big, address: 30, type: int64, order: DCBA}
              - {name: door, address: "10003"}
            """),
            ("move_left: {coil: 0}", """
            move_left: {coil: 0}
              hoist:
                coil: 7
                latch: true
                statuses: [operational, fault]
                requires: {load_kg: {max: 40000, min: 0}, locked: {eq: false}, temp: {in: [1, 2.5, -3]}, door: {eq: true}}
            """),
        ])
        let m = try MapLoader.parse(yaml: yaml, file: "m.yaml")
        let temp = try #require(m.register(named: "temp"))
        #expect(temp.table == .input && temp.type == .int16 && temp.scale == 0.1 && temp.offset == -40)
        #expect(temp.unit == "°C" && temp.tolerance == 1.5)
        let locked = try #require(m.register(named: "locked"))
        #expect(locked.bit == 15 && locked.type == .bool && locked.table == .holding)
        let fw = try #require(m.register(named: "fw"))
        #expect(fw.type == .string && fw.length == 4 && fw.width == 4 && fw.order == .BADC)
        #expect(m.register(named: "big")?.order == .DCBA && m.register(named: "big")?.width == 4)
        #expect(m.register(named: "door")?.table == .discrete && m.register(named: "door")?.address == 2)
        let hoist = try #require(m.intent(named: "hoist"))
        #expect(hoist.coil == 7 && hoist.latch && hoist.allowedStatuses == ["operational", "fault"])
        #expect(hoist.requires.map(\.name) == ["load_kg", "locked", "temp", "door"])
        #expect(hoist.requires[0].max == 40000 && hoist.requires[0].min == 0)
        #expect(hoist.requires[1].eq == 0 && hoist.requires[3].eq == 1)
        #expect(hoist.requires[2].oneOf == [1, 2.5, -3])
        #expect(hoist.location == SourceLocation(file: "m.yaml", line: 17, column: 3))
    }

    @Test func identityExpectTakesTheDecodedValueCase() throws {
        let yaml = minimalMap([("status:", """
            identity:
              - {name: serial, address: 9000, type: uint32, expect: 4711}
              - {name: offset_id, address: 9002, type: int16, expect: -12}
              - {name: tool, address: 9003, type: string, length: 3, expect: "ETCH02"}
              - {name: flag, address: 9006, bit: 0, expect: 1}
              - {name: ratio, address: 9008, type: float32, expect: 1.1}
              - {name: huge, address: 9010, type: uint64, expect: 18446744073709551615}
            status:
            """)])
        let m = try MapLoader.parse(yaml: yaml, file: "m.yaml")
        #expect(m.identity.map(\.expect) == [.uint(4711), .int(-12), .string("ETCH02"), .bool(true),
                                              .double(Double(Float(1.1))), .uint(UInt64.max)])
        // What the decoder produces from the encoded expectation is what identity compares with.
        for id in m.identity {
            let words = RegisterDecoder.encode(id.expect, as: id.register)
            #expect(try RegisterDecoder.decode(id.register, words: words) == id.expect, "\(id.register.name)")
        }
        let bad = minimalMap([("status:", "identity:\n  - {name: s, address: 9000, type: uint16, expect: 70000}\n  - {name: t, address: 9001, type: string, length: 1, expect: abc}\n  - {name: u, address: 9002}\nstatus:")])
        #expect(mapIssues(bad) == [
            "m.yaml:5:52: identity[0].expect: 70000 is out of range (expected an integer 0…65535 (type uint16))",
            "m.yaml:6:63: identity[1].expect: \"abc\" is 3 bytes, longer than length 1 registers (2 bytes)",
            "m.yaml:7:5: identity[2].expect: missing required key \"expect\" (the value this register must read back)",
        ])
    }

    @Test func plcClockRegister() throws {
        let m = try MapLoader.parse(yaml: minimalMap([("intents:", "clock: {address: 500, type: uint64, unit: ms}\nintents:")]), file: "m.yaml")
        let clock = try #require(m.clock)
        #expect(clock.unit == .ms && clock.register.address == 500 && clock.register.type == .uint64 && clock.register.name == "clock")
        #expect(clock.wallNs(from: .uint(1_795_703_520_500)) == 1_795_703_520_500_000_000)
        #expect(PLCClock(register: clock.register, unit: .s).wallNs(from: .uint(1_795_703_520)) == 1_795_703_520_000_000_000)
        #expect(PLCClock(register: clock.register, unit: .s).wallNs(from: .double(1.5)) == 1_500_000_000)
        #expect(clock.wallNs(from: .int(-1)) == nil)
        #expect(clock.wallNs(from: .uint(UInt64.max)) == nil)
        #expect(PLCClock(register: clock.register, unit: .s).wallNs(from: .uint(10_000_000_000)) == nil)
        #expect(clock.wallNs(from: .double(.nan)) == nil)

        #expect(mapIssues(minimalMap([("intents:", "clock: {address: 500, type: uint16, unit: ms}\nintents:")])) ==
            ["m.yaml:10:29: clock.type: the clock needs one of: int32, uint32, int64, uint64, float64 (not uint16)"])
        #expect(mapIssues(minimalMap([("intents:", "clock: {address: 500, type: uint64}\nintents:")])) ==
            [#"m.yaml:10:8: clock.unit: missing required key "unit" (the clock's unit since the Unix epoch: s, ms, us or ns)"#])
        #expect(mapIssues(minimalMap([("intents:", "clock: {address: 101, type: uint64, unit: ms}\nintents:")])) ==
            [#"m.yaml:10:18: clock.address: holding 101…104 overlaps "position_x" (holding 100…101) at m.yaml:8:33"#])
    }

    @Test func topLevelOptions() throws {
        let m = try MapLoader.parse(yaml: minimalMap([("device: t-01", "device: t-01\ndescription: Crane 1\nallow_predicted: true\ntwin_key: keys/t.pub\nidentity: ~")]), file: "m.yaml")
        #expect(m.allowPredicted && m.twinKey == "keys/t.pub" && m.description == "Crane 1" && m.identity.isEmpty)
    }
}

@Suite("Example maps and cross-checks")
struct ExampleMapTests {
    static let exampleFiles = ["crane-01.yaml", "etch-tool-02.yaml", "hvac-ahu-03.yaml", "robot-cell-01.yaml",
                               "strip-mill-f3.yaml", "wind-turbine-07.yaml", "energy-meter-12.yaml",
                               "gateway-meter-21.yaml", "gateway-meter-22.yaml"]

    static func load(_ name: String) throws -> DeviceMap {
        let text = try String(contentsOf: packageRoot.appendingPathComponent("maps/\(name)"), encoding: .utf8)
        return try MapLoader.parse(yaml: text, file: "maps/\(name)")
    }

    @Test(arguments: exampleFiles)
    func exampleValidates(name: String) throws {
        let m = try Self.load(name)
        #expect(!m.intents.isEmpty && !m.registers.isEmpty)
        #expect(Double(m.plc.pollMs) < m.limits.maxAgeMs)
    }

    @Test func allSixTogetherPassCrossCheckAndCoverEveryProfile() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: packageRoot.appendingPathComponent("maps").path)
            .filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(names == Self.exampleFiles.sorted())
        let maps = try names.map(Self.load)
        try MapLoader.crossCheck(maps)
        #expect(Set(maps.map(\.profile)) == Set(ProfileID.allCases))
    }

    @Test func craneMatchesTheSpecScenario() throws {
        let m = try Self.load("crane-01.yaml")
        #expect(m.device == "crane-01" && m.profile == .port)
        #expect(m.plc.host == "127.0.0.1" && m.plc.port == 1502 && m.plc.pollMs == 50 && m.plc.timeoutMs == 100)
        #expect(m.limits == Limits(maxDriftMs: 200, maxAgeMs: 200, maxSkewMs: 1000, rearmMs: 100))
        #expect(m.identity.first?.expect == .uint(4711))
        #expect(m.status?.values == [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"])
        #expect(m.register(named: "wind_speed")?.table == .input && m.register(named: "wind_speed")?.address == 4)
        #expect(m.register(named: "hoist_locked")?.bit == 3)
        #expect(m.intent(named: "move_left")?.coil == 0 && m.intent(named: "hoist")?.coil == 1)
        #expect(m.intent(named: "hoist")?.requires.map(\.name) == ["load_kg", "hoist_locked"])
    }

    @Test func duplicateDevicesAndSharedCoilsAreNamedWithBothLocations() throws {
        let a = try MapLoader.parse(yaml: minimalMap(), file: "maps/a.yaml")
        let b = try MapLoader.parse(yaml: minimalMap([("move_left: {coil: 0}", "hoist: {coil: 5}")]), file: "maps/b.yaml")
        #expect(throws: MapErrors([MapIssue(location: SourceLocation(file: "maps/b.yaml", line: 1, column: 9), keyPath: "device",
                                            message: #"device "t-01" is also defined at maps/a.yaml:1:9 (device names must be unique)"#)])) {
            try MapLoader.crossCheck([a, b])
        }
        let c = try MapLoader.parse(yaml: minimalMap([("device: t-01", "device: t-02"), ("move_left: {coil: 0}", "move_right: {coil: 9}\n  hoist: {coil: 0}")]), file: "maps/c.yaml")
        do {
            try MapLoader.crossCheck([a, c])
            Issue.record("coil 0 claimed twice was accepted")
        } catch {
            #expect(error.issues.map(\.description) == [
                "maps/c.yaml:12:3: intents.hoist: coil 0 is already claimed by t-01.move_left at maps/a.yaml:11:3 (coils are one address space on the interlock)",
            ])
        }
        var d = c
        d.device = "t-03"
        d.intents = [IntentSpec(name: "x", coil: 40)]
        try MapLoader.crossCheck([a, d])
    }
}
