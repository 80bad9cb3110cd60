import Testing
@testable import Modbus
import TestSupport

@Suite("ModbusError")
struct ModbusErrorTests {
    @Test func describesExceptionWithContext() {
        let e = ModbusError(kind: .exception(2), errno: ModbusError.exceptionErrno(2), function: "modbus_read_registers",
                            unit: 1, table: "holding", address: 100, count: 4, endpoint: "127.0.0.1:1502")
        #expect(e.exceptionCode == 2)
        #expect(e.description == "modbus_read_registers 127.0.0.1:1502 unit 1 holding 100+4: exception 2 (illegal data address)")
    }

    @Test func namesLibmodbusErrnoWithoutStrerror() {
        #expect(ModbusError.errnoName(ModbusError.badUnitErrno) == "response not from requested unit")
        #expect(ModbusError.errnoName(ModbusError.exceptionErrno(6)) == "server device busy")
    }
}
