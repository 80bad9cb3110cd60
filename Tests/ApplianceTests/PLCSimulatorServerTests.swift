import Foundation
import Testing
import TibetTwin
@testable import Appliance
import Commissioning
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("PLC simulator on the hardened Modbus server")
struct PLCSimulatorServerTests {
    /// The simulator runs on the interlock's engine: a slow-loris client (half a frame, then
    /// nothing) is closed after the byte timeout (2 s) while a good client keeps reading.
    /// The old poll-loop server had its own frame timeout; this checks the shared one.
    @Test func closesASlowLorisWhileAGoodClientKeepsReading() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["load_kg": "2500"])
        defer { sim.stop() }
        let port = sim.endpoints[0].port
        let slow = try ApplianceModbusClient(port: port, timeoutMs: 5000)
        // The MBAP header announces 6 more bytes; only 2 come.
        let half: [UInt8] = [0, 1, 0, 0, 0, 6, 1, 3]
        #expect(half.withUnsafeBytes { send(slow.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) } == half.count)
        let good = try ApplianceModbusClient(port: port)
        let start = Date()
        var reads = 0
        while Date().timeIntervalSince(start) < 2.6 {
            // load_kg: uint32 CDAB at holding 102 (low word first).
            #expect(try good.readRegisters(102, 2) == [2500, 0])
            reads += 1
            usleep(20_000)
        }
        #expect(reads >= 20)
        // Closed by the server (EOF at once), not left hanging until the 5 s receive timeout.
        var byte: UInt8 = 0
        let t0 = Date()
        #expect(recv(slow.fd, &byte, 1, 0) == 0)
        #expect(Date().timeIntervalSince(t0) < 1)
        // And the good client is still served.
        #expect(try good.readRegisters(102, 2) == [2500, 0])
    }

    /// A stall holds back the stalled device's clients only: its requests are answered late,
    /// another device on the same simulator answers at once meanwhile.
    @Test func aStalledDeviceDoesNotHoldAnother() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0), craneMap(port: 0)], initial: ["load_kg": "7"])
        defer { sim.stop() }
        let one = try ApplianceModbusClient(port: sim.endpoints[0].port)
        let two = try ApplianceModbusClient(port: sim.endpoints[1].port)
        #expect(try two.readRegisters(102, 2) == [7, 0])
        try sim.execute("@2 stall 500")
        let t0 = Date()
        #expect(try one.readRegisters(102, 2) == [7, 0])
        #expect(Date().timeIntervalSince(t0) < 0.25)
        #expect(try two.readRegisters(102, 2) == [7, 0])  // late, not lost
        #expect(Date().timeIntervalSince(t0) > 0.4)
    }

    /// `stall 0` ends a stall at once, and a request that waited during it is answered then.
    @Test func stallZeroEndsAStallAndAnswersWhatWaited() throws {
        let sim = try PLCSimulator(maps: [craneMap(port: 0)], initial: ["load_kg": "7"])
        defer { sim.stop() }
        let c = try ApplianceModbusClient(port: sim.endpoints[0].port, timeoutMs: 5000)
        #expect(try c.readRegisters(102, 2) == [7, 0])
        try sim.execute("stall 60000")
        let frame: [UInt8] = [0, 9, 0, 0, 0, 6, 1, 3, 0, 102, 0, 2]
        #expect(frame.withUnsafeBytes { send(c.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) } == frame.count)
        usleep(200_000)
        let t0 = Date()
        try sim.execute("stall 0")
        var reply = [UInt8](repeating: 0, count: 13)
        let n = reply.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 13, Int32(MSG_WAITALL)) }
        #expect(n == 13)
        #expect(reply == [0, 9, 0, 0, 0, 7, 1, 3, 4, 0, 7, 0, 0])
        #expect(Date().timeIntervalSince(t0) < 2)
    }
}
