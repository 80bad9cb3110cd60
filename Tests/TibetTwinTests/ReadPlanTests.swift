import Testing
@testable import TibetTwin

/// A crane-like map built in code (docs/register-maps.md example).
func craneMap(maxGap: Int = 16, identityExpect: Value = .uint(4711)) -> DeviceMap {
    DeviceMap(
        device: "crane-01", profile: .port,
        plc: PLCEndpoint(host: "127.0.0.1", port: 1502, unit: 1, pollMs: 50, timeoutMs: 100, maxGap: maxGap),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        identity: [IdentitySpec(register: RegisterSpec(name: "serial", address: 9000, type: .uint32), expect: identityExpect)],
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                           values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
        registers: [
            RegisterSpec(name: "position_x", address: 100, type: .float32, unit: "m", tolerance: 0.5),
            RegisterSpec(name: "load_kg", address: 102, type: .uint32, order: .CDAB, unit: "kg", tolerance: 100),
            RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
            RegisterSpec(name: "wind_speed", table: .input, address: 4, type: .int16, scale: 0.1, unit: "m/s"),
        ],
        intents: [IntentSpec(name: "move_left", coil: 0)])
}

let t0 = ClockReading(monotonicNs: 5_000_000_000, wallNs: 1_790_000_000_000_000_000)

@Suite("Read planning")
struct ReadPlanTests {
    @Test func groupsPerTableWithinGapAndLimits() {
        let plan = ReadPlan(map: craneMap())
        // holding: 0 and 7 (gap 6 ≤ 16) together; 100…103 apart (gap 92); 9000 alone; input 4 alone.
        let shape = plan.groups.map { "\($0.table.rawValue) \($0.address)+\($0.count)" }
        #expect(shape == ["holding 0+8", "holding 100+4", "holding 9000+2", "input 4+1"])
    }

    @Test func gapZeroReadsOnlyContiguousRuns() {
        let plan = ReadPlan(map: craneMap(maxGap: 0))
        #expect(plan.groups.map(\.count) == [1, 1, 4, 2, 1])
    }

    @Test func largeGapMergesUpToTheProtocolLimit() {
        // Registers every 10 addresses from 0 to 300: with max_gap 16 they chain, but no
        // request may exceed 125 registers.
        var map = craneMap()
        map.registers = (0...30).map { RegisterSpec(name: "r\($0)", address: UInt16(1000 + 10 * $0)) }
        let plan = ReadPlan(map: map)
        let holding = plan.groups.filter { $0.table == .holding && (1000..<9000).contains($0.address) }
        #expect(holding.allSatisfy { $0.count <= ReadPlan.maxRegistersPerRead })
        #expect(holding.count == 3)
        let covered = Set(holding.flatMap { g in g.items.map { plan.items[$0].spec.name } })
        #expect(covered.count == 31)
    }

    @Test func bitTablesGroupUpTo2000Bits() {
        var map = craneMap()
        map.registers = (0..<30).map { RegisterSpec(name: "c\($0)", table: .coil, address: UInt16($0 * 100)) }
        let plan = ReadPlan(map: map)
        let coils = plan.groups.filter { $0.table == .coil }
        // Gap 99 bits ≤ 16 × 16 = 256: chained, split only at the 2000-bit limit.
        #expect(coils.map(\.count) == [1901, 901])
        #expect(coils.allSatisfy { $0.count <= ReadPlan.maxBitsPerRead })
    }

    @Test func splitAtTheWidestHoleAndRemember() {
        var plan = ReadPlan(map: craneMap())
        // holding 0+8 covers status (0) and hoist_locked (7): split at the hole 1…6.
        let r = plan.split(groupAt: 0)
        #expect(r == 0..<2)
        #expect(plan.groups.prefix(2).map { "\($0.address)+\($0.count)" } == ["0+1", "7+1"])
        #expect(plan.splits == 1)
        // A single item cannot be split further.
        #expect(plan.split(groupAt: 0) == nil)
        // Contiguous items split in the middle.
        let k = plan.groups.firstIndex { $0.address == 100 }!
        #expect(plan.split(groupAt: k) == k..<(k + 2))
        #expect(plan.groups[k].count == 2 && plan.groups[k + 1].address == 102)
    }

    @Test func bitsOfOneRegisterCannotBeSplit() {
        var map = craneMap()
        map.registers = [RegisterSpec(name: "a", address: 7, bit: 0), RegisterSpec(name: "b", address: 7, bit: 1)]
        map.status = StatusSpec(register: RegisterSpec(name: "status", address: 7), values: [0: "operational"])
        map.identity = []
        var plan = ReadPlan(map: map)
        #expect(plan.groups.count == 1)
        #expect(plan.split(groupAt: 0) == nil)
    }

    /// Registers of the crane map holding these values, group by group.
    func answers(_ plan: ReadPlan, position: Float = 12.5, load: UInt32 = 2500, locked: Bool = true,
                 wind: Int16 = 73, status: UInt16 = 0, serial: UInt32 = 4711) -> [ReadPlan.GroupResult] {
        var regs: [Int: UInt16] = [0: status, 7: locked ? 0b1000 : 0, 9000: UInt16(serial >> 16), 9001: UInt16(serial & 0xFFFF)]
        let p = position.bitPattern
        regs[100] = UInt16(p >> 16); regs[101] = UInt16(p & 0xFFFF)
        regs[102] = UInt16(load & 0xFFFF); regs[103] = UInt16(load >> 16)  // CDAB
        return plan.groups.map { g in
            if g.table == .input { return .registers([UInt16(bitPattern: wind)]) }
            return .registers((0..<g.count).map { regs[Int(g.address) + $0] ?? 0 })
        }
    }

    @Test func decodesAGoodPoll() {
        let plan = ReadPlan(map: craneMap())
        let s = plan.state(from: answers(plan), at: t0)
        #expect(s.pollError == nil)
        #expect(s.isAllGood)
        #expect(s.status == "operational" && s.statusRaw == 0)
        #expect(s.identity == .ok)
        #expect(s.values["position_x"] == Reading(value: .double(12.5), quality: .good))
        #expect(s.values["load_kg"] == Reading(value: .uint(2500), quality: .good))
        #expect(s.values["hoist_locked"] == Reading(value: .bool(true), quality: .good))
        #expect(s.values["wind_speed"]?.value?.number.map { ($0 - 7.3).magnitude < 1e-9 } == true)
        #expect(s.time == t0)
    }

    @Test func failedGroupMakesItsValuesBadAndSetsPollError() {
        let plan = ReadPlan(map: craneMap())
        var r = answers(plan)
        let k = plan.groups.firstIndex { $0.address == 100 }!
        r[k] = .failed(.badTimeout, "timeout")
        let s = plan.state(from: r, at: t0)
        #expect(s.pollError == "timeout")
        #expect(!s.isAllGood)
        #expect(s.values["position_x"] == Reading(value: nil, quality: .badTimeout))
        #expect(s.values["load_kg"] == Reading(value: nil, quality: .badTimeout))
        #expect(s.values["hoist_locked"]?.quality == .good)
        #expect(s.status == "operational")
    }

    @Test func exceptionQualityCarriesTheCode() {
        let plan = ReadPlan(map: craneMap())
        let r = plan.groups.map { _ in ReadPlan.GroupResult.failed(.badException(4), "exception 4") }
        let s = plan.state(from: r, at: t0)
        #expect(s.values.values.allSatisfy { $0.quality == .badException(4) && $0.value == nil })
        #expect(s.statusQuality == .badException(4))
        #expect(s.status == nil)
        #expect(s.identity == .unknown)
    }

    @Test func unmappedStatusCodeIsBadDecode() {
        let plan = ReadPlan(map: craneMap())
        let s = plan.state(from: answers(plan, status: 9), at: t0)
        #expect(s.status == nil)
        #expect(s.statusRaw == 9)
        #expect(s.statusQuality == .badDecode)
        #expect(s.pollError?.contains("status code 9") == true)
        #expect(!s.isAllGood)
    }

    @Test(arguments: [(UInt32(4711), IdentityResult.ok), (UInt32(42), .mismatch(register: "serial", expected: "4711", got: "42"))])
    func identityIsChecked(serial: UInt32, expected: IdentityResult) {
        let plan = ReadPlan(map: craneMap())
        let s = plan.state(from: answers(plan, serial: serial), at: t0)
        #expect(s.identity == expected)
    }

    @Test func identityExpectedAsSignedIntegerMatchesUnsignedRead() {
        let plan = ReadPlan(map: craneMap(identityExpect: .int(4711)))
        #expect(plan.state(from: answers(plan), at: t0).identity == .ok)
    }

    @Test func nonFiniteFloatIsBadDecode() {
        let plan = ReadPlan(map: craneMap())
        let s = plan.state(from: answers(plan, position: .nan), at: t0)
        #expect(s.values["position_x"] == Reading(value: nil, quality: .badDecode))
        #expect(s.pollError != nil)
    }

    @Test func failedStateHasEveryValueBad() {
        let plan = ReadPlan(map: craneMap())
        let s = plan.failedState(quality: .badComm, why: "connect failed", at: t0)
        #expect(s.values.count == 4)
        #expect(s.values.values.allSatisfy { $0 == Reading(value: nil, quality: .badComm) })
        #expect(s.identity == .unknown && s.status == nil && s.pollError == "connect failed")
    }

    @Test func missingResultsCountAsUnread() {
        let plan = ReadPlan(map: craneMap())
        let s = plan.state(from: [], at: t0)
        #expect(!s.isAllGood)
        #expect(s.values.values.allSatisfy { !$0.quality.isGood })
    }

    @Test func readJSONHasTheShapeOfSpec6() throws {
        let map = craneMap()
        let plan = ReadPlan(map: map)
        let s = plan.state(from: answers(plan), at: t0)
        let j = ReadReport.json(s, map: map)
        #expect(j["device"] == "crane-01")
        #expect(j["status"] == "operational")
        #expect(j["identity"] == "ok")
        #expect(j["time"]?.stringValue.flatMap(RFC3339.parse) == t0.wallNs)
        #expect(j["values"]?["position_x"] == ["value": 12.5, "unit": "m", "quality": "good"])
        #expect(j["values"]?["load_kg"]?["value"] == .int(2500))
        #expect(j["values"]?["hoist_locked"]?["value"] == .bool(true))
        #expect(j["poll_error"] == .null)
        let text = ReadReport.text(s, map: map)
        #expect(text.contains("position_x") && text.contains("status: operational (0)"))
    }

    @Test func clockRegisterIsReadAndBecomesPLCTime() {
        var map = craneMap()
        map.clock = PLCClock(register: RegisterSpec(name: "clock", address: 500, type: .uint64), unit: .ms)
        let plan = ReadPlan(map: map)
        #expect(plan.groups.contains { $0.address == 500 && $0.count == 4 })
        let ms: UInt64 = 1_790_000_000_123
        func results(_ clockWords: [UInt16]) -> [ReadPlan.GroupResult] {
            let base = answers(ReadPlan(map: craneMap()))
            return plan.groups.map { g in
                if g.address == 500 { return .registers(clockWords) }
                let k = ReadPlan(map: craneMap()).groups.firstIndex { $0.table == g.table && $0.address == g.address }!
                return base[k]
            }
        }
        let words = (0..<4).map { UInt16(truncatingIfNeeded: ms >> (16 * UInt64(3 - $0))) }
        let s = plan.state(from: results(words), at: t0)
        #expect(s.pollError == nil)
        #expect(s.plcWallNs == Int64(ms) * 1_000_000)
        #expect(s.physicalWallNs == Int64(ms) * 1_000_000)
        // A clock beyond the Int64 nanosecond range is not a time: the state is bad.
        let bad = plan.state(from: results([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]), at: t0)
        #expect(bad.plcWallNs == nil)
        #expect(bad.pollError?.contains("clock") == true)
        #expect(!bad.isAllGood)
    }
}
