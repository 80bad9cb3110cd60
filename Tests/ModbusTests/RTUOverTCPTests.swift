import Foundation
import Testing
@testable import Modbus

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

@Suite("RTU frames")
struct RTUFrameTests {
    @Test func crcOfAKnownRequest() {
        // Read 10 holding registers from 0 at unit 1: the textbook frame 01 03 00 00 00 0A C5 CD.
        #expect(RTUFrame.readRequest(unit: 1, function: 3, address: 0, count: 10) == [1, 3, 0, 0, 0, 10, 0xC5, 0xCD])
        #expect(RTUFrame.crcMatches([1, 3, 0, 0, 0, 10, 0xC5, 0xCD]))
        #expect(!RTUFrame.crcMatches([1, 3, 0, 0, 0, 11, 0xC5, 0xCD]))
    }

    @Test func answerLengthFromTheFunctionCode() {
        #expect(RTUFrame.answerLength([1][...]) == nil)
        #expect(RTUFrame.answerLength([1, 3][...]) == nil)
        #expect(RTUFrame.answerLength([1, 3, 20][...]) == 25)
        #expect(RTUFrame.answerLength([1, 0x83][...]) == 5)
        #expect(RTUFrame.answerLength([1, 0x11][...]) == -1)
        #expect(RTUFrame.requestLength([1, 4][...]) == 8)
        #expect(RTUFrame.requestLength([1, 16, 0, 0, 0, 2][...]) == nil)
        #expect(RTUFrame.requestLength([1, 16, 0, 0, 0, 2, 4][...]) == 13)
    }
}

/// RTU frames on TCP against pymodbus' RTU framer on a TCP server.
@Suite("RTU over TCP against pymodbus", .serialized)
struct RTUOverTCPTests {
    static func peer() throws -> PymodbusUnits {
        try PymodbusUnits(spec: #"{"mode": "rtu-tcp", "units": [1, 2], "registers": 20, "input": {"0": 1234, "1": 5678}, "coil": {"2": 1}}"#)
    }

    @Test func readsExceptionsSilenceAndCorruptFrames() async throws {
        let peer = try Self.peer()
        defer { peer.stop() }
        let port = peer.port
        try await onThread {
            let c = RTUOverTCPClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 500)
            try c.connect(timeoutMs: nil)
            #expect(try c.readRegisters(table: .input, address: 0, count: 2) == [1234, 5678])
            var bits = [UInt8](repeating: 9, count: 4)
            try bits.withUnsafeMutableBufferPointer { (b) throws(ModbusError) in
                try c.readBits(table: .coil, address: 0, count: 4, into: b)
            }
            #expect(bits == [0, 0, 1, 0])
            try c.setUnit(2)
            #expect(try c.readRegisters(table: .input, address: 1, count: 1) == [5678])
            // Exception 2 keeps the connection.
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .holding, address: 18, count: 5)
                Issue.record("expected exception 2")
            } catch {
                #expect(error.kind == .exception(2))
            }
            #expect(c.isConnected)
            // A unit that never answers: timeout, and the stream is closed (no transaction id).
            try c.setUnit(7)
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 0, count: 1)
                Issue.record("expected a timeout")
            } catch {
                #expect(error.kind == .timeout)
            }
            #expect(!c.isConnected)
        }
        try peer.command("crc 1")
        try await onThread {
            let c = RTUOverTCPClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 500)
            try c.connect(timeoutMs: nil)
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 0, count: 2)
                Issue.record("expected a CRC error")
            } catch {
                #expect(error.kind == .badResponse)
                #expect(error.description.contains("invalid CRC"))
            }
            #expect(!c.isConnected)
            try c.connect(timeoutMs: nil)
            #expect(try c.readRegisters(table: .input, address: 0, count: 2) == [1234, 5678])
        }
    }

    @Test func refusedConnectIsAConnectError() async throws {
        let port = closedPort()
        try await onThread {
            let c = RTUOverTCPClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 300)
            do throws(ModbusError) {
                try c.connect(timeoutMs: nil)
                Issue.record("expected refused")
            } catch {
                #expect(error.kind == .connect)
                #expect(error.description.contains("ECONNREFUSED"))
            }
        }
    }
}

extension RTUOverTCPClient {
    func readRegisters(table: ModbusTable, address: Int, count: Int) throws(ModbusError) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { (b) throws(ModbusError) in
            try readRegisters(table: table, address: address, count: count, into: b)
        }
        return out
    }
}
