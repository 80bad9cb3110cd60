import Foundation
import Testing
import TibetTwin
@testable import Appliance
import TestSupport
import Commissioning

/// A meter map (no status word) on one link: `plc` is the link part of the plc mapping.
func unitMap(_ i: Int, plc: String, pollMs: Int, timeoutMs: Int) throws -> DeviceMap {
    try MapLoader.parse(yaml: """
        device: unit-\(i)
        profile: building
        limits: {max_drift_ms: 5000}
        plc: {\(plc), unit: \(i), poll_ms: \(pollMs), timeout_ms: \(timeoutMs)}
        registers:
          - {name: a, address: 0, table: input}
          - {name: b, address: 1, table: input}
        intents:
          run: {coil: \(i)}

        """, file: "unit-\(i).yaml")
}

/// Polls per device and whether each was good, from one index on.
func tally(_ log: StateLog, from: Int) -> [String: (polls: Int, good: Int)] {
    var out: [String: (polls: Int, good: Int)] = [:]
    for s in log.all.dropFirst(from) {
        var t = out[s.device] ?? (0, 0)
        t.polls += 1
        if s.isAllGood { t.good += 1 }
        out[s.device] = t
    }
    return out
}

/// Devices sharing one link: a serial bus of 8 units, a one-connection gateway of 8 units.
/// Timing is checked with generous bounds only (the machine is shared and noisy).
@Suite("Shared links", .serialized)
struct SharedLinkTests {
    /// The others on the link must keep most of their polls while `dead` is silent.
    func checkNeighboursKeepTheirPeriod(log: StateLog, dead: String, pollMs: Int, windowMs: Int, from: Int) {
        let t = tally(log, from: from)
        let expected = windowMs / pollMs
        for (device, c) in t where device != dead {
            #expect(c.polls >= expected / 2, "\(device): \(c.polls) polls in \(windowMs) ms, expected about \(expected)")
            #expect(c.good == c.polls, "\(device): \(c.polls - c.good) bad polls while a neighbour was silent")
        }
        #expect(t.filter { $0.key != dead }.count == 7)
        #expect((t[dead]?.good ?? 0) == 0)
    }

    @Test func serialBusOfEightUnitsWithOneDead() throws {
        let pty = try PtyPair()
        defer { pty.stop() }
        let peer = try PymodbusUnits(spec: #"{"mode": "serial", "port": "\#(pty.b)", "baud": 19200, "units": [1, 2, 3, 4, 5, 6, 7, 8], "input": {"0": 7, "1": 8}}"#)
        defer { peer.stop() }
        let pollMs = 250
        let maps = try (1...8).map { try unitMap($0, plc: "serial: \(pty.a), baud: 19200, parity: N", pollMs: pollMs, timeoutMs: 150) }
        #expect(LinkBudget(maps: maps).links.count == 1)
        let log = StateLog()
        let poller = Poller(maps: maps, configuration: PollerConfiguration(threads: 4)) { log.put($0) }
        #expect(poller.threadCount == 1)  // one link lives on one thread
        try poller.start()
        defer { poller.stop() }
        for i in 1...8 {
            let s = try #require(log.wait(timeoutMs: 15_000) { $0.device == "unit-\(i)" && $0.isAllGood })
            #expect(s.state.status == "operational" && s.state.statusDerived)
            #expect(s.state.values["a"]?.value == .uint(7))
        }
        try peer.command("dead 3")
        // Wait until unit 3 is seen silent, then watch a window.
        let silent = try #require(log.wait(timeoutMs: 10_000) { $0.device == "unit-3" && !$0.isAllGood })
        #expect(silent.state.status == nil)
        Thread.sleep(forTimeInterval: 0.5)
        let from = log.count
        Thread.sleep(forTimeInterval: 4)
        checkNeighboursKeepTheirPeriod(log: log, dead: "unit-3", pollMs: pollMs, windowMs: 4000, from: from)
        // Backed off: unit 3 is not asked every period.
        let last = log.all.last { $0.device == "unit-3" }
        #expect(last?.pollError?.contains("did not answer") == true || last?.pollError?.contains("timeout") == true)
        let stats = poller.stats()
        #expect(stats.devices.map(\.connects).reduce(0, +) == 1)  // one open of the port
        // Unit 3 back: it is polled good again after its backoff.
        try peer.command("alive 3")
        #expect(log.wait(from: log.count, timeoutMs: 15_000) { $0.device == "unit-3" && $0.isAllGood } != nil)
    }

    @Test func gatewayWithOneConnectionAndEightUnits() throws {
        let peer = try PymodbusUnits(spec: #"{"mode": "gateway", "units": [1, 2, 3, 4, 5, 6, 7, 8], "input": {"0": 7, "1": 8}}"#)
        defer { peer.stop() }
        let pollMs = 100
        let maps = try (1...8).map { try unitMap($0, plc: "host: 127.0.0.1, port: \(peer.port)", pollMs: pollMs, timeoutMs: 200) }
        let log = StateLog()
        let poller = Poller(maps: maps) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        for i in 1...8 {
            #expect(log.wait(timeoutMs: 15_000) { $0.device == "unit-\(i)" && $0.isAllGood } != nil)
        }
        try peer.command("dead 5")
        #expect(log.wait(timeoutMs: 10_000) { $0.device == "unit-5" && !$0.isAllGood } != nil)
        Thread.sleep(forTimeInterval: 0.5)
        let from = log.count
        Thread.sleep(forTimeInterval: 3)
        checkNeighboursKeepTheirPeriod(log: log, dead: "unit-5", pollMs: pollMs, windowMs: 3000, from: from)
        // One connection throughout: the gateway closes any second one, so a reconnect would show.
        let stats = poller.stats()
        #expect(stats.devices.map(\.connects).reduce(0, +) == 1)
        let othersConnected = stats.devices.filter { $0.device != "unit-5" }.allSatisfy { $0.connected }
        #expect(othersConnected)
    }

    /// The project's own simulator as a gateway (`--units-per-port`): 8 devices behind one port,
    /// polled over one shared connection; one unit made to answer exception 11 stays alone.
    @Test func simulatorGatewayServesEightUnitsOnOnePort() throws {
        let probe = try (1...8).map { try unitMap($0, plc: "host: 127.0.0.1, port: 1502", pollMs: 100, timeoutMs: 200) }
        let sim = try PLCSimulator(maps: probe, host: "127.0.0.1", port: 0, initial: ["a": "7"], unitsPerPort: 8)
        defer { sim.stop() }
        #expect(Set(sim.endpoints.map(\.port)).count == 1, "one port for the eight")
        #expect(sim.endpoints.map(\.unit) == Array(1...8))
        let port = sim.endpoints[0].port
        let maps = try (1...8).map { try unitMap($0, plc: "host: 127.0.0.1, port: \(port)", pollMs: 100, timeoutMs: 200) }
        let log = StateLog()
        let poller = Poller(maps: maps) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        for i in 1...8 {
            let s = log.wait(timeoutMs: 15_000) { $0.device == "unit-\(i)" && $0.isAllGood }
            #expect(s?.state.values["a"]?.value?.number == 7, "unit \(i) answers its own registers")
        }
        try sim.execute("@unit-3 exception 4")
        #expect(log.wait(timeoutMs: 10_000) { $0.device == "unit-3" && !$0.isAllGood } != nil)
        Thread.sleep(forTimeInterval: 0.5)
        let from = log.count
        Thread.sleep(forTimeInterval: 2)
        let t = tally(log, from: from)
        for (device, c) in t where device != "unit-3" {
            #expect(c.good == c.polls && c.polls >= 5, "\(device): \(c.good)/\(c.polls) good while unit 3 fails")
        }
        #expect(poller.stats().devices.map(\.connects).reduce(0, +) == 1, "one connection for the eight")
    }

    @Test func rtuOverTCPThroughThePoller() throws {
        let peer = try PymodbusUnits(spec: #"{"mode": "rtu-tcp", "units": [1, 2], "input": {"0": 7, "1": 8}}"#)
        defer { peer.stop() }
        let maps = try (1...2).map { try unitMap($0, plc: "host: 127.0.0.1, port: \(peer.port), framing: rtu", pollMs: 100, timeoutMs: 300) }
        #expect(maps[0].plc.framing == .rtu)
        let log = StateLog()
        let poller = Poller(maps: maps) { log.put($0) }
        try poller.start()
        defer { poller.stop() }
        for i in 1...2 {
            let s = try #require(log.wait(timeoutMs: 15_000) { $0.device == "unit-\(i)" && $0.isAllGood })
            #expect(s.state.values["b"]?.value == .uint(8))
        }
    }
}
