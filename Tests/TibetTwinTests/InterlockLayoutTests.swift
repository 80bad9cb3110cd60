import Testing
@testable import TibetTwin

/// A map with just what the layout looks at: a device name and its intents' coils.
func layoutMap(_ device: String, _ intents: [(String, UInt16)]) -> DeviceMap {
    DeviceMap(
        device: device, profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
        registers: [], intents: intents.map { IntentSpec(name: $0.0, coil: $0.1) })
}

@Suite("Interlock layout")
struct InterlockLayoutTests {
    let maps = [
        layoutMap("crane-01", [("hoist", 1), ("move_left", 0)]),
        layoutMap("robot-07", [("weld", 16)]),
    ]

    @Test func placesCoilsAndDeviceBlocks() throws {
        let layout = try InterlockLayout(maps: maps)
        #expect(layout.coilCount == 17)
        #expect(layout.registerCount == 16 + 2 * 8)
        #expect(layout.devices.map(\.name) == ["crane-01", "robot-07"])
        #expect(layout.devices.map(\.registerBase) == [16, 24])
        // Permit bits follow coil order, not the order the intents were written in.
        let crane = try #require(layout.device(named: "crane-01"))
        #expect(crane.intents.map(\.name) == ["move_left", "hoist"])
        #expect(crane.intents.map(\.bit) == [0, 1])
        #expect(crane.intents.map(\.coil) == [0, 1])
    }

    @Test func noDevicesStillServesTheGlobalRegisters() throws {
        let layout = try InterlockLayout(maps: [])
        #expect(layout.coilCount == 0)
        #expect(layout.registerCount == 16)
        let table = PermitTable.allBlocked(layout: layout)
        #expect(table.bits.isEmpty)
        #expect(table.registers.count == 16)
        #expect(table.registers[2] == 0)
    }

    @Test func rejectsACoilClaimedTwice() {
        #expect {
            try InterlockLayout(maps: [layoutMap("a", [("x", 3)]), layoutMap("b", [("y", 3)])])
        } throws: { error in
            guard let e = error as? InterlockLayoutError else { return false }
            return e.kind == .duplicateCoil && e.coil == 3 && e.description.contains("a.x") && e.description.contains("b.y")
        }
    }

    @Test func rejectsADeviceTwiceAndMoreThan16Intents() {
        #expect(throws: InterlockLayoutError.self) {
            try InterlockLayout(maps: [layoutMap("a", [("x", 1)]), layoutMap("a", [("y", 2)])])
        }
        let many = (0..<17).map { ("i\($0)", UInt16($0)) }
        #expect {
            try InterlockLayout(maps: [layoutMap("big", many)])
        } throws: { ($0 as? InterlockLayoutError)?.kind == .tooManyIntents }
        #expect(throws: Never.self) { try InterlockLayout(maps: [layoutMap("big", Array(many.prefix(16)))]) }
    }

    @Test(arguments: [
        (RegisterTable.coil, UInt16(0), "00001"), (.discrete, 0, "10001"), (.input, 4, "30005"),
        (.holding, 100, "40101"), (.holding, 9998, "49999"), (.holding, 9999, "410000"),
        (.coil, 65535, "065536"),
    ])
    func modiconNotation(_ table: RegisterTable, _ address: UInt16, _ expected: String) {
        #expect(InterlockLayout.modicon(table: table, address: address) == expected)
    }

    @Test func rowsListEveryMeaningfulAddressWithMirrors() throws {
        let layout = try InterlockLayout(maps: maps)
        let rows = layout.rows
        let coils = rows.filter { $0.table == .coil }
        #expect(coils.map(\.address) == [0, 1, 16])
        #expect(coils.map(\.intent) == ["move_left", "hoist", "weld"])
        #expect(rows.filter { $0.table == .discrete }.map(\.address) == [0, 1, 16])
        let inputs = rows.filter { $0.table == .input }
        let holding = rows.filter { $0.table == .holding }
        #expect(inputs.map(\.address) == holding.map(\.address))
        #expect(inputs.map(\.address) == [0, 1, 2] + Array(16...21) + Array(24...29))
        let permitBits = try #require(inputs.first { $0.address == 20 })
        #expect(permitBits.device == "crane-01")
        #expect(permitBits.meaning == "permit bits: bit 0 move_left, bit 1 hoist")
        #expect(inputs.first { $0.address == 24 }?.meaning.hasPrefix("reason code") == true)
    }

    @Test func csvHasAHeaderAndQuotesCommas() throws {
        let layout = try InterlockLayout(maps: maps)
        let lines = layout.csv().split(separator: "\n").map(String.init)
        #expect(lines.first == "device,intent,table,address,modicon,meaning")
        #expect(lines.count == 1 + layout.rows.count)
        #expect(lines.contains(#"crane-01,move_left,coil,0,00001,"permit crane-01.move_left: 1 = permit, 0 = inhibit""#))
        #expect(lines.contains(",,input,0,30001,\"heartbeat: +1 every evaluation tick, wraps at 65535\""))
    }

    @Test func textIsAlignedWithAHeader() throws {
        let text = try InterlockLayout(maps: maps).text()
        let lines = text.split(separator: "\n")
        #expect(lines.first?.hasPrefix("DEVICE") == true)
        let header = Array(lines.first!)
        let column = try #require((0..<header.count).first { String(header[$0...].prefix(7)) == "MODICON" })
        for line in lines.dropFirst() {
            let cell = line.dropFirst(column).prefix(5)
            let numeric = cell.allSatisfy { $0.isNumber }
            #expect(numeric, "modicon column misaligned in: \(line)")
        }
    }
}

@Suite("Permit table")
struct PermitTableTests {
    let layout = try! InterlockLayout(maps: [
        layoutMap("crane-01", [("move_left", 0), ("hoist", 1)]),
        layoutMap("robot-07", [("weld", 16)]),
    ])

    @Test func allBlockedServesZerosAndNotEvaluated() {
        let t = PermitTable.allBlocked(layout: layout)
        #expect(t.bits == [UInt8](repeating: 0, count: 17))
        #expect(!t.anyPermit)
        #expect(t.heartbeat == 0)
        #expect(!t.healthy)
        #expect(t.registers[2] == 2)
        #expect(t.registers[16] == 0xFFFF)
        #expect(t.registers[24] == 0xFFFF)
        #expect(t.registers[20] == 0)
    }

    @Test func encodesPermitsAndDiagnostics() {
        let t = PermitTable(layout: layout, heartbeat: 41, healthy: true, devices: [
            "crane-01": DeviceDiagnostics(reason: .ok, driftMs: 12.4, physicalAgeMs: 30.6, twinAgeMs: 99_999,
                                          permits: ["hoist", "no_such_intent"], blockCount: 70_000),
            "robot-07": DeviceDiagnostics(reason: .drift, driftMs: .nan, physicalAgeMs: -3, twinAgeMs: nil,
                                          permits: [], blockCount: 2),
        ])
        #expect(t.bits[0] == 0)
        #expect(t.bits[1] == 1)
        #expect(t.bits[16] == 0)
        #expect(t.bits.filter { $0 == 1 }.count == 1)
        #expect(t.permit(device: "crane-01", intent: "hoist") == true)
        #expect(t.permit(device: "crane-01", intent: "move_left") == false)
        #expect(t.permit(device: "crane-01", intent: "nope") == nil)
        #expect(Array(t.registers[0..<3]) == [41, 1, 2])
        #expect(Array(t.registers[16..<24]) == [0, 12, 31, 65534, 0b10, UInt16(70_000 & 0xFFFF), 0, 0])
        #expect(Array(t.registers[24..<32]) == [5, 0xFFFF, 0, 0xFFFF, 0, 2, 0, 0])
    }

    @Test func aDeviceNotEvaluatedNeverPermits() {
        let t = PermitTable(layout: layout, heartbeat: 1, healthy: true, devices: [
            "crane-01": DeviceDiagnostics(reason: nil, permits: ["move_left", "hoist"], blockCount: 3),
        ])
        #expect(!t.anyPermit)
        #expect(t.registers[16] == 0xFFFF)
        #expect(t.registers[20] == 0)
        #expect(t.registers[21] == 3)
        // robot-07 is missing altogether: not evaluated, no permit.
        #expect(t.registers[24] == 0xFFFF)
    }

    @Test func blockingAllKeepsHeartbeatAndDropsEveryPermit() {
        let t = PermitTable(layout: layout, heartbeat: 7, healthy: true, devices: [
            "crane-01": DeviceDiagnostics(reason: .ok, driftMs: 5, permits: ["move_left", "hoist"]),
            "robot-07": DeviceDiagnostics(reason: .ok, permits: ["weld"]),
        ])
        #expect(t.bits.filter { $0 == 1 }.count == 3)
        let z = t.blockingAll()
        #expect(!z.anyPermit)
        #expect(z.heartbeat == 7)
        #expect(!z.healthy)
        #expect(z.registers[16] == 0xFFFF && z.registers[24] == 0xFFFF)
        #expect(z.registers[20] == 0 && z.registers[28] == 0)
        #expect(z.registers[17] == 5)
        #expect(z.bits.count == t.bits.count)
    }
}
