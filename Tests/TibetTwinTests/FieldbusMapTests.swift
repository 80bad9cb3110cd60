import Testing
@testable import TibetTwin

/// A meter map without a status word, on a serial line (the maps/ energy meter, shortened).
func meterMap(_ extraPLC: String = "", registers: String? = nil, status: String = "") -> String {
    """
    device: meter-07
    profile: building
    plc: {serial: /dev/ttyUSB0, baud: 19200, parity: E, unit: 7\(extraPLC)}
    \(status)registers:
    \(registers ?? """
      - {name: voltage_l1, address: "30001", type: float32, tolerance: 5}
      - {name: current_l1, address: "30007", type: float32, tolerance: 1}
    """)
    intents:
      energize: {coil: 40}

    """
}

@Suite("Maps without a status word")
struct DerivedStatusTests {
    @Test func statusIsOptionalAndDerived() throws {
        let map = try MapLoader.parse(yaml: meterMap(), file: "m.yaml")
        #expect(map.status == nil)
        #expect(map.statusDerived)
        #expect(map.statusNames == ["operational"])
        let plan = ReadPlan(map: map)
        #expect(!plan.items.contains { $0.role == .status })
        // Every reading good: operational, and the state says it is derived.
        let words = RegisterDecoder.encode(.double(230), as: map.registers[0])
            + [0, 0, 0, 0] + RegisterDecoder.encode(.double(5), as: map.registers[1])
        let good = plan.state(from: [.registers(words)], at: t0)
        #expect(good.status == "operational")
        #expect(good.statusQuality == .good)
        #expect(good.statusDerived)
        #expect(good.isAllGood)
        // A failed poll: no status at all (fail-safe), with the poll's quality.
        let bad = plan.state(from: [.failed(.badTimeout, "timeout")], at: t0)
        #expect(bad.status == nil)
        #expect(bad.statusQuality == .badTimeout)
        #expect(!bad.isAllGood)
        // A reading that does not decode (NaN) is not operational either.
        let nan = RegisterDecoder.encode(.double(.nan), as: map.registers[0]) + [0, 0, 0, 0]
            + RegisterDecoder.encode(.double(5), as: map.registers[1])
        let undecodable = plan.state(from: [.registers(nan)], at: t0)
        #expect(undecodable.status == nil)
        #expect(undecodable.statusQuality == .badDecode)
        #expect(plan.failedState(quality: .badComm, why: "x", at: t0).statusDerived)
    }

    @Test func guardBlocksWhenDerivedStatusIsUnknownAndTheAuditSaysDerived() throws {
        let map = try MapLoader.parse(yaml: meterMap(), file: "m.yaml")
        let plan = ReadPlan(map: map)
        var g = DeviceGuard(map: map)
        let twin = TwinState(device: map.device, tsNs: t0.wallNs, seq: 1, status: "operational",
                             values: ["voltage_l1": 230, "current_l1": 5], received: t0)
        g.updateTwin(twin)
        g.updatePhysical(plan.state(from: [.failed(.badTimeout, "timeout")], at: t0))
        g.evaluate(now: t0, auditOK: true)
        #expect(!g.verdict(intent: 0).permit)
        let d = g.decision(intent: 0)
        #expect(d.delta.physicalStatusDerived)
        #expect(d.json["delta"]?["physical_status_derived"] == .bool(true))
    }

    @Test func intentsMayOnlyAllowOperational() {
        let issues = mapIssues(meterMap().replacingOccurrences(of: "{coil: 40}", with: "{coil: 40, statuses: [running]}"))
        #expect(issues.count == 1)
        #expect(issues.first?.contains("status \"running\" is not one of status.values (operational)") == true)
    }
}

@Suite("Map language: request sizes, bytes, aliases, warnings")
struct MapLanguageTests {
    @Test func maxRegistersSplitsRequests() throws {
        let regs = (0..<20).map { "  - {name: r\($0), address: \($0 * 2), type: float32}" }.joined(separator: "\n")
        let map = try MapLoader.parse(yaml: meterMap(", max_registers: 10", registers: regs), file: "m.yaml")
        #expect(map.plc.maxRegisters == 10)
        let plan = ReadPlan(map: map)
        #expect(plan.groups.map(\.count) == [10, 10, 10, 10])
        #expect(plan.groups.allSatisfy { $0.count <= 10 })
    }

    @Test func maxBitsSplitsBitReads() throws {
        let regs = (0..<40).map { "  - {name: c\($0), table: coil, address: \($0)}" }.joined(separator: "\n")
        let map = try MapLoader.parse(yaml: meterMap(", max_bits: 16", registers: regs), file: "m.yaml")
        #expect(ReadPlan(map: map).groups.map(\.count) == [16, 16, 8])
    }

    @Test func aValueWiderThanMaxRegistersIsRefused() {
        let issues = mapIssues(meterMap(", max_registers: 1"))
        #expect(issues.count == 2)
        #expect(issues.first?.contains("\"voltage_l1\" is 2 registers, more than plc.max_registers (1) allows in one request") == true)
    }

    @Test func int8AndUint8AreOneByteOfARegister() throws {
        let regs = """
              - {name: hi, address: 10, type: int8, byte: high}
              - {name: lo, address: 10, type: uint8, byte: low, scale: 0.5}
            """
        let map = try MapLoader.parse(yaml: meterMap(registers: regs), file: "m.yaml")
        let hi = map.registers[0], lo = map.registers[1]
        #expect(hi.byte == .high && lo.byte == .low && hi.width == 1)
        #expect(try RegisterDecoder.decode(hi, words: [0xFE10]) == .int(-2))
        #expect(try RegisterDecoder.decode(lo, words: [0xFE10]) == .double(8))
        #expect(RegisterDecoder.encode(.int(-2), as: hi) == [0xFE00])
        #expect(RegisterDecoder.encode(.double(8), as: lo) == [0x0010])
        // One request reads both.
        #expect(ReadPlan(map: map).groups.count == 1)
    }

    @Test(arguments: [
        ("{name: x, address: 1, type: uint8}", "type uint8 needs byte: high (bits 15…8, sent first) or byte: low (bits 7…0)"),
        ("{name: x, address: 1, type: uint16, byte: low}", "byte applies only to types int8 and uint8 (type is uint16)"),
        ("{name: x, address: 1, type: int8, byte: middle}", "unknown byte (high = bits 15…8, low = bits 7…0) \"middle\""),
        ("{name: x, address: 1, type: int8, byte: low, order: CDAB}", "order does not apply to int8: say which byte with byte: high or byte: low"),
        ("{name: x, address: 1, type: float}", "unknown type \"float\": use float32"),
        ("{name: x, address: 1, type: int}", "unknown type \"int\": use int16"),
        ("{name: x, address: 1, type: word}", "unknown type \"word\": use uint16"),
        ("{name: x, address: 1, type: UINT8H}", "unknown type \"UINT8H\": use uint8 with byte: high"),
        ("{name: x, address: 1, type: Float32}", "unknown type \"Float32\" (did you mean \"float32\"?"),
    ])
    func entryErrors(entry: String, expected: String) {
        let issues = mapIssues(meterMap(registers: "  - \(entry)"))
        #expect(issues.count == 1)
        #expect(issues.first?.contains(expected) == true, "\(issues)")
    }

    @Test func twoBytesOfOneRegisterDoNotOverlapButTheSameByteDoes() {
        let same = """
              - {name: a, address: 10, type: int8, byte: high}
              - {name: b, address: 10, type: uint8, byte: high}
            """
        #expect(mapIssues(meterMap(registers: same)).first?.contains("overlaps \"a\"") == true)
    }

    @Test func unquotedModiconLookingAddressWarns() throws {
        let regs = "  - {name: v, address: 30001, table: input, type: float32}"
        let map = try MapLoader.parse(yaml: meterMap(registers: regs), file: "m.yaml")
        #expect(map.registers[0].address == 30001)
        #expect(map.warnings.count == 1)
        let w = map.warnings[0].description
        #expect(w.hasPrefix("m.yaml:5:24: "))
        #expect(w.contains("registers[0].address: 30001 looks like a Modicon address, but unquoted it is read as protocol address 30001 of the input table; if input 0 is meant, quote it (\"30001\") or write 0"))
        // Quoted, or a plain address that does not look like one: no warning.
        #expect(try MapLoader.parse(yaml: meterMap(), file: "m.yaml").warnings.isEmpty)
        let other = "  - {name: v, address: 30001, type: float32}"  // holding: 3 is not its prefix
        #expect(try MapLoader.parse(yaml: meterMap(registers: other), file: "m.yaml").warnings.isEmpty)
    }
}

@Suite("Serial links and link budgets")
struct SerialLinkTests {
    @Test func serialEndpointParses() throws {
        let map = try MapLoader.parse(yaml: meterMap(", data_bits: 8, stop_bits: 1, byte_timeout_ms: 20, rs485: true, rts: up, rts_delay_us: 500"), file: "m.yaml")
        let s = try #require(map.plc.serial)
        #expect(s.device == "/dev/ttyUSB0" && s.baud == 19200 && s.parity == .even && s.dataBits == 8 && s.stopBits == 1)
        #expect(s.rs485 && s.rts == .up && s.rtsDelayUs == 500)
        #expect(map.plc.unit == 7 && map.plc.byteTimeoutMs == 20 && map.plc.framing == .rtu)
        #expect(map.plc.linkName == "/dev/ttyUSB0")
        #expect(map.plc.linkKey == "serial:/dev/ttyUSB0")
    }

    @Test(arguments: [
        (", host: 10.0.0.1", "plc.host: give either host (Modbus/TCP) or serial (Modbus RTU), not both"),
        (", port: 502", "plc.port: port applies to TCP links (host:), not to a serial port"),
        (", stop_bits: 3", "plc.stop_bits: 3 is out of range"),
        (", rts_delay_us: 100", "plc.rts_delay_us: rts_delay_us needs rts: up or rts: down"),
    ])
    func serialErrors(extra: String, expected: String) {
        let issues = mapIssues(meterMap(extra))
        #expect(issues.count == 1)
        #expect(issues.first?.contains(expected) == true, "\(issues)")
    }

    @Test func badParityAndBaud() {
        let text = meterMap().replacingOccurrences(of: "baud: 19200, parity: E", with: "baud: 12, parity: X")
        #expect(mapIssues(text) == [
            "m.yaml:3:35: plc.baud: 12 is out of range (expected a baud rate 300…4000000, e.g. 9600, 19200, 115200)",
            "m.yaml:3:47: plc.parity: unknown parity \"X\" (expected N, E or O: none, even, odd)",
        ])
    }

    @Test func serialUnitZeroIsRefusedAndTCPKeysNeedHost() {
        #expect(mapIssues(meterMap().replacingOccurrences(of: "unit: 7", with: "unit: 0")).first?.contains("plc.unit") == true)
        let tcp = minimalMap([("port: 1502}", "port: 1502, baud: 9600}")])
        #expect(mapIssues(tcp).first?.contains("plc.baud: baud applies to a serial port (serial: /dev/…), not to a TCP link") == true)
    }

    func meters(_ n: Int, baud: Int, pollMs: Int) throws -> [DeviceMap] {
        try (1...n).map { i in
            var text = meterMap().replacingOccurrences(of: "unit: 7", with: "unit: \(i), poll_ms: \(pollMs)")
                .replacingOccurrences(of: "baud: 19200", with: "baud: \(baud)")
                .replacingOccurrences(of: "meter-07", with: "meter-\(i)")
                .replacingOccurrences(of: "coil: 40", with: "coil: \(i)")
            text = text.replacingOccurrences(of: "profile: building", with: "profile: building\nlimits: {max_drift_ms: 5000}")
            return try MapLoader.parse(yaml: text, file: "meter-\(i).yaml")
        }
    }

    @Test func serialBudgetFromBaudAndFrames() throws {
        // One request of 8 registers (30001…30008): 8 + 5 + 16 = 29 characters of 11 bits at
        // 19200 baud = 16.6 ms, plus two t3.5 gaps of 2.0 ms each = 20.6 ms.
        let maps = try meters(8, baud: 19200, pollMs: 1000)
        let plan = ReadPlan(map: maps[0])
        #expect(plan.groups.count == 1)
        let t = LinkBudget.requestSeconds(plan.groups[0], serial: maps[0].plc.serial!)
        #expect(abs(t - (29 * 11.0 / 19200 + 2 * 3.5 * 11 / 19200)) < 1e-9)
        let budget = LinkBudget(maps: maps)
        #expect(budget.links.count == 1)
        let link = budget.links[0]
        #expect(link.devices.count == 8 && link.fits)
        #expect(abs(link.load! - 8 * t) < 1e-9)
        #expect(link.summary.hasPrefix("link /dev/ttyUSB0 19200 8E1: 8 devices, 8.0 requests/s, busy 16.5 % (fits)"))
        try MapLoader.crossCheck(maps)
    }

    @Test func overBudgetSerialLinkIsRefusedSayingByHowMuch() throws {
        // 8 meters every 100 ms at 9600 baud: 8 × 10 × 41.2 ms = 3.3 s per second.
        let maps = try meters(8, baud: 9600, pollMs: 100)
        let budget = LinkBudget(maps: maps)
        #expect(!budget.links[0].fits)
        #expect(throws: MapErrors.self) { try MapLoader.crossCheck(maps) }
        let issue = try #require(budget.issues.first)
        #expect(issue.description.contains("link /dev/ttyUSB0 9600 8E1 cannot carry its polls: 8 devices (meter-1, meter-2, meter-3, meter-4, meter-5, meter-6, meter-7, meter-8) need 3300 ms of link time per second, 230 % more than it has; poll at least 3.3 × less often (multiply every poll_ms on it by 3.3)"), "\(issue)")
    }

    @Test func tcpLinkLoadNeedsAMeasuredRoundTrip() throws {
        func tcpMap(_ i: Int, rtt: String) throws -> DeviceMap {
            try MapLoader.parse(yaml: minimalMap([("port: 1502}", "port: 1502, unit: \(i), poll_ms: 20\(rtt)}"),
                                                 ("t-01", "t-\(i)"), ("coil: 0", "coil: \(i)")]), file: "t\(i).yaml")
        }
        let unknown = LinkBudget(maps: try (1...4).map { try tcpMap($0, rtt: "") })
        #expect(unknown.links[0].load == nil)
        #expect(unknown.links[0].summary.contains("load cannot be computed: no plc.rtt_ms"))
        #expect(unknown.issues.isEmpty)
        // Two requests per poll (holding 0 and 100…103 are 96 apart), 4 devices at 50/s, 3 ms each: 120 %.
        let over = LinkBudget(maps: try (1...4).map { try tcpMap($0, rtt: ", rtt_ms: 3") })
        #expect(abs(over.links[0].load! - 1.2) < 1e-9)
        #expect(over.issues.count == 1)
    }

    @Test func mapsOnOnePortMustAgreeOnItsSettings() throws {
        var maps = try meters(2, baud: 19200, pollMs: 1000)
        maps[1].plc.serial!.baud = 9600
        #expect(MapLoader.linkIssues(maps).first?.message.contains("/dev/ttyUSB0 is set to 9600 8E1 here but to 19200 8E1 by meter-1") == true)
    }
}
