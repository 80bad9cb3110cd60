import Foundation
import Synchronization
import InMemoryLogging
import Logging
import Testing
import TibetTwin
@testable import Appliance
import Commissioning
import TestSupport

/// The registers pymodbus must hold so that `map` decodes to `values` (status code `status`,
/// identity as expected), as a pymodbus_plc.py spec.
func pymodbusSpec(map: DeviceMap, values: [String: Value], status: Int64 = 0, sparse: Bool = false, port: Int = 0) -> String {
    var tables: [String: [Int: Int]] = [:]
    func put(_ spec: RegisterSpec, _ v: Value) {
        let t = spec.table.rawValue
        if let bit = spec.bit {
            var word = tables[t]?[Int(spec.address)] ?? 0
            word = (v.number ?? 0) != 0 ? word | (1 << bit) : word & ~(1 << bit)
            tables[t, default: [:]][Int(spec.address)] = word
            return
        }
        for (k, w) in RegisterDecoder.encode(v, as: spec).enumerated() {
            tables[t, default: [:]][Int(spec.address) + k] = Int(w)
        }
    }
    if let s = map.status { put(s.register, .int(status)) }
    for id in map.identity { put(id.register, id.expect) }
    for r in map.registers { put(r, values[r.name] ?? .int(0)) }
    var parts = ["\"unit\": \(map.plc.unit)", "\"sparse\": \(sparse)", "\"port\": \(port)"]
    for (t, regs) in tables {
        parts.append("\"\(t)\": {" + regs.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}")
    }
    return "{" + parts.joined(separator: ", ") + "}"
}

@Suite("Poller against the project simulator")
struct PollerSimulatorTests {
    @Test func valuesArriveDecodedAndChangesAreSeen() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["position_x": "12.5", "load_kg": "2500",
                                                                         "hoist_locked": "1", "wind_speed": "7.3"])
        defer { sim.stop() }
        let map = craneMap(port: sim.endpoints[0].port)
        let log = StateLog()
        let poller = Poller(maps: [map]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }

        let first = try #require(log.wait { $0.isAllGood })
        #expect(first.state.device == "crane-01")
        #expect(first.state.status == "operational")
        #expect(first.state.identity == .ok)
        #expect(first.state.values["position_x"]?.value == .double(12.5))
        #expect(first.state.values["load_kg"]?.value == .uint(2500))
        #expect(first.state.values["hoist_locked"]?.value == .bool(true))
        #expect(abs((value(first.state, "wind_speed") ?? 0) - 7.3) < 1e-9)

        try sim.execute("set load_kg 3200")
        try sim.execute("status fault")
        let changed = try #require(log.wait(from: first.index) { value($0, "load_kg") == 3200 && $0.status == "fault" })
        #expect(changed.state.isAllGood)
        // Monotonic arrival times never go backwards.
        let times = log.all.map(\.time.monotonicNs)
        #expect(times == times.sorted())

        let stats = poller.stats()
        #expect(stats.devices.count == 1 && stats.devices[0].connected)
        #expect(stats.devices[0].groups == 4)
        #expect(stats.goodPolls >= 2)
        #expect(stats.errors.isEmpty)
    }

    @Test func groupAcrossAHoleIsSplitOnceAndRemembered() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], strict: true)
        defer { sim.stop() }
        let map = craneMap(port: sim.endpoints[0].port)
        #expect(ReadPlan(map: map).groups.first.map { "\($0.address)+\($0.count)" } == "0+8")
        let log = StateLog()
        let poller = Poller(maps: [map]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let first = try #require(log.wait { $0.isAllGood })
        // Even the first poll is complete: the split parts are read in the same poll.
        #expect(first.index == 0)
        try #require(log.wait(from: first.index + 3) { $0.isAllGood } != nil)
        let stats = poller.stats().devices[0]
        #expect(stats.splits == 1)
        #expect(stats.groups == 5)
        // One exception 2, on the first poll only: the split is remembered.
        #expect(stats.errors[.exception] == 1)
        #expect(stats.requests == 6 + (stats.polls - 1) * 5)
    }

    @Test func unmappedStatusAndExceptionsAreBad() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)])
        defer { sim.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: sim.endpoints[0].port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        try #require(log.wait { $0.isAllGood } != nil)
        try sim.execute("status 9")
        let unmapped = try #require(log.wait { $0.statusRaw == 9 })
        #expect(unmapped.state.status == nil && unmapped.state.statusQuality == .badDecode && !unmapped.state.isAllGood)
        try sim.execute("exception 4")
        let failing = try #require(log.wait(from: unmapped.index) { $0.pollError != nil && $0.statusRaw == nil })
        #expect(failing.state.values["load_kg"] == Reading(value: nil, quality: .badException(4)))
        #expect(failing.state.identity == .unknown)
        try sim.execute("exception off")
        try sim.execute("status operational")
        try #require(log.wait(from: failing.index) { $0.isAllGood } != nil)
    }

    @Test func killedPLCTurnsBadWithinOnePollAndReconnectsAfterRestart() throws {
        var sim: PLCSimulator? = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["load_kg": "1234"])
        let port = sim!.endpoints[0].port
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let good = try #require(log.wait { $0.isAllGood })

        sim!.stop()
        sim = nil
        let killedAt = log.count
        // The first poll after the kill is already bad: never the last good values again.
        let bad = try #require(log.wait(from: killedAt) { !$0.isAllGood })
        #expect(bad.index <= killedAt + 1)
        #expect(bad.state.values["load_kg"] == Reading(value: nil, quality: .badComm))
        #expect(bad.state.status == nil)
        #expect(bad.state.pollError != nil)
        #expect(good.state.values["load_kg"]?.value == .uint(1234))
        // Still one state per period while disconnected.
        try #require(log.wait(from: bad.index + 3) { _ in true } != nil)
        #expect(log.all[bad.index...].allSatisfy { !$0.isAllGood })

        let restarted = try PLCSimulator(maps: [craneMap(port: 0)], port: port, initial: ["load_kg": "4321"])
        defer { restarted.stop() }
        let back = try #require(log.wait(from: bad.index, timeoutMs: 10_000) { $0.isAllGood })
        #expect(back.state.values["load_kg"]?.value == .uint(4321))
        let stats = poller.stats()
        #expect(stats.connects >= 2)
        #expect((stats.errors[.connectionLost] ?? 0) + (stats.errors[.connect] ?? 0) + (stats.errors[.timeout] ?? 0) >= 1)
    }

    @Test func stalledPLCIsBadTimeoutAndRecoversWithCurrentValues() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["load_kg": "1"])
        defer { sim.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: sim.endpoints[0].port, pollMs: 50, timeoutMs: 100)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let good = try #require(log.wait { $0.isAllGood })
        try sim.execute("stall 400")
        let late = try #require(log.wait(from: good.index) { $0.values["load_kg"]?.quality == .badTimeout })
        #expect(late.state.pollError?.contains("timeout") == true)
        try sim.execute("set load_kg 2")
        let fresh = try #require(log.wait(from: late.index) { value($0, "load_kg") == 2 && $0.isAllGood })
        // After the first fresh answer, no state shows the old value.
        #expect(log.all[fresh.index...].allSatisfy { value($0, "load_kg") != 1 })
        let stats = poller.stats()
        #expect(stats.devices[0].errors[.timeout] ?? 0 >= 1)
        // A poll that ran into its timeout made the schedule skip slots instead of piling up.
        #expect(stats.missedSlots >= 1)
    }

    @Test func droppedConnectionsAreReopened() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)])
        defer { sim.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: sim.endpoints[0].port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let good = try #require(log.wait { $0.isAllGood })
        try sim.execute("drop")
        try sim.execute("set load_kg 77")
        try #require(log.wait(from: good.index) { value($0, "load_kg") == 77 } != nil)
        #expect(poller.stats().connects >= 2)
    }

    @Test func unreachablePLCStillYieldsABadStateEveryPeriodWithBackoff() throws {
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: closedPort(), pollMs: 20)]) { log.put($0) }
        try poller.start()
        try #require(log.wait(from: 10) { _ in true } != nil)
        poller.stop()
        let n = log.count
        #expect(log.all.allSatisfy { !$0.isAllGood && $0.values["load_kg"]?.quality == .badComm })
        #expect(log.all.contains { $0.pollError?.contains("ECONNREFUSED") == true })
        let stats = poller.stats()
        // Backoff: most periods do not even try to connect.
        #expect((stats.errors[.notConnected] ?? 0) >= 1)
        #expect((stats.errors[.connect] ?? 0) < stats.polls)
        // Stopped means stopped: no state after stop() returned.
        Thread.sleep(forTimeInterval: 0.1)
        #expect(log.count == n)
    }

    /// A PLC (or gateway) that accepts and at once drops every connection: one quick retry,
    /// then backoff; every period still yields a bad state.
    @Test func aPLCThatKeepsDroppingTheConnectionIsRetriedWithBackoff() throws {
        let plc = try SlammingListener()
        defer { plc.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: plc.port, pollMs: 10)]) { log.put($0) }
        try poller.start()
        try #require(log.wait(from: 60, timeoutMs: 10_000) { _ in true } != nil)
        poller.stop()
        let stats = poller.stats()
        #expect(log.all.allSatisfy { !$0.isAllGood })
        #expect((stats.errors[.notConnected] ?? 0) >= 1)
        // Without backoff every one of the 60+ polls would reconnect.
        #expect(plc.connections < stats.polls / 2, "\(plc.connections) connections for \(stats.polls) polls")
    }

    @Test func logsTransitionsNotEveryPeriod() throws {
        let port = closedPort()
        let logs = InMemoryLogHandler()
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: port, pollMs: 20)], logger: Logger(label: "test.poller") { _ in logs }) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        try #require(log.wait(from: 10) { _ in true } != nil)
        // Ten bad polls, one warning.
        #expect(logs.entries.filter { $0.level == .warning }.count == 1)
        #expect(logs.entries.first?.metadata["device"] == "crane-01")
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], port: port)
        defer { sim.stop() }
        try #require(log.wait(from: log.count, timeoutMs: 10_000) { $0.isAllGood } != nil)
        let messages = logs.entries.map { "\($0.message)" }
        #expect(messages.contains("connected"))
        #expect(messages.last == "polls good again")
    }

    @Test func manyDevicesShareFewThreads() throws {
        let maps = (0..<12).map { i -> DeviceMap in var m = craneMap(port: 0); m.device = "crane-\(i)"; return m }
        let sim = try PLCSimulator(maps: maps, initial: ["load_kg": "99"])
        defer { sim.stop() }
        let polled = zip(maps, sim.endpoints).map { m, e -> DeviceMap in var m = m; m.plc.port = e.port; return m }
        let log = StateLog()
        let poller = Poller(maps: polled, configuration: PollerConfiguration(threads: 3)) { log.put($0) }
        #expect(poller.threadCount == 3)
        try poller.start()
        defer { poller.stop() }
        for m in polled {
            try #require(log.wait { $0.device == m.device && $0.isAllGood && value($0, "load_kg") == 99 } != nil)
        }
        #expect(poller.stats().devices.map(\.device) == polled.map(\.device).sorted())
    }
}

extension PollerSimulatorTests {
    @Test func eachLinkGetsAThreadOfItsOwnByDefault() throws {
        let maps = (0..<6).map { i -> DeviceMap in var m = craneMap(port: 1600 + i % 3); m.device = "crane-\(i)"; return m }
        let poller = Poller(maps: maps) { (_: PhysicalState) in }
        #expect(poller.threadCount == 3, "three PLC links, three threads")
    }

    @Test func devicesBehindOneGatewayAreHandedOverOneByOneFromALowerPriorityThread() throws {
        let maps = (0..<12).map { i -> DeviceMap in var m = craneMap(port: 0); m.device = "meter-\(i)"; return m }
        let sim = try PLCSimulator(maps: maps, initial: ["load_kg": "42"], unitsPerPort: 12)
        defer { sim.stop() }
        let polled = maps.enumerated().map { i, m -> DeviceMap in
            var m = m
            m.plc.port = sim.endpoints[i].port
            m.plc.unit = sim.endpoints[i].unit
            return m
        }
        let log = StateLog()
        let poller = Poller(maps: polled) { log.put($0) }
        #expect(poller.threadCount == 1, "one gateway link")
        try poller.start()
        defer { poller.stop() }
        for m in polled {
            try #require(log.wait { $0.device == m.device && $0.isAllGood && value($0, "load_kg") == 42 } != nil)
        }
        // The poll thread runs `niceSteps` below this (test) thread, capped at 19.
        let mine = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        let nices = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap { tid -> Int32? in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  comm.hasPrefix("tt-poll"),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            // Fields after "(comm)": state is field 3; nice is field 19.
            let f = stat[stat.index(after: close)...].split(separator: " ")
            return Int32(f[16])
        }
        #expect(!nices.isEmpty)
        #expect(nices.allSatisfy { $0 == min(mine + PollWorker.niceSteps, 19) }, "poll threads at nice \(nices), this thread at \(mine)")
    }
}

@Suite("Poller against pymodbus 3.8.6")
struct PollerPymodbusTests {
    let values: [String: Value] = ["position_x": .double(-3.25), "load_kg": .uint(70000), "hoist_locked": .bool(true),
                                   "wind_speed": .double(-1.5)]

    @Test func valuesArriveDecoded() throws {
        let plc = try PymodbusPLC(spec: pymodbusSpec(map: craneMap(port: 0), values: values, status: 2))
        defer { plc.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: plc.port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let s = try #require(log.wait(timeoutMs: 10_000) { $0.isAllGood }).state
        #expect(s.status == "maintenance")
        #expect(s.identity == .ok)
        #expect(s.values["position_x"]?.value == .double(-3.25))
        #expect(s.values["load_kg"]?.value == .uint(70000))
        #expect(s.values["hoist_locked"]?.value == .bool(true))
        #expect(abs((value(s, "wind_speed") ?? 0) + 1.5) < 1e-9)
    }

    /// Every type in every word order, laid out by pymodbus' own encoder (not ours), served by
    /// pymodbus, read by the poller: each value comes back as encoded, scale/offset applied.
    @Test func everyTypeAndOrderFromPymodbusEncoderDecodes() throws {
        struct Case { var type: ValueType; var raw: String; var expected: Value; var scale = 1.0; var offset = 0.0; var length = 0 }
        let cases: [Case] = [
            Case(type: .int16, raw: "-12345", expected: .int(-12345)),
            Case(type: .uint16, raw: "54321", expected: .uint(54321)),
            Case(type: .int32, raw: "-123456789", expected: .int(-123456789)),
            Case(type: .uint32, raw: "3000000000", expected: .uint(3_000_000_000)),
            Case(type: .int64, raw: "-1234567890123456789", expected: .int(-1234567890123456789)),
            Case(type: .uint64, raw: "18364758544493064720", expected: .uint(18364758544493064720)),
            Case(type: .float32, raw: "1234.5", expected: .double(1234.5)),
            Case(type: .float64, raw: "-123456.789", expected: .double(-123456.789)),
            Case(type: .string, raw: "\"TT-0042\"", expected: .string("TT-0042"), length: 4),
            Case(type: .int16, raw: "-123", expected: .double(-123 * 0.1 + 5), scale: 0.1, offset: 5),
            Case(type: .int32, raw: "-70000", expected: .double(-70000 * 0.01 - 2), scale: 0.01, offset: -2),
            Case(type: .float32, raw: "-3.25", expected: .double(-3.25 * 2 + 1), scale: 2, offset: 1),
        ]
        var registers: [RegisterSpec] = []
        var encode: [String] = []
        var expected: [String: Value] = [:]
        var next: [RegisterTable: Int] = [.holding: 10, .input: 0]
        for order in WordOrder.allCases {
            // Two orders in the holding table, two in the input table.
            let table: RegisterTable = order == .ABCD || order == .CDAB ? .holding : .input
            for (i, c) in cases.enumerated() {
                let name = "\(c.type.rawValue)_\(order.rawValue)_\(i)"
                let spec = RegisterSpec(name: name, table: table, address: UInt16(next[table]!), type: c.type,
                                        order: order, length: c.length, scale: c.scale, offset: c.offset)
                next[table]! += spec.width
                registers.append(spec)
                expected[name] = c.expected
                encode.append("{\"table\": \"\(table.rawValue)\", \"address\": \(spec.address), \"type\": \"\(c.type.rawValue)\", "
                              + "\"order\": \"\(order.rawValue)\", \"value\": \(c.raw)}")
            }
        }
        func map(port: Int) -> DeviceMap {
            DeviceMap(device: "encoded", profile: .port,
                      plc: PLCEndpoint(host: "127.0.0.1", port: port, unit: 1, pollMs: 50, timeoutMs: 1000, maxGap: 16),
                      limits: Limits(maxDriftMs: 200, rearmMs: 100),
                      status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
                      registers: registers, intents: [])
        }
        let spec = "{\"unit\": 1, \"holding\": {\"0\": 0}, \"encode\": [" + encode.joined(separator: ", ") + "]}"
        let plc = try PymodbusPLC(spec: spec)
        defer { plc.stop() }
        let log = StateLog()
        let poller = Poller(maps: [map(port: plc.port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let s = try #require(log.wait(timeoutMs: 10_000) { $0.isAllGood }).state
        #expect(s.values.count == cases.count * 4)
        for (name, want) in expected.sorted(by: { $0.key < $1.key }) {
            let got = s.values[name]?.value
            if case .double(let w) = want, case .double(let g)? = got {
                #expect(abs(g - w) <= 1e-9 * max(1, abs(w)), "\(name): \(g) != \(w)")
            } else {
                #expect(got == want, "\(name): \(String(describing: got)) != \(want)")
            }
        }
    }

    @Test func sparseHoleIsSplitAndRemembered() throws {
        let plc = try PymodbusPLC(spec: pymodbusSpec(map: craneMap(port: 0), values: values, sparse: true))
        defer { plc.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: plc.port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let first = try #require(log.wait(timeoutMs: 10_000) { $0.isAllGood })
        #expect(first.index == 0)
        try #require(log.wait(from: first.index + 2, timeoutMs: 10_000) { $0.isAllGood } != nil)
        let d = poller.stats().devices[0]
        #expect(d.splits == 1 && d.groups == 5 && d.errors[.exception] == 1)
    }

    @Test func slowPLCIsBadTimeoutAndItsLateAnswerIsNeverUsed() throws {
        var v = values
        v["load_kg"] = .uint(111)
        let plc = try PymodbusPLC(spec: pymodbusSpec(map: craneMap(port: 0), values: v))
        defer { plc.stop() }
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: plc.port, pollMs: 50, timeoutMs: 100)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        let good = try #require(log.wait(timeoutMs: 10_000) { $0.isAllGood })
        // From now on pymodbus answers 300 ms late with the values of the moment the request arrived.
        try plc.command("delay 300")
        let late = try #require(log.wait(from: good.index) { $0.values["load_kg"]?.quality == .badTimeout })
        // load_kg is CDAB: the low word (222) at 102, the high word (0) at 103.
        try plc.command("set holding 102 222")
        try plc.command("delay 0")
        let fresh = try #require(log.wait(from: late.index, timeoutMs: 10_000) { value($0, "load_kg") == 222 })
        #expect(log.all[fresh.index...].allSatisfy { value($0, "load_kg") != 111 })
    }

    @Test func killedPLCTurnsBadAndReconnectsAfterRestart() throws {
        var plc: PymodbusPLC? = try PymodbusPLC(spec: pymodbusSpec(map: craneMap(port: 0), values: values))
        let port = plc!.port
        let log = StateLog()
        let poller = Poller(maps: [craneMap(port: port)]) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        try #require(log.wait(timeoutMs: 10_000) { $0.isAllGood } != nil)
        plc!.stop()
        plc = nil
        let killedAt = log.count
        let bad = try #require(log.wait(from: killedAt) { !$0.isAllGood })
        #expect(bad.index <= killedAt + 1)
        let again = try PymodbusPLC(spec: pymodbusSpec(map: craneMap(port: 0), values: values, port: port))
        defer { again.stop() }
        try #require(log.wait(from: bad.index, timeoutMs: 15_000) { $0.isAllGood } != nil)
    }
}

@Suite("Poller pieces")
struct PollerPieceTests {
    @Test func reconnectBackoffDoublesUpToItsCapAndResets() {
        var b = ReconnectBackoff(initialMs: 100, maxMs: 5000)
        let delays = (0..<9).map { _ in b.failed() }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000])
        b.reset()
        #expect(b.failed() == 100)
        var odd = ReconnectBackoff(initialMs: 0, maxMs: 0)
        #expect(odd.failed() >= 1)
    }

    /// Starting a poller lowers the soft descriptor limit to 1024 (libmodbus's select()), in a
    /// child process so the limit does not reach the tests beside it.
    @Test func startingThePollerCapsDescriptorsForSelect() async {
        await #expect(processExitsWith: .success) {
            var lim = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
            lim.rlim_cur = lim.rlim_max  // as high as allowed, as under systemd's LimitNOFILE
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
            let poller = Poller(maps: [craneMap(port: closedPort())]) { (_: PhysicalState) in }
            do { try poller.start() } catch { exit(2) }
            poller.stop()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
            exit(lim.rlim_cur <= 1024 ? 0 : 1)
        }
    }

    @Test func deadlineQueuePopsInDeadlineOrder() {
        var q = DeadlineQueue()
        let deadlines: [Int64] = [50, 10, 40, 10, 30, 20, 60, 0]
        for (i, d) in deadlines.enumerated() { q.push(deadline: d, device: i) }
        var out: [Int64] = []
        while let (d, _) = q.pop() { out.append(d) }
        #expect(out == deadlines.sorted())
    }

    @Test func pollThreadsWakeOneAfterAnotherNotAllAtOnce() {
        // 32 threads of 32 devices at 50 ms (the 1,000-device bench): 12 slots of 4.17 ms a
        // thread, each thread's grid shifted by 1/32 of a slot against the one before.
        let period: Int64 = 50_000_000, threads = 32
        let firsts = (0..<threads).map {
            PollWorker.firstOffsetNs(device: 0, of: 32, periodNs: period, thread: $0, of: threads)
        }
        #expect(Set(firsts).count == threads)
        #expect(firsts == firsts.sorted())
        #expect(firsts.last! < period / 12)
        // Within a thread the slots keep their spacing and fill one period.
        for t in [0, 17, 31] {
            let offsets = (0..<32).map {
                PollWorker.firstOffsetNs(device: $0, of: 32, periodNs: period, thread: t, of: threads)
            }
            #expect(Set(offsets).count == 12)
            #expect(offsets.allSatisfy { $0 >= 0 && $0 < period })
            let sorted = Set(offsets).sorted()
            let gaps = zip(sorted.dropFirst(), sorted).map { $0 - $1 }
            #expect(gaps.allSatisfy { abs($0 - period / 12) <= 1 })
        }
        // One thread: no shift. One device a thread: the threads spread over the whole period.
        #expect(PollWorker.firstOffsetNs(device: 5, of: 12, periodNs: period, thread: 0, of: 1)
                == period * 5 / 12)
        let lone = (0..<10).map { PollWorker.firstOffsetNs(device: 0, of: 1, periodNs: period, thread: $0, of: 10) }
        #expect(lone == (0..<10).map { period * Int64($0) / 10 })
    }

    @Test func histogramQuantilesAreBucketBounds() {
        var h = PollLatencyHistogram()
        for _ in 0..<98 { h.record(ns: 80_000) }   // 0.08 ms → ≤ 0.1 ms bucket
        h.record(ns: 3_500_000)                     // ≤ 4 ms
        h.record(ns: 9_000_000_000)                 // overflow
        #expect(h.count == 100)
        #expect(h.quantileUpperBoundMs(0.5) == 0.1)
        #expect(h.quantileUpperBoundMs(0.99) == 4)
        #expect(h.quantileUpperBoundMs(1.0) == 9000)
        var m = PollLatencyHistogram()
        m.merge(h)
        #expect(m == h)
    }

    @Test func simulatorCommandsParse() throws {
        #expect(try SimulatorCommand.parse("set load_kg 3200") == SimulatorCommand(action: .set(name: "load_kg", value: "3200")))
        #expect(try SimulatorCommand.parse("@2 stall 500") == SimulatorCommand(target: "2", action: .stall(ms: 500)))
        #expect(try SimulatorCommand.parse("@crane-01 exception off") == SimulatorCommand(target: "crane-01", action: .exception(nil)))
        #expect(try SimulatorCommand.parse("  # comment") == nil)
        #expect(try SimulatorCommand.parse("") == nil)
        for bad in ["sett x 1", "stall", "stall -1", "exception 12", "strict maybe", "@ set a 1", "@dev"] {
            #expect(throws: SimulatorError.self) { try SimulatorCommand.parse(bad) }
        }
    }

    @Test func simulatorRejectsBadValuesAndNamesChangingNothing() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["load_kg": "5"])
        defer { sim.stop() }
        #expect(throws: SimulatorError.self) { try sim.execute("set load_kg heavy") }
        #expect(throws: SimulatorError.self) { try sim.execute("set no_such 1") }
        #expect(throws: SimulatorError.self) { try sim.execute("status broken") }
        #expect(throws: SimulatorError.self) { try sim.execute("@7 drop") }
        #expect(try sim.execute("get load_kg") == "load_kg 5")
        #expect(try sim.execute("get status") == "status operational (0)")
        #expect(try sim.execute("get serial") == "serial 4711")
        #expect(throws: SimulatorError.self) { try PLCSimulator(maps: [craneMap(port: 0)], initial: ["nope": "1"]) }
    }
}
