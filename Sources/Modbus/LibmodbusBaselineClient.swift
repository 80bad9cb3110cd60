import CModbus

#if canImport(Glibc)
import Glibc
#endif

/// The stock libmodbus client with none of `ModbusClient`'s care (no typed errors, no timeout
/// policy, no descriptor guard): the reference peer for protocol tests and the baseline loop
/// of the benchmarks, so they need not import `CModbus`. Not for the appliance.
///
/// Each call returns libmodbus's return code; after a failure `lastErrno` holds errno as
/// libmodbus left it (`MODBUS_ENOBASE + code` for an exception reply).
///
/// Thread confinement: not thread-safe (one libmodbus context); use it from one thread only.
public final class LibmodbusBaselineClient {
    private let ctx: OpaquePointer
    /// errno right after the last failed call; 0 before any failure.
    public private(set) var lastErrno: Int32 = 0

    /// A context for `host:port` (IPv4 or IPv6), not yet connected.
    /// The corresponding C functions are `modbus_new_tcp_pi`, `modbus_set_slave` and
    /// `modbus_set_response_timeout`.
    public init(host: String, port: Int, unit: Int32 = 1, responseTimeoutMs: UInt32 = 500) throws(ModbusError) {
        errno = 0
        guard let c = modbus_new_tcp_pi(host, String(port)) else {
            throw ModbusError(kind: .other, errno: errno, function: "modbus_new_tcp_pi")
        }
        ctx = c
        _ = modbus_set_slave(ctx, unit)
        _ = modbus_set_response_timeout(ctx, responseTimeoutMs / 1000, (responseTimeoutMs % 1000) * 1000)
    }

    /// A Modbus RTU context on a serial port, not yet opened (`connect()` opens it).
    /// The corresponding C functions are `modbus_new_rtu`, `modbus_set_slave` and
    /// `modbus_set_response_timeout`.
    public init(serial device: String, baud: Int, parity: Character = "N", unit: Int32 = 1,
                responseTimeoutMs: UInt32 = 500) throws(ModbusError) {
        errno = 0
        guard let c = modbus_new_rtu(device, Int32(baud), CChar(parity.asciiValue ?? 78), 8, 1) else {
            throw ModbusError(kind: .other, errno: errno, function: "modbus_new_rtu")
        }
        ctx = c
        _ = modbus_set_slave(ctx, unit)
        _ = modbus_set_response_timeout(ctx, responseTimeoutMs / 1000, (responseTimeoutMs % 1000) * 1000)
    }

    deinit {
        modbus_close(ctx)
        modbus_free(ctx)
    }

    /// The unit id of the next requests. The corresponding C function is `modbus_set_slave`.
    public func setUnit(_ unit: Int32) -> Int32 { record(modbus_set_slave(ctx, unit)) }

    private func record(_ rc: Int32) -> Int32 {
        if rc < 0 { lastErrno = errno }
        return rc
    }

    /// The corresponding C function is `modbus_connect`.
    public func connect() -> Int32 { record(modbus_connect(ctx)) }

    /// The corresponding C function is `modbus_close`.
    public func close() { modbus_close(ctx) }

    /// Reads coils (or discrete inputs) into `out`, which must hold `count`.
    /// The corresponding C functions are `modbus_read_bits` and `modbus_read_input_bits`.
    public func readBits(_ address: Int, _ count: Int, into out: inout [UInt8], discrete: Bool = false) -> Int32 {
        precondition(out.count >= count)
        return record(discrete ? modbus_read_input_bits(ctx, Int32(address), Int32(count), &out)
            : modbus_read_bits(ctx, Int32(address), Int32(count), &out))
    }

    /// Reads holding (or input) registers into `out`, which must hold `count`.
    /// The corresponding C functions are `modbus_read_registers` and `modbus_read_input_registers`.
    public func readRegisters(_ address: Int, _ count: Int, into out: inout [UInt16], input: Bool = false) -> Int32 {
        precondition(out.count >= count)
        return record(input ? modbus_read_input_registers(ctx, Int32(address), Int32(count), &out)
            : modbus_read_registers(ctx, Int32(address), Int32(count), &out))
    }

    /// The corresponding C function is `modbus_write_bit`.
    public func writeBit(_ address: Int, _ on: Bool) -> Int32 {
        record(modbus_write_bit(ctx, Int32(address), on ? 1 : 0))
    }

    /// The corresponding C function is `modbus_write_register`.
    public func writeRegister(_ address: Int, _ value: UInt16) -> Int32 {
        record(modbus_write_register(ctx, Int32(address), value))
    }

    /// The corresponding C function is `modbus_write_bits`.
    public func writeBits(_ address: Int, _ bits: [UInt8]) -> Int32 {
        var b = bits
        return record(modbus_write_bits(ctx, Int32(address), Int32(b.count), &b))
    }

    /// The corresponding C function is `modbus_write_registers`.
    public func writeRegisters(_ address: Int, _ values: [UInt16]) -> Int32 {
        var v = values
        return record(modbus_write_registers(ctx, Int32(address), Int32(v.count), &v))
    }

    /// The corresponding C function is `modbus_mask_write_register`.
    public func maskWriteRegister(_ address: Int, and: UInt16, or: UInt16) -> Int32 {
        record(modbus_mask_write_register(ctx, Int32(address), and, or))
    }

    /// The corresponding C function is `modbus_write_and_read_registers`.
    public func writeAndReadRegisters(write address: Int, _ values: [UInt16], read readAddress: Int, _ readCount: Int,
                                      into out: inout [UInt16]) -> Int32 {
        precondition(out.count >= readCount)
        var v = values
        return record(modbus_write_and_read_registers(ctx, Int32(address), Int32(v.count), &v,
                                                      Int32(readAddress), Int32(readCount), &out))
    }
}

extension ModbusError {
    /// The errno libmodbus sets for an exception reply with `code`: `MODBUS_ENOBASE + code`
    /// (`EMBXILFUN` for 1, `EMBXILADD` for 2 …, `EMBXGTAR` for 11).
    public static func exceptionErrno(_ code: UInt8) -> Int32 { CModbus_ENOBASE() + Int32(code) }
    /// libmodbus's errno for a reply with invalid data (`EMBBADDATA`).
    public static var badDataErrno: Int32 { CModbus_EMBBADDATA() }
    /// libmodbus's errno for a reply from another unit than asked (`EMBBADSLAVE`).
    public static var badUnitErrno: Int32 { CModbus_EMBBADSLAVE() }
}
