import Foundation
import Testing
@testable import Modbus

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// Modbus RTU through libmodbus's RTU backend, on a socat pseudo-terminal pair with pymodbus
/// 3.8.6 as the serial slave (8N1: pseudo-terminals refuse parity E/O).
@Suite("ModbusClient over a serial line (RTU)", .serialized)
struct RTUClientTests {
    static func settings(_ pty: PtyPair, rs485: Bool = false, rts: SerialPortSettings.RTSMode? = nil) -> SerialPortSettings {
        SerialPortSettings(device: pty.a, baud: 19200, parity: .none, dataBits: 8, stopBits: 1, rs485: rs485, rts: rts)
    }

    static func peer(_ pty: PtyPair, units: [Int] = [1, 2, 3]) throws -> PymodbusUnits {
        try PymodbusUnits(spec: #"{"mode": "serial", "port": "\#(pty.b)", "baud": 19200, "units": \#(units), "registers": 20, "input": {"0": 1234, "1": 5678}, "holding": {"5": 42}}"#)
    }

    @Test func readsExceptionsAndASilentUnit() async throws {
        let pty = try PtyPair()
        defer { pty.stop() }
        let peer = try Self.peer(pty)
        defer { peer.stop() }
        let settings = Self.settings(pty)
        try await onThread {
            let c = try ModbusClient(serial: settings, unit: 2, responseTimeoutMs: 500)
            try c.connect()
            #expect(c.isConnected)
            #expect(c.endpoint == settings.device)
            #expect(try c.readRegisters(table: .input, address: 0, count: 2) == [1234, 5678])
            #expect(try c.readRegisters(table: .holding, address: 5, count: 1) == [42])
            #expect(try c.readBits(table: .coil, address: 0, count: 3) == [0, 0, 0])
            // Past the 20 registers: exception 2, with the port still open.
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 19, count: 5)
                Issue.record("expected exception 2")
            } catch {
                #expect(error.kind == .exception(2))
                #expect(error.description.contains(settings.device))
                #expect(error.description.contains("unit 2"))
            }
            #expect(c.isConnected)
            // A unit nobody answers for: a timeout, and the port stays open for the next unit.
            try c.setUnit(9)
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 0, count: 1)
                Issue.record("expected a timeout")
            } catch {
                #expect(error.kind == .timeout)
            }
            #expect(c.isConnected)
            try c.setUnit(3)
            #expect(try c.readRegisters(table: .input, address: 1, count: 1) == [5678])
        }
    }

    @Test func aCorruptCRCIsABadResponseAndTheNextReadWorks() async throws {
        let pty = try PtyPair()
        defer { pty.stop() }
        let peer = try Self.peer(pty)
        defer { peer.stop() }
        let settings = Self.settings(pty)
        try peer.command("crc 1")
        try await onThread {
            let c = try ModbusClient(serial: settings, unit: 1, responseTimeoutMs: 500)
            try c.connect()
            do throws(ModbusError) {
                _ = try c.readRegisters(table: .input, address: 0, count: 2)
                Issue.record("expected a CRC error")
            } catch {
                #expect(error.kind == .badResponse)
                #expect(error.description.contains("invalid CRC"))
            }
            #expect(try c.readRegisters(table: .input, address: 0, count: 2) == [1234, 5678])
        }
    }

    @Test func framesKeepTheT35Silence() {
        // 3.5 characters of 11 bits at 9600 baud = 4.01 ms; 10-bit characters (8N1) 3.65 ms;
        // above 19200 baud a fixed 1.75 ms.
        #expect(SerialPortSettings(device: "/dev/x", baud: 9600, parity: .even).frameSilenceUs == 4011)
        #expect(SerialPortSettings(device: "/dev/x", baud: 9600, parity: .none).frameSilenceUs == 3646)
        #expect(SerialPortSettings(device: "/dev/x", baud: 115200).frameSilenceUs == 1750)
    }

    @Test func rs485AndRTSOnAPortWithoutThemAreClearErrors() async throws {
        let pty = try PtyPair()
        defer { pty.stop() }
        let rs485 = Self.settings(pty, rs485: true)
        let rts = Self.settings(pty, rts: .up)
        let plain = Self.settings(pty)
        try await onThread {
            let c = try ModbusClient(serial: rs485, unit: 1, responseTimeoutMs: 200)
            do throws(ModbusError) {
                try c.connect()
                Issue.record("a pty has no RS-485 mode")
            } catch {
                #expect(error.kind == .connect)
                #expect(error.function == "modbus_rtu_set_serial_mode")
                #expect(error.description.contains(rs485.device))
                #expect(error.description.contains("ENOTTY"))
            }
            #expect(!c.isConnected)
            let r = try ModbusClient(serial: rts, unit: 1, responseTimeoutMs: 200)
            do throws(ModbusError) {
                try r.connect()
                Issue.record("a pty has no RTS line")
            } catch {
                #expect(error.function == "ioctl(TIOCMGET)")
                #expect(error.description.contains("ENOTTY") || error.description.contains("EINVAL"))
            }
            // Without them the same port opens.
            let p = try ModbusClient(serial: plain, unit: 1, responseTimeoutMs: 200)
            try p.connect()
            #expect(p.isConnected)
        }
    }

    @Test func aContextThatCannotBeConfiguredIsFreedOnce() {
        // modbus_set_slave refuses 250: the initializer throws after the context exists, and
        // the context must be freed exactly once (it was freed twice before, a heap corruption).
        for _ in 0..<3 {
            #expect(throws: ModbusError.self) {
                _ = try ModbusClient(serial: SerialPortSettings(device: "/dev/null", baud: 19200, parity: .none), unit: 250)
            }
            #expect(throws: ModbusError.self) { _ = try ModbusClient(host: "127.0.0.1", port: 502, unit: 250) }
        }
    }

    @Test func aMissingDeviceIsAConnectError() async throws {
        try await onThread {
            let c = try ModbusClient(serial: SerialPortSettings(device: "/nonexistent/ttyX", baud: 19200, parity: .none),
                                     unit: 1, responseTimeoutMs: 200)
            do throws(ModbusError) {
                try c.connect()
                Issue.record("expected a connect error")
            } catch {
                #expect(error.kind == .connect)
                #expect(error.description.contains("/nonexistent/ttyX"))
                #expect(error.description.contains("ENOENT"))
            }
        }
    }
}
