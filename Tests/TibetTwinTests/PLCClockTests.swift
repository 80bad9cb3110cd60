import Testing
@testable import TibetTwin

/// The PLC clock register (`clock:` in a map) from the map through the read plan to
/// `PhysicalState.plcWallNs`, the physical time drift is measured with.
@Suite("PLC clock register")
struct PLCClockTests {
    static func map(clock: String) throws -> DeviceMap {
        try MapLoader.parse(yaml: minimalMap([("intents:", "clock: \(clock)\nintents:")]), file: "m.yaml")
    }

    @Test func readPlanReadsTheClockAndSetsPlcWallNs() throws {
        let map = try Self.map(clock: "{address: 200, type: uint64, unit: ms}")
        let plan = ReadPlan(map: map)
        #expect(plan.items.contains { $0.role == .clock && $0.spec.address == 200 && $0.spec.width == 4 })
        let clock = try #require(map.clock)
        let plcNs: Int64 = 1_795_703_520_500_000_000
        let at = ClockReading(monotonicNs: 5, wallNs: plcNs + 40_000_000)
        let results: [ReadPlan.GroupResult] = plan.groups.map { g in
            var words = [UInt16](repeating: 0, count: g.count)
            for ii in g.items where plan.items[ii].role == .clock {
                let off = Int(plan.items[ii].spec.address) - Int(g.address)
                let enc = RegisterDecoder.encode(clock.value(wallNs: plcNs), as: clock.register)
                words.replaceSubrange(off..<(off + enc.count), with: enc)
            }
            return .registers(words)
        }
        let state = plan.state(from: results, at: at)
        #expect(state.pollError == nil)
        #expect(state.plcWallNs == plcNs)
        #expect(state.physicalWallNs == plcNs)  // drift uses the PLC's time, not the arrival time
        #expect(state.time == at)
    }

    @Test func aClockThatDoesNotConvertFailsThePoll() throws {
        let map = try Self.map(clock: "{address: 200, type: int64, unit: s}")
        let plan = ReadPlan(map: map)
        // -1 s since 1970: not a time; the state must not pass as all good.
        let results: [ReadPlan.GroupResult] = plan.groups.map { g in
            var words = [UInt16](repeating: 0, count: g.count)
            for ii in g.items where plan.items[ii].role == .clock {
                let off = Int(plan.items[ii].spec.address) - Int(g.address)
                words.replaceSubrange(off..<(off + 4), with: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF])
            }
            return .registers(words)
        }
        let state = plan.state(from: results, at: ClockReading(monotonicNs: 1, wallNs: 1))
        #expect(state.plcWallNs == nil)
        #expect(!state.isAllGood)
        #expect(state.pollError?.contains("clock register clock: -1 is not a time") == true)
    }

    @Test func withoutAClockNothingChanges() throws {
        let map = try MapLoader.parse(yaml: minimalMap(), file: "m.yaml")
        #expect(!ReadPlan(map: map).items.contains { $0.role == .clock })
    }

    @Test(arguments: [("uint64", PLCClockUnit.ms), ("int64", .ns), ("uint32", .s), ("int32", .s), ("float64", .s), ("uint64", .us)])
    func valueAndWallNsAreInverse(type: String, unit: PLCClockUnit) throws {
        let map = try Self.map(clock: "{address: 200, type: \(type), unit: \(unit.rawValue)}")
        let clock = try #require(map.clock)
        let ns: Int64 = 1_795_703_520_000_000_000  // whole seconds: exact in every unit and type
        let words = RegisterDecoder.encode(clock.value(wallNs: ns), as: clock.register)
        let decoded = try RegisterDecoder.decode(clock.register, words: words)
        #expect(clock.wallNs(from: decoded) == ns)
    }
}
